//! `model.safetensors` (docs/tree.md 8): the tensors of a top level as one safetensors file,
//! assembled on read. The header is made once, at mount; every byte range of the data buffer is
//! served from the tensors under it through the same `TensorBytes` as their `.raw` (the `.npy`
//! data for decoded quantized types), so nothing is copied or held besides the header.

use crate::dtype::DType;
use crate::error::ReadError;
use crate::model::{Tensor, TensorBytes};
use serde_json::json;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;

/// The largest header the reference reader accepts (`HeaderTooLarge` above it).
pub const MAX_HEADER: u64 = 100_000_000;

/// The key of the header's metadata map, which no tensor may take.
const METADATA_KEY: &str = "__metadata__";

/// One safetensors file over the tensors of a model.
pub struct Safetensors {
    /// The 8-byte little-endian header length, then the JSON header padded with spaces so that
    /// the data starts at a multiple of 8 (as the reference writer pads it).
    header: Box<[u8]>,
    /// The end of each stored tensor's bytes in the data buffer: increasing, the last is the
    /// buffer's length.
    ends: Vec<u64>,
    /// Where each stored tensor's bytes come from.
    sources: Vec<Arc<dyn TensorBytes>>,
}

/// How one tensor is written: its safetensors dtype, shape and bytes.
struct Stored {
    dtype: &'static str,
    shape: Vec<u64>,
    bytes: Arc<dyn TensorBytes>,
}

/// How `tensor` is stored, or `None` when safetensors cannot hold it: types safetensors has
/// are stored as they are; complex128 as float64 pairs (a last dimension of 2, the layout of
/// `torch.view_as_real`: the same bytes, nothing lost); quantized blocks as the float32 values
/// of their `.npy`. String tensors, and quantized tensors without a decoder, are left out.
fn stored(tensor: &Tensor) -> Option<Stored> {
    let elements = Tensor::element_count(&tensor.shape)?;
    let (dtype, shape, bytes, len) = match tensor.dtype {
        DType::Str(_) => return None,
        DType::C128 => {
            let shape = tensor.shape.iter().copied().chain([2]).collect();
            ("F64", shape, tensor.bytes.clone(), Tensor::raw_size(DType::C128, &tensor.shape)?)
        }
        DType::Block { .. } => ("F32", tensor.shape.clone(), tensor.decoded.clone()?, elements.checked_mul(4)?),
        other => (other.safetensors_name()?, tensor.shape.clone(), tensor.bytes.clone(), Tensor::raw_size(other, &tensor.shape)?),
    };
    // The reference reader requires each tensor's byte range to match its shape exactly.
    (bytes.len() == len).then_some(Stored { dtype, shape, bytes })
}

/// Why a safetensors file cannot be assembled.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error("its header would take {0} bytes, more than safetensors readers accept ({MAX_HEADER})")]
    HeaderTooLarge(u64),
}

impl Safetensors {
    /// A file over `(key, tensor)` pairs in the order given. A tensor that appears again (the
    /// same bytes, dtype and shape: a checkpoint's `layers/` view of a `variables/` entry) is
    /// stored once, under its first key. A key already taken gets the tree's collision suffix
    /// (`~2`, `~3`, ...). Tensors safetensors cannot hold are listed in the metadata's
    /// `left_out` (a JSON array of keys); `source_format` names the source's format.
    pub fn assemble<'a>(tensors: impl IntoIterator<Item = (Cow<'a, str>, &'a Tensor)>, source_format: &str) -> Result<Safetensors, AssembleError> {
        let mut seen: HashMap<*const (), (DType, &'a [u64])> = HashMap::new();
        let mut keys: HashSet<Cow<'a, str>> = HashSet::from([Cow::Borrowed(METADATA_KEY)]);
        let mut entries = Vec::new();
        let mut left_out = Vec::new();
        let (mut ends, mut sources) = (Vec::new(), Vec::new());
        let mut end = 0u64;
        for (key, tensor) in tensors {
            let identity = Arc::as_ptr(&tensor.bytes) as *const ();
            if seen.get(&identity).is_some_and(|&(dtype, shape)| dtype == tensor.dtype && shape == tensor.shape) {
                continue;
            }
            seen.insert(identity, (tensor.dtype, &tensor.shape));
            let key = unique_key(&keys, key);
            match stored(tensor) {
                Some(stored) => {
                    let begin = end;
                    end += stored.bytes.len();
                    write_entry(&mut entries, &key, &stored, begin, end);
                    ends.push(end);
                    sources.push(stored.bytes);
                }
                None => left_out.push(key.to_string()),
            }
            keys.insert(key);
        }
        let mut metadata = serde_json::Map::new();
        metadata.insert("format".into(), json!("pt"));
        metadata.insert("source_format".into(), json!(source_format));
        if !left_out.is_empty() {
            metadata.insert("left_out".into(), json!(serde_json::to_string(&left_out).unwrap_or_default()));
        }
        let metadata = format!(r#"{{"{METADATA_KEY}":{}"#, serde_json::Value::Object(metadata));
        let json_len = metadata.len() + entries.len() + 1;
        let padded = json_len.next_multiple_of(8);
        if padded as u64 > MAX_HEADER {
            return Err(AssembleError::HeaderTooLarge(padded as u64));
        }
        let mut header = Vec::with_capacity(8 + padded);
        header.extend_from_slice(&(padded as u64).to_le_bytes());
        header.extend_from_slice(metadata.as_bytes());
        header.extend_from_slice(&entries);
        header.push(b'}');
        header.resize(8 + padded, b' ');
        Ok(Safetensors { header: header.into(), ends, sources })
    }

    /// The file's first bytes: the length field and the JSON header with its padding.
    #[cfg(test)]
    fn header(&self) -> &[u8] {
        &self.header
    }
}

/// `key`, or the first of `key~2`, `key~3`, ... not in `keys`.
fn unique_key<'a>(keys: &HashSet<Cow<'a, str>>, key: Cow<'a, str>) -> Cow<'a, str> {
    if !keys.contains(&key) {
        return key;
    }
    let free = (2u64..).map(|n| format!("{key}~{n}")).find(|k| !keys.contains(k.as_str())).expect("some suffix is free");
    Cow::Owned(free)
}

/// One tensor's header entry, after a comma, as the reference writer spells it:
/// `"key":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}`.
fn write_entry(out: &mut Vec<u8>, key: &str, stored: &Stored, begin: u64, end: u64) {
    out.push(b',');
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, key);
    let _ = write!(out, r#":{{"dtype":"{}","shape":["#, stored.dtype);
    for (i, d) in stored.shape.iter().enumerate() {
        let _ = write!(out, "{}{d}", if i == 0 { "" } else { "," });
    }
    let _ = write!(out, r#"],"data_offsets":[{begin},{end}]}}"#);
}

impl TensorBytes for Safetensors {
    fn len(&self) -> u64 {
        self.header.len() as u64 + self.ends.last().copied().unwrap_or(0)
    }

    /// The header part from memory, then each tensor's part from its own bytes: a read that
    /// spans several tensors is split at their boundaries, found by binary search.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let header_len = self.header.len() as u64;
        let mut out = buf;
        if offset < header_len {
            let n = ((header_len - offset) as usize).min(out.len());
            out[..n].copy_from_slice(&self.header[offset as usize..offset as usize + n]);
            out = &mut out[n..];
        }
        let mut at = offset.max(header_len) - header_len;
        // The first tensor that ends after `at` (zero-size tensors end where they begin).
        let mut i = self.ends.partition_point(|&end| end <= at);
        while !out.is_empty() {
            let begin = if i == 0 { 0 } else { self.ends[i - 1] };
            let n = ((self.ends[i] - at) as usize).min(out.len());
            let (part, rest) = out.split_at_mut(n);
            self.sources[i].read_at(at - begin, part)?;
            out = rest;
            at += n as u64;
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InMemory;

    fn tensor(name: &str, dtype: DType, shape: Vec<u64>, bytes: Vec<u8>) -> Tensor {
        Tensor::named(name, dtype, shape, Arc::new(InMemory(bytes.into())))
    }

    fn read_all(file: &Safetensors) -> Vec<u8> {
        let mut out = vec![0u8; file.len() as usize];
        file.read_at(0, &mut out).unwrap();
        out
    }

    fn header_json(file: &Safetensors) -> serde_json::Value {
        serde_json::from_slice(&file.header()[8..]).unwrap()
    }

    #[test]
    fn layout_matches_the_reference_writer() {
        let a = tensor("a", DType::F32, vec![2], vec![1, 2, 3, 4, 5, 6, 7, 8]);
        let b = tensor("b.c", DType::BF16, vec![1], vec![9, 10]);
        let file = Safetensors::assemble([("a".into(), &a), ("b.c".into(), &b)], "test").unwrap();
        let bytes = read_all(&file);
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + n) % 8, 0);
        let text = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        assert_eq!(
            text.trim_end_matches(' '),
            r#"{"__metadata__":{"format":"pt","source_format":"test"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b.c":{"dtype":"BF16","shape":[1],"data_offsets":[8,10]}}"#
        );
        assert_eq!(&bytes[8 + n..], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    }

    #[test]
    fn reads_at_any_offset_match_a_whole_read() {
        let tensors: Vec<Tensor> = (0..5u8).map(|i| tensor(&format!("t{i}"), DType::U8, vec![u64::from(i)], vec![i; usize::from(i)])).collect();
        let file = Safetensors::assemble(tensors.iter().map(|t| (t.name.as_str().into(), t)), "test").unwrap();
        let whole = read_all(&file);
        for start in 0..whole.len() {
            for len in 0..=whole.len() - start {
                let mut part = vec![0u8; len];
                file.read_at(start as u64, &mut part).unwrap();
                assert_eq!(part, whole[start..start + len], "{start}+{len}");
            }
        }
    }

    /// Counts the bytes read from it.
    struct Counted(InMemory, std::sync::atomic::AtomicU64);

    impl TensorBytes for Counted {
        fn len(&self) -> u64 {
            self.0.len()
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
            self.1.fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
            self.0.read_at(offset, buf)
        }
    }

    /// What `safe_open(...).get_tensor` and a memory map do: read one tensor's range.
    #[test]
    fn reading_one_tensor_reads_nothing_of_the_others() {
        let sources: Vec<Arc<Counted>> = (0..3).map(|_| Arc::new(Counted(InMemory(vec![5u8; 1000].into()), 0.into()))).collect();
        let tensors: Vec<Tensor> = sources.iter().enumerate().map(|(i, s)| Tensor::named(&format!("t{i}"), DType::U8, vec![1000], s.clone())).collect();
        let file = Safetensors::assemble(tensors.iter().map(|t| (t.name.as_str().into(), t)), "test").unwrap();
        let mut buf = vec![0u8; 1000];
        file.read_at(file.header().len() as u64 + 1000, &mut buf).unwrap();
        let counts: Vec<u64> = sources.iter().map(|s| s.1.load(std::sync::atomic::Ordering::Relaxed)).collect();
        assert_eq!(counts, [0, 1000, 0]);
    }

    #[test]
    fn strings_are_left_out_and_listed_and_shared_tensors_stored_once() {
        let w = tensor("w", DType::F32, vec![1], vec![0; 4]);
        let view = Tensor { path: vec!["layers".into(), "w".into()], ..w.clone() };
        let s = tensor("s", DType::Str(3), vec![2], vec![0; 6]);
        let c = tensor("c", DType::C128, vec![1], vec![0; 16]);
        let file = Safetensors::assemble([("w".into(), &w), ("s".into(), &s), ("layers/w".into(), &view), ("c".into(), &c)], "test").unwrap();
        let header = header_json(&file);
        assert_eq!(header["__metadata__"]["left_out"], r#"["s"]"#);
        assert!(header.get("layers/w").is_none());
        assert_eq!(header["c"], json!({"dtype": "F64", "shape": [1, 2], "data_offsets": [4, 20]}));
    }

    #[test]
    fn repeated_names_get_the_collision_suffix() {
        let t = |b: u8| tensor("x", DType::U8, vec![1], vec![b]);
        let (a, b, c, m) = (t(1), t(2), t(3), t(4));
        let pairs = [("x".into(), &a), ("x".into(), &b), ("x~2".into(), &c), ("__metadata__".into(), &m)];
        let file = Safetensors::assemble(pairs, "test").unwrap();
        let header = header_json(&file);
        let keys: Vec<&String> = header.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["__metadata__", "x", "x~2", "x~2~2", "__metadata__~2"]);
    }

    #[test]
    fn quantized_tensors_are_their_decoded_float32() {
        let dtype = DType::Block { name: "q_test", elems: 4, bytes: 3 };
        let mut q = tensor("q", dtype, vec![4], vec![0; 3]);
        let decoded: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let no_decoder = tensor("raw", dtype, vec![4], vec![0; 3]);
        q.decoded = Some(Arc::new(InMemory(decoded.clone().into())));
        let file = Safetensors::assemble([("q".into(), &q), ("raw".into(), &no_decoder)], "test").unwrap();
        let bytes = read_all(&file);
        assert_eq!(&bytes[file.header().len()..], decoded.as_slice());
        let header = header_json(&file);
        assert_eq!(header["q"]["dtype"], "F32");
        assert_eq!(header["__metadata__"]["left_out"], r#"["raw"]"#);
    }
}
