//! `.npy` headers for any dtype and shape parse back by numpy's rules to that dtype and shape.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wfs::dtype::DType;

const DTYPES: [DType; 15] = [
    DType::Bool, DType::I8, DType::U8, DType::I16, DType::U16, DType::I32, DType::U32, DType::I64, DType::U64,
    DType::F16, DType::BF16, DType::F32, DType::F64, DType::C64, DType::C128,
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, dims)) = data.split_first() else { return };
    let dtype = DTYPES.get(usize::from(which)).copied().unwrap_or(DType::Str(usize::from(which)));
    let shape: Vec<u64> = dims.chunks(8).map(|c| c.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b))).collect();
    let header = wfs::npy::header(dtype, &shape);
    match wfs::fuzzing::parse_npy_header(&header) {
        Ok((descr, parsed)) => {
            assert_eq!(descr, dtype.npy_descr());
            assert_eq!(parsed, shape);
        }
        Err(why) => panic!("{dtype:?} {shape:?}: {why}"),
    }
});
