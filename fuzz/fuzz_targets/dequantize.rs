//! Every ggml dequantizer on arbitrary bytes: no panic, whatever the lengths, and decoding block
//! by block gives the same bits as decoding the run at once (no state crosses blocks).
#![no_main]
use libfuzzer_sys::fuzz_target;
use wfs::ggml::Quant;

fuzz_target!(|data: &[u8]| {
    for quant in Quant::ALL {
        let (elems, bytes) = (quant.elems() as usize, quant.bytes() as usize);
        let mut all = vec![0f32; data.len() / bytes * elems];
        quant.dequantize(data, &mut all);
        let mut short = vec![0f32; all.len() / 2];
        quant.dequantize(data, &mut short);
        let mut one = vec![0f32; elems];
        for (block, want) in data.chunks_exact(bytes).zip(all.chunks_exact(elems)) {
            quant.dequantize(block, &mut one);
            assert!(one.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()), "{quant:?}");
        }
    }
});
