//! ggml tensors as a model's tensors, for the formats that store them (GGUF, pre-GGUF ggml
//! files): plain types served in place (swapped in a big-endian file), quantized blocks
//! decoded on read, a run of blocks at a time, into the shared chunk cache.

use super::options::ReadOptions;
use crate::cache::ChunkCache;
use crate::dtype::DType;
use crate::error::{OpenError, ReadError};
use crate::ggml::{GgmlType, Quant, type_of};
use crate::model::{ByteSwapped, Extent, Tensor, TensorBytes};
use crate::source::Blob;
use std::sync::{Arc, OnceLock};

/// Bytes of float32 output decoded together and kept as one cache entry: below glibc's mmap
/// threshold (128 KiB), so that cache entries come from the heap rather than fresh mappings.
const DECODE_UNIT: u64 = 64 << 10;

/// A tensor as the header describes it: dims innermost first, data at `offset` from the data
/// section (GGUF's header and each legacy GGML tensor record).
pub(crate) struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub kind: u32,
    pub offset: u64,
}

/// One tensor, and why its `.npy` is absent if it is.
pub(crate) fn tensor(
    blob: &Blob,
    info: &TensorInfo,
    data_start: u64,
    starts: &[u64],
    big_endian: bool,
    options: &ReadOptions,
) -> Result<(Tensor, Option<String>), OpenError> {
    let name = &info.name;
    let shape: Vec<u64> = info.dims.iter().rev().copied().collect();
    let count = Tensor::element_count(&shape).ok_or_else(|| OpenError::corrupt(format!("tensor '{name}': dimensions {:?} overflow", info.dims)))?;
    let start = data_start.checked_add(info.offset).filter(|&s| s <= blob.len()).ok_or_else(|| {
        OpenError::corrupt(format!("tensor '{name}': offset {} lies past the end of the file ({} bytes)", info.offset, blob.len()))
    })?;
    let extent = |len: u64| -> Result<Arc<Extent>, OpenError> {
        if start.checked_add(len).is_none_or(|end| end > blob.len()) {
            return Err(OpenError::corrupt(format!(
                "tensor '{name}': {len} bytes at offset {start} run past the end of the file ({} bytes)",
                blob.len()
            )));
        }
        Ok(Arc::new(Extent { blob: blob.clone(), offset: start, len }))
    };
    let kind = match type_of(info.kind) {
        Ok(kind) => kind,
        Err(reason) => {
            // Its size is unknown: serve everything up to the next tensor (or the end).
            let end = starts.iter().copied().find(|&s| s > start).unwrap_or(blob.len()).min(blob.len());
            let dtype = DType::Block { name: unknown_type_name(info.kind), elems: 0, bytes: 0 };
            let tensor = Tensor::named(name, dtype, shape, extent(end - start)?);
            return Ok((tensor, Some(format!("{reason}; .raw holds the bytes up to the next tensor"))));
        }
    };
    match kind {
        GgmlType::Plain(dtype) => {
            let len = Tensor::raw_size(dtype, &shape).ok_or_else(|| OpenError::corrupt(format!("tensor '{name}': size overflows")))?;
            let bytes: Arc<dyn TensorBytes> = extent(len)?;
            let bytes = match dtype.swap_unit() {
                unit if big_endian && unit > 1 => Arc::new(ByteSwapped { inner: bytes, unit }),
                _ => bytes,
            };
            Ok((Tensor::named(name, dtype, shape, bytes), None))
        }
        GgmlType::Quantized(quant) => {
            let row = info.dims.first().copied().unwrap_or(1);
            if row % u64::from(quant.elems()) != 0 {
                return Err(OpenError::corrupt(format!(
                    "tensor '{name}': rows of {row} elements are not whole {} blocks of {}",
                    quant.name(),
                    quant.elems()
                )));
            }
            let blocks = count / u64::from(quant.elems());
            let len = blocks.checked_mul(u64::from(quant.bytes())).ok_or_else(|| OpenError::corrupt(format!("tensor '{name}': size overflows")))?;
            let raw = extent(len)?;
            let mut tensor = Tensor::named(name, quant.dtype(), shape, raw.clone());
            if big_endian {
                // gguf-py writes blocks unchanged into big-endian files, while ggml's converter
                // swaps the scales of some types: which one made a file cannot be told.
                return Ok((tensor, Some("quantized blocks in a big-endian file have no defined byte order".into())));
            }
            tensor.decoded = Some(Arc::new(Dequantized::new(raw, quant, blocks, options.cache.clone())));
            Ok((tensor, None))
        }
    }
}

/// `.dtype` of a tensor whose ggml type wfs does not know: `ggml_type_<id>`.
fn unknown_type_name(id: u32) -> &'static str {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    let names = NAMES.get_or_init(|| (0..256).map(|i| format!("ggml_type_{i}")).collect());
    names.get(id as usize).map_or("ggml_type_unknown", String::as_str)
}

/// The float32 values of a quantized tensor, decoded `unit_blocks` blocks at a time (about
/// `DECODE_UNIT` bytes of output) and kept in the chunk cache.
struct Dequantized {
    raw: Arc<Extent>,
    quant: Quant,
    blocks: u64,
    unit_blocks: u64,
    cache: Arc<ChunkCache>,
    cache_id: u64,
}

impl Dequantized {
    fn new(raw: Arc<Extent>, quant: Quant, blocks: u64, cache: Arc<ChunkCache>) -> Self {
        let unit_blocks = (DECODE_UNIT / (4 * u64::from(quant.elems()))).max(1);
        let cache_id = cache.new_id();
        Dequantized { raw, quant, blocks, unit_blocks, cache, cache_id }
    }

    fn unit_len(&self) -> u64 {
        self.unit_blocks * u64::from(self.quant.elems()) * 4
    }

    /// The float32 bytes of decode unit `unit`. The stored blocks and the values pass through
    /// buffers kept per thread, so that only the result, which the cache keeps, is allocated
    /// (fresh buffers of this size cost a page fault per 4 KiB).
    fn decode(&self, unit: u64) -> Result<Arc<[u8]>, ReadError> {
        let first = unit * self.unit_blocks;
        let blocks = self.unit_blocks.min(self.blocks - first);
        let block_bytes = u64::from(self.quant.bytes());
        SCRATCH.with_borrow_mut(|(stored, values, out)| {
            stored.resize((blocks * block_bytes) as usize, 0);
            self.raw.blob.read_at(self.raw.offset + first * block_bytes, stored)?;
            values.resize((blocks * u64::from(self.quant.elems())) as usize, 0.0);
            self.quant.dequantize(stored, values);
            out.resize(values.len() * 4, 0);
            for (bytes, value) in out.chunks_exact_mut(4).zip(values.iter()) {
                bytes.copy_from_slice(&value.to_le_bytes());
            }
            Ok(Arc::from(out.as_slice()))
        })
    }
}

thread_local! {
    /// Per-thread buffers for `Dequantized::decode`: stored blocks, values, their bytes.
    static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<f32>, Vec<u8>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

impl TensorBytes for Dequantized {
    fn len(&self) -> u64 {
        self.blocks * u64::from(self.quant.elems()) * 4
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let unit_len = self.unit_len();
        self.cache.read_units(self.cache_id, unit_len, offset, buf, |unit| self.decode(unit))
    }
}
