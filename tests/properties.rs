//! Property tests where an invariant is crisp: the table reader reads back what a writer wrote,
//! `.npy` headers parse back by numpy's rules, sanitised names are safe and deterministic, and a
//! built tree holds unique safe names and links that resolve inside the mount.

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use wfs::dtype::DType;
use wfs::fuzzing::{check_tree, parse_npy_header, unsafe_name, write_table};
use wfs::model::{InMemory, Model, ModelLink, Part, Tensor};
use wfs::names::{sanitize, sanitize_within};
use wfs::source::Blob;

const DTYPES: [DType; 16] = [
    DType::Bool, DType::I8, DType::U8, DType::I16, DType::U16, DType::I32, DType::U32, DType::I64, DType::U64,
    DType::F16, DType::BF16, DType::F32, DType::F64, DType::C64, DType::C128, DType::Str(1),
];

/// Names that stress sanitising: dots, separators, controls, `%`, multibyte and long runs.
fn hostile_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(".".to_string()),
        Just("..".to_string()),
        "[a-c./%\t\n\u{0}\u{7f}é~]{0,12}",
        "[xé]{250,300}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn table_round_trips(entries in prop::collection::btree_map(prop::collection::vec(any::<u8>(), 0..40), prop::collection::vec(any::<u8>(), 0..200), 0..120),
                         per_block in 1usize..40, snappy: bool) {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = entries.into_iter().collect();
        let file = write_table(&entries, per_block, snappy);
        let read = wfs::formats::bundle::read_table(&Blob::Memory(Arc::new(file))).unwrap();
        prop_assert_eq!(read, entries);
    }

    #[test]
    fn npy_headers_parse_back_aligned(which in 0..DTYPES.len(), shape in prop::collection::vec(any::<u64>(), 0..64)) {
        let dtype = DTYPES[which];
        let header = wfs::npy::header(dtype, &shape);
        prop_assert_eq!(header.len() % 64, 0);
        prop_assert_eq!(header.last(), Some(&b'\n'));
        let (descr, parsed) = parse_npy_header(&header).map_err(TestCaseError::fail)?;
        prop_assert_eq!(descr, dtype.npy_descr());
        prop_assert_eq!(parsed, shape);
    }

    #[test]
    fn sanitised_names_are_safe_deterministic_and_distinct(a in hostile_name(), b in hostile_name(), max in 24usize..=255) {
        let (sa, sb) = (sanitize(&a), sanitize(&b));
        prop_assert!(unsafe_name(&sa).is_none(), "{:?} -> {:?}", a, sa);
        prop_assert_eq!(&sa, &sanitize(&a));
        // The empty name and NUL both read `%00`; the tree suffixes such twins.
        if a != b && !a.is_empty() && !b.is_empty() {
            prop_assert_ne!(&sa, &sb);
        }
        prop_assert!(sanitize_within(&a, max).len() <= max);
    }

    #[test]
    fn trees_hold_unique_safe_names_and_links_inside(entries in prop::collection::vec((0u8..5, prop::collection::vec(hostile_name(), 0..4), prop::collection::vec(hostile_name(), 0..3)), 0..60)) {
        let mut model = Model::default();
        for (kind, path, target) in entries {
            match kind {
                0 => model.tensors.push(Tensor::new(path, DType::U8, vec![1], Arc::new(InMemory(vec![7u8].into())))),
                1 => model.add_file(path, b"x".to_vec()),
                2 => model.dirs.push(path),
                3 => model.parts.push(Part { path, info: Default::default(), skipped: Vec::new() }),
                _ => model.links.push(ModelLink { path, target }),
            }
        }
        let tree = wfs::tree::Tree::build(model, "prop");
        check_tree(&tree).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn table_of_many_entries_round_trips() {
    let entries: BTreeMap<Vec<u8>, Vec<u8>> = (0..5000u32).map(|i| (format!("layer/{i:05}").into_bytes(), i.to_le_bytes().to_vec())).collect();
    let entries: Vec<_> = entries.into_iter().collect();
    let file = write_table(&entries, 700, true);
    assert_eq!(wfs::formats::bundle::read_table(&Blob::Memory(Arc::new(file))).unwrap(), entries);
}
