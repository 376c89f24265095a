//! NumPy sources (docs/formats/numpy.md#npy-layout, docs/formats/numpy.md#npz): a `.npy` file (one tensor) and `.npz` archives of them.
//! `np.savez` members are stored: served in place. `np.savez_compressed` members are deflated:
//! inflated on read, one 1 MiB chunk at a time into the chunk cache (`--cache-size`), so memory
//! stays bounded whatever a member claims. Big-endian and Fortran-order arrays are made C-order
//! little-endian per read range. Object arrays hold pickles: they are refused, never unpickled.

use super::options::ReadOptions;
use super::archive::Archive;
use crate::cache::ChunkCache;
use crate::error::{OpenError, ReadError};
use crate::model::{ByteSwapped, Extent, Model, SkippedTensor, Tensor, TensorBytes, TensorId};
use crate::npy;
use crate::source::Blob;
use serde_json::json;
use std::io::Read;
use std::sync::Arc;

/// A lone `.npy` file: one tensor named after the file (`array` when it has no name, on
/// standard input).
pub fn read_npy(blob: &Blob) -> Result<Model, OpenError> {
    let file_name = blob.file_name();
    let name = file_name.as_deref().map_or("array", |n| n.strip_suffix(".npy").unwrap_or(n));
    let stored = Stored(blob.clone());
    let mut model = Model::default();
    let (tensor, header) = match array(name, &stored) {
        // Left out as an .npz member would be, its globals recorded, so `wfs scan` can judge it.
        Err(why) if why.starts_with("object array") => {
            record_object_globals(&mut model.info, file_name.as_deref().unwrap_or("array.npy"), &stored);
            model.skipped.push(SkippedTensor::new(TensorId::Name(name.to_string()), why));
            return Ok(model);
        }
        other => other.map_err(|why| OpenError::corrupt(format!("npy: {why}")))?,
    };
    model.info.insert("npy_version".into(), json!(format!("{}.0", header.version)));
    model.info.insert("descr".into(), json!(header.descr));
    model.info.insert("fortran_order".into(), json!(header.fortran_order));
    model.tensors.push(tensor);
    Ok(model)
}

/// True for a zip whose members are all `.npy` files (what `np.savez` writes).
pub fn is_npz(archive: &mut Archive) -> bool {
    let names = archive.file_names();
    !names.is_empty() && names.iter().all(|(_, name)| name.ends_with(".npy"))
}

/// An `.npz` archive: each member `<key>.npy` is the tensor `key` (np.load's keys). A member
/// that cannot be exposed is left out with its reason in `info.json` (`skipped`).
pub fn read_npz(mut archive: Archive, options: &ReadOptions) -> Result<Model, OpenError> {
    let mut model = Model::default();
    let (mut stored, mut deflated) = (0, 0);
    for (index, member) in archive.file_names() {
        let name = member.strip_suffix(".npy").unwrap_or(&member);
        let file: Result<Box<dyn NpyBytes>, String> = match archive.deflated(index) {
            Ok(Some((compressed, size))) => {
                deflated += 1;
                let cache = options.cache.clone();
                let id = cache.new_id();
                Ok(Box::new(Inflated { compressed, size, cache, id }))
            }
            Ok(None) => {
                stored += 1;
                archive.member(index).map_err(|e| e.to_string()).map(|blob| Box::new(Stored(blob)) as Box<dyn NpyBytes>)
            }
            Err(e) => Err(e.to_string()),
        };
        let tensor = file.and_then(|file| match array(name, &*file) {
            Err(reason) if reason.starts_with("object array") => {
                record_object_globals(&mut model.info, &member, &*file);
                Err(reason)
            }
            other => other,
        });
        match tensor {
            Ok((tensor, _)) => model.tensors.push(tensor),
            Err(reason) => model.skipped.push(SkippedTensor::new(TensorId::Name(name.to_string()), reason)),
        }
    }
    model.info.insert("members".into(), json!({"stored": stored, "deflated": deflated}));
    Ok(model)
}

/// Most bytes of an object array's pickle interpreted for its globals.
const MAX_OBJECT_PICKLE: u64 = 64 << 20;

/// The globals of an object array's pickle into `info.json` (`pickle_globals`, under the
/// member's name), so that `wfs scan` sees them; the array itself stays left out.
fn record_object_globals(info: &mut serde_json::Map<String, serde_json::Value>, member: &str, file: &dyn NpyBytes) {
    let pickle = || {
        let header = npy::header_len(&file.head(file.len().min(12)).ok()?).ok()?;
        if header > file.len() || file.len() - header > MAX_OBJECT_PICKLE {
            return None;
        }
        let bytes = Blob::Memory(Arc::new(file.head(file.len()).ok()?));
        crate::pickle::load(&bytes, header, crate::pickle::Limits::default()).ok()
    };
    if let Some((pickle, _)) = pickle() {
        crate::pickle::record_globals(info, member, &pickle);
    }
}

/// The bytes of one `.npy` file: in place, or inflated from a zip member.
trait NpyBytes {
    fn len(&self) -> u64;
    /// The first `len` bytes (the header), read at mount.
    fn head(&self, len: u64) -> Result<Vec<u8>, String>;
    /// The data section `[offset, offset + len)` as tensor bytes.
    fn data(&self, offset: u64, len: u64) -> Arc<dyn TensorBytes>;
}

struct Stored(Blob);

impl NpyBytes for Stored {
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn head(&self, len: u64) -> Result<Vec<u8>, String> {
        self.0.read_vec(0, len).map_err(|e| e.to_string())
    }
    fn data(&self, offset: u64, len: u64) -> Arc<dyn TensorBytes> {
        Arc::new(Extent { blob: self.0.clone(), offset, len })
    }
}

/// What `read_npy` reports of the header.
struct HeaderInfo {
    version: u8,
    descr: String,
    fortran_order: bool,
}

/// The tensor of one `.npy` file, or why it cannot be one.
fn array(name: &str, file: &dyn NpyBytes) -> Result<(Tensor, HeaderInfo), String> {
    let prefix = file.head(file.len().min(12))?;
    let header_len = npy::header_len(&prefix)?;
    if header_len > file.len() {
        return Err(format!("the header ({header_len} bytes) runs past the end of the file ({} bytes)", file.len()));
    }
    let header = npy::parse_header(&file.head(header_len)?)?;
    let descr = match header.descr {
        npy::Descr::Simple(descr) => descr,
        npy::Descr::Structured => return Err("structured dtype (a list descr) has no wfs type".into()),
    };
    let (dtype, big_endian) = npy::dtype_of(&descr)?;
    let size = Tensor::raw_size(dtype, &header.shape)
        .filter(|&size| size <= file.len() - header_len)
        .ok_or_else(|| format!("shape {:?} of {descr} needs more bytes than the file's {} after the header", header.shape, file.len() - header_len))?;
    let mut bytes = file.data(header_len, size);
    if header.fortran_order && header.shape.iter().filter(|&&d| d > 1).count() > 1 {
        bytes = Arc::new(FortranOrder::new(bytes, &header.shape, dtype.size() as u64));
    }
    if big_endian && dtype.swap_unit() > 1 {
        bytes = Arc::new(ByteSwapped { inner: bytes, unit: dtype.swap_unit() });
    }
    let info = HeaderInfo { version: prefix[6], descr, fortran_order: header.fortran_order };
    Ok((Tensor::named(name, dtype, header.shape, bytes), info))
}

/// Bytes of inflated data per cached chunk.
const CHUNK: u64 = 1 << 20;

/// A deflated `.npz` member, inflated on demand. Deflate cannot seek, so a chunk not in the
/// cache is reached by inflating from the member's start; the chunks after it (up to half the
/// cache) are kept on the way, so a sequential reader inflates a member once when it fits in
/// half the cache, and a few times otherwise, with memory bounded by the cache either way.
/// Chunks count from the member's start (its `.npy` header included).
#[derive(Clone)]
struct Inflated {
    compressed: Blob,
    /// Inflated size, as the zip directory says.
    size: u64,
    cache: Arc<ChunkCache>,
    id: u64,
}

impl Inflated {
    fn decoder(&self) -> flate2::read::DeflateDecoder<crate::source::BlobReader> {
        flate2::read::DeflateDecoder::new(self.compressed.reader())
    }

    /// The next `len` inflated bytes of `decoder`, exactly.
    fn take(decoder: &mut impl Read, len: u64) -> Result<Vec<u8>, ReadError> {
        let mut out = Vec::with_capacity(len.min(CHUNK) as usize);
        decoder.take(len).read_to_end(&mut out).map_err(|e| ReadError::Corrupt(format!("deflated npz member: {e}")))?;
        if out.len() as u64 != len {
            return Err(short_member());
        }
        Ok(out)
    }

    /// Chunk `k`, inflated from the start; the chunks after it are cached on the way.
    fn load(&self, k: u64) -> Result<Vec<u8>, ReadError> {
        let mut decoder = self.decoder();
        let skipped = std::io::copy(&mut (&mut decoder).take(k * CHUNK), &mut std::io::sink())
            .map_err(|e| ReadError::Corrupt(format!("deflated npz member: {e}")))?;
        if skipped != k * CHUNK {
            return Err(short_member());
        }
        let chunk_len = |j: u64| CHUNK.min(self.size - j * CHUNK);
        let wanted = Self::take(&mut decoder, chunk_len(k))?;
        let ahead = self.cache.capacity() / 2 / CHUNK;
        for j in (k + 1..).take(ahead as usize).take_while(|j| j * CHUNK < self.size) {
            let next = Self::take(&mut decoder, chunk_len(j))?;
            // Inserts the chunk unless a reader has it already (then it is dropped).
            self.cache.get_or_load((self.id, j), || Ok(next))?;
        }
        Ok(wanted)
    }
}

fn short_member() -> ReadError {
    ReadError::Corrupt("deflated npz member inflates to less than its zip entry says".into())
}

impl NpyBytes for Inflated {
    fn len(&self) -> u64 {
        self.size
    }
    fn head(&self, len: u64) -> Result<Vec<u8>, String> {
        Self::take(&mut self.decoder(), len).map_err(|e| e.to_string())
    }
    fn data(&self, offset: u64, len: u64) -> Arc<dyn TensorBytes> {
        Arc::new(Window { inner: Arc::new(self.clone()), offset, len })
    }
}

impl TensorBytes for Inflated {
    fn len(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let k = at / CHUNK;
            let chunk = self.cache.get_or_load((self.id, k), || self.load(k))?;
            let from = (at - k * CHUNK) as usize;
            if from >= chunk.len() {
                return Err(short_member());
            }
            let n = (chunk.len() - from).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&chunk[from..from + n]);
            done += n;
        }
        Ok(())
    }
}

/// `len` bytes of `inner` from `offset` (a data section after its header).
struct Window {
    inner: Arc<dyn TensorBytes>,
    offset: u64,
    len: u64,
}

impl TensorBytes for Window {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.inner.read_at(self.offset + offset, buf)
    }
}

/// Elements gathered per batch of a Fortran-order read (bounds its memory).
const GATHER_BATCH: u64 = 1 << 16;

/// A Fortran-order (column-major) array served in C order: a read gathers its elements,
/// coalescing those that lie next to each other in the source into one read.
struct FortranOrder {
    inner: Arc<dyn TensorBytes>,
    shape: Vec<u64>,
    /// Source stride (in elements) of each axis: 1 for the first.
    strides: Vec<u64>,
    item: u64,
}

impl FortranOrder {
    fn new(inner: Arc<dyn TensorBytes>, shape: &[u64], item: u64) -> Self {
        let strides = shape.iter().scan(1u64, |acc, &d| Some(std::mem::replace(acc, *acc * d))).collect();
        FortranOrder { inner, shape: shape.to_vec(), strides, item }
    }

    /// Elements `[first, first + count)` in C order, into `out`.
    fn gather(&self, first: u64, count: u64, out: &mut [u8]) -> Result<(), ReadError> {
        // The C-order multi-index of `first`, then stepped like an odometer.
        let mut index: Vec<u64> = self.shape.iter().rev().scan(first, |rest, &d| Some(std::mem::replace(rest, *rest / d) % d)).collect();
        index.reverse();
        let mut wanted: Vec<(u64, usize)> = Vec::with_capacity(count as usize);
        for slot in 0..count as usize {
            wanted.push((index.iter().zip(&self.strides).map(|(i, s)| i * s).sum(), slot));
            for (i, &d) in index.iter_mut().zip(&self.shape).rev() {
                *i += 1;
                if *i < d {
                    break;
                }
                *i = 0;
            }
        }
        wanted.sort_unstable();
        let item = self.item as usize;
        let mut run = Vec::new();
        let mut start = 0;
        while start < wanted.len() {
            let mut end = start + 1;
            while end < wanted.len() && wanted[end].0 == wanted[end - 1].0 + 1 {
                end += 1;
            }
            run.resize((end - start) * item, 0);
            self.inner.read_at(wanted[start].0 * self.item, &mut run)?;
            for (k, &(_, slot)) in wanted[start..end].iter().enumerate() {
                out[slot * item..(slot + 1) * item].copy_from_slice(&run[k * item..(k + 1) * item]);
            }
            start = end;
        }
        Ok(())
    }
}

impl TensorBytes for FortranOrder {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let end = offset + buf.len() as u64;
        let mut element = offset / self.item;
        let mut batch = Vec::new();
        while element * self.item < end {
            let count = GATHER_BATCH.min(end.div_ceil(self.item) - element);
            batch.resize((count * self.item) as usize, 0);
            self.gather(element, count, &mut batch)?;
            // The part of this batch that lies inside the request.
            let batch_start = element * self.item;
            let from = offset.max(batch_start);
            let to = end.min(batch_start + batch.len() as u64);
            buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(&batch[(from - batch_start) as usize..(to - batch_start) as usize]);
            element += count;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InMemory;

    /// A 2x3x4 int16 array stored column-major reads back in C order, at any offset.
    #[test]
    fn fortran_order_reads_in_c_order() {
        let shape = [2u64, 3, 4];
        let c_order: Vec<u16> = (0..24).collect();
        let mut fortran = [0u16; 24];
        for (i, &v) in c_order.iter().enumerate() {
            let (a, b, c) = (i / 12, i / 4 % 3, i % 4);
            fortran[a + 2 * b + 6 * c] = v;
        }
        let bytes: Vec<u8> = fortran.iter().flat_map(|v| v.to_le_bytes()).collect();
        let expected: Vec<u8> = c_order.iter().flat_map(|v| v.to_le_bytes()).collect();
        let array = FortranOrder::new(Arc::new(InMemory(bytes.into())), &shape, 2);
        for start in 0..48 {
            for end in start..=48 {
                let mut buf = vec![0u8; end - start];
                array.read_at(start as u64, &mut buf).unwrap();
                assert_eq!(buf, expected[start..end], "{start}..{end}");
            }
        }
    }

    #[test]
    fn deflated_member_reads_through_chunks() {
        use std::io::Write;
        let plain: Vec<u8> = (0..3 * CHUNK + 12345).map(|i| (i * 7 % 251) as u8).collect();
        let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&plain).unwrap();
        let compressed = Blob::Memory(Arc::new(encoder.finish().unwrap()));
        // A cache of two chunks: reading backwards inflates again from the start, bounded.
        let cache = Arc::new(ChunkCache::new(2 * CHUNK));
        let member = Inflated { compressed, size: plain.len() as u64, cache: cache.clone(), id: cache.new_id() };
        for at in [3 * CHUNK, 2 * CHUNK - 5, 0, CHUNK + 1, 0] {
            let mut buf = vec![0u8; 70_000.min(plain.len() - at as usize)];
            member.read_at(at, &mut buf).unwrap();
            assert_eq!(buf, plain[at as usize..at as usize + buf.len()]);
            assert!(cache.held_bytes() <= 2 * CHUNK);
        }
        // A member that claims more than it holds fails the read, never panics.
        let short = Inflated { size: plain.len() as u64 + 10, id: cache.new_id(), ..member };
        let mut buf = vec![0u8; 20];
        assert!(short.read_at(plain.len() as u64 - 10, &mut buf).is_err());
    }
}
