//! zarr v2 and v3 arrays (docs/formats/jax.md#zarr): the metadata (`.zarray`, `zarr.json`), the
//! chunk grid and keys, and the codecs zarr-python and TensorStore write, decoded per chunk
//! through the chunk cache, so that a read decodes only the chunks under it. The keys come
//! from a `Store`: a directory (a zarr store, an Orbax checkpoint without OCDBT) or OCDBT.

// Orbax checkpoints: their arrays are zarr arrays, read by this module.
pub(crate) mod orbax;

use crate::cache::ChunkCache;
use crate::dtype::DType;
use crate::error::{OpenError, ReadError};
use crate::model::TensorBytes;
use crate::source::{Blob, Dir};
use serde_json::Value as Json;
use std::sync::Arc;

/// Largest decoded chunk (or shard) accepted: it is decoded whole, whatever the cache holds.
const MAX_CHUNK_BYTES: u64 = 1 << 31;

/// Where an array's keys (`.zarray`, `0.0`, `c/0/0`) are read from.
pub(crate) trait Store: Send + Sync {
    /// The value stored under `key` (`/`-separated), `None` if there is none.
    fn get(&self, key: &str) -> Result<Option<Blob>, ReadError>;
}

/// A zarr store that is a directory: a key is a path below it.
pub(crate) struct DirStore(pub Dir);

impl Store for DirStore {
    fn get(&self, key: &str) -> Result<Option<Blob>, ReadError> {
        if key.split('/').any(|part| part.is_empty() || part == "." || part == "..") || !self.0.has_file(key) {
            return Ok(None);
        }
        self.0.open_below(key).map(Some).map_err(|e| ReadError::Corrupt(e.to_string()))
    }
}

/// A bytes-to-bytes codec, undone on read.
#[derive(Clone, Debug)]
enum Compression {
    Zstd,
    /// zlib (RFC 1950) or gzip (RFC 1952): flate2's multi-format decoder tells them apart.
    Zlib,
    Gzip,
    Blosc,
    /// A CRC-32C of what precedes it, appended.
    Crc32c,
}

/// How one chunk's stored bytes become its C-order little-endian elements.
#[derive(Clone, Debug)]
struct Codecs {
    /// Bytes-to-bytes codecs in the order they were applied when writing.
    compression: Vec<Compression>,
    big_endian: bool,
    /// The axis order the chunk is stored in (F order: reversed); `None` for C order.
    transpose: Option<Vec<usize>>,
    /// A v3 `sharding_indexed` chunk: a shard of inner chunks.
    shard: Option<Box<Sharding>>,
}

#[derive(Clone, Debug)]
struct Sharding {
    inner_shape: Vec<u64>,
    inner: Codecs,
    index: Codecs,
    index_at_end: bool,
}

/// A zarr array: what its metadata says.
#[derive(Clone, Debug)]
pub(crate) struct ArrayMeta {
    pub dtype: DType,
    pub shape: Vec<u64>,
    chunk_shape: Vec<u64>,
    codecs: Codecs,
    /// One element of the fill value, little-endian.
    fill: Vec<u8>,
    /// The chunk key of grid index `i`: `prefix` + indices joined by `separator` (`scalar_key`
    /// for rank 0: `0` in v2, `c` in v3).
    prefix: String,
    separator: String,
    scalar_key: String,
}

fn bad(msg: impl std::fmt::Display) -> String {
    msg.to_string()
}

/// The element type of a zarr v2 `dtype` (a numpy type string, or a TensorStore name without
/// byte order: `bfloat16`, `float8_*`) and whether it is big-endian.
fn v2_dtype(value: &Json) -> Result<(DType, bool), String> {
    let text = value.as_str().ok_or("a structured dtype (a list of fields)")?;
    if let Some(dtype) = DType::from_numpy_name(text) {
        return Ok((dtype, false));
    }
    match crate::npy::dtype_of(text)? {
        (DType::Str(_), _) => Err(bad(format!("dtype {text} (strings)"))),
        found => Ok(found),
    }
}

/// One element of `fill` (a zarr JSON fill value) as little-endian bytes.
fn fill_bytes(dtype: DType, fill: &Json) -> Result<Vec<u8>, String> {
    let size = dtype.size();
    if let Some(hex) = fill.as_str().and_then(|s| s.strip_prefix("0x")) {
        let bits = u64::from_str_radix(hex, 16).map_err(|_| format!("fill value {fill}"))?;
        return Ok(bits.to_le_bytes()[..size.min(8)].to_vec());
    }
    let float = match fill {
        Json::Null => return Ok(vec![0; size]),
        Json::Bool(b) => f64::from(u8::from(*b)),
        Json::Number(n) => match dtype {
            DType::I8 | DType::I16 | DType::I32 | DType::I64 => return Ok(n.as_i64().ok_or(format!("fill value {n}"))?.to_le_bytes()[..size].to_vec()),
            DType::Bool | DType::U8 | DType::U16 | DType::U32 | DType::U64 => return Ok(n.as_u64().ok_or(format!("fill value {n}"))?.to_le_bytes()[..size].to_vec()),
            _ => n.as_f64().ok_or(format!("fill value {n}"))?,
        },
        Json::String(s) => match s.as_str() {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            _ => return Err(format!("fill value {s:?}")),
        },
        Json::Array(parts) if parts.len() == 2 && matches!(dtype, DType::C64 | DType::C128) => {
            let half = if dtype == DType::C64 { DType::F32 } else { DType::F64 };
            return Ok([fill_bytes(half, &parts[0])?, fill_bytes(half, &parts[1])?].concat());
        }
        other => return Err(format!("fill value {other}")),
    };
    Ok(match dtype {
        DType::F64 => float.to_le_bytes().to_vec(),
        DType::F32 => (float as f32).to_le_bytes().to_vec(),
        DType::F16 => f32_to_f16(float as f32).to_le_bytes().to_vec(),
        DType::BF16 => f32_to_bf16(float as f32).to_le_bytes().to_vec(),
        DType::C64 => [(float as f32).to_le_bytes(), 0f32.to_le_bytes()].concat(),
        DType::C128 => [float.to_le_bytes(), 0f64.to_le_bytes()].concat(),
        _ if float == 0.0 => vec![0; size],
        _ => return Err(format!("fill value {float} for {}", dtype.name())),
    })
}

/// float32 to IEEE half, rounding to nearest even.
fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    let (value, shift) = if e <= 0 {
        if e < -10 {
            return sign;
        }
        (man | 0x80_0000, (14 - e) as u32)
    } else {
        ((e as u32) << 23 | man, 13)
    };
    let half = 1u32 << (shift - 1);
    let rem = value & ((1 << shift) - 1);
    let mut r = value >> shift;
    if rem > half || (rem == half && r & 1 == 1) {
        r += 1;
    }
    sign | r as u16
}

fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return (bits >> 16) as u16 | 0x40;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

fn dims(value: &Json, what: &str) -> Result<Vec<u64>, String> {
    value.as_array().and_then(|a| a.iter().map(Json::as_u64).collect()).ok_or_else(|| format!("{what} is not a list of sizes"))
}

/// A zarr v2 compressor (`null`, `zstd`, `zlib`, `gzip`, `blosc`).
fn v2_compressor(value: &Json) -> Result<Vec<Compression>, String> {
    if value.is_null() {
        return Ok(Vec::new());
    }
    Ok(vec![match value["id"].as_str().unwrap_or("") {
        "zstd" => Compression::Zstd,
        "zlib" => Compression::Zlib,
        "gzip" => Compression::Gzip,
        "blosc" => Compression::Blosc,
        other => return Err(format!("compressor {other:?}")),
    }])
}

impl ArrayMeta {
    /// Parses `.zarray` (zarr v2).
    pub fn from_v2(text: &[u8]) -> Result<ArrayMeta, String> {
        let meta: Json = serde_json::from_slice(text).map_err(|e| format!(".zarray is not JSON: {e}"))?;
        if meta["zarr_format"] != 2 {
            return Err("zarr_format is not 2".into());
        }
        let (dtype, big_endian) = v2_dtype(&meta["dtype"])?;
        if !meta["filters"].is_null() && meta["filters"].as_array().is_none_or(|f| !f.is_empty()) {
            return Err("zarr filters".into());
        }
        let shape = dims(&meta["shape"], "shape")?;
        let transpose = match meta["order"].as_str() {
            Some("C") | None => None,
            Some("F") => Some((0..shape.len()).rev().collect()),
            Some(other) => Err(format!("order {other:?}"))?,
        };
        let separator = meta["dimension_separator"].as_str().unwrap_or(".").to_string();
        let codecs = Codecs { compression: v2_compressor(&meta["compressor"])?, big_endian, transpose, shard: None };
        ArrayMeta::new(dtype, shape, dims(&meta["chunks"], "chunks")?, codecs, &meta["fill_value"], String::new(), separator, "0".into())
    }

    /// Parses `zarr.json` of an array (zarr v3).
    pub fn from_v3(meta: &Json) -> Result<ArrayMeta, String> {
        let name = meta["data_type"].as_str().ok_or("data_type is not a name")?;
        let dtype = DType::from_numpy_name(name).ok_or_else(|| format!("data_type {name:?}"))?;
        let shape = dims(&meta["shape"], "shape")?;
        if meta["chunk_grid"]["name"] != "regular" {
            return Err("a chunk grid other than regular".into());
        }
        let chunk_shape = dims(&meta["chunk_grid"]["configuration"]["chunk_shape"], "chunk_shape")?;
        let encoding = &meta["chunk_key_encoding"];
        let (prefix, default_separator, scalar_key) = match encoding["name"].as_str() {
            Some("default") | None => ("c", "/", "c"),
            Some("v2") => ("", ".", "0"),
            Some(other) => return Err(format!("chunk key encoding {other:?}")),
        };
        let separator = encoding["configuration"]["separator"].as_str().unwrap_or(default_separator).to_string();
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}{separator}") };
        let codecs = v3_codecs(meta["codecs"].as_array().ok_or("codecs is not a list")?, shape.len(), 0)?;
        ArrayMeta::new(dtype, shape, chunk_shape, codecs, &meta["fill_value"], prefix, separator, scalar_key.into())
    }

    #[allow(clippy::too_many_arguments)]
    fn new(dtype: DType, shape: Vec<u64>, chunk_shape: Vec<u64>, codecs: Codecs, fill: &Json, prefix: String, separator: String, scalar_key: String) -> Result<ArrayMeta, String> {
        if chunk_shape.len() != shape.len() || chunk_shape.contains(&0) {
            return Err(format!("chunk shape {chunk_shape:?} for shape {shape:?}"));
        }
        let item = dtype.size() as u64;
        let fits = |dims: &[u64]| crate::model::Tensor::element_count(dims).and_then(|n| n.checked_mul(item));
        if fits(&shape).is_none() {
            return Err(format!("shape {shape:?} overflows"));
        }
        if fits(&chunk_shape).is_none_or(|n| n > MAX_CHUNK_BYTES) {
            return Err(format!("chunks of shape {chunk_shape:?} (over {MAX_CHUNK_BYTES} bytes decoded)"));
        }
        if let Some(shard) = &codecs.shard
            && (shard.inner_shape.len() != shape.len() || shard.inner_shape.iter().zip(&chunk_shape).any(|(i, c)| *i == 0 || c % i != 0))
        {
            return Err(format!("inner chunks {:?} do not tile shards {chunk_shape:?}", shard.inner_shape));
        }
        let fill = fill_bytes(dtype, fill)?;
        Ok(ArrayMeta { dtype, shape, chunk_shape, codecs, fill, prefix, separator, scalar_key })
    }

    fn chunk_key(&self, grid: &[u64]) -> String {
        if grid.is_empty() {
            return self.scalar_key.clone();
        }
        let joined: Vec<String> = grid.iter().map(u64::to_string).collect();
        format!("{}{}", self.prefix, joined.join(&self.separator))
    }
}

/// A v3 codec list: array-to-array (`transpose`), one array-to-bytes (`bytes`,
/// `sharding_indexed`), then bytes-to-bytes. `depth` bounds shards within shards.
fn v3_codecs(list: &[Json], rank: usize, depth: usize) -> Result<Codecs, String> {
    if depth > 2 {
        return Err("shards nested more than twice".into());
    }
    let mut codecs = Codecs { compression: Vec::new(), big_endian: false, transpose: None, shard: None };
    for codec in list {
        let config = &codec["configuration"];
        match codec["name"].as_str().unwrap_or("") {
            "transpose" => {
                let order: Vec<usize> = match &config["order"] {
                    Json::String(s) if s == "C" => (0..rank).collect(),
                    Json::String(s) if s == "F" => (0..rank).rev().collect(),
                    order => dims(order, "transpose order")?.into_iter().map(|d| d as usize).collect(),
                };
                let mut seen = order.clone();
                seen.sort();
                if seen != (0..rank).collect::<Vec<_>>() {
                    return Err(format!("transpose order {order:?}"));
                }
                codecs.transpose = Some(order);
            }
            "bytes" => codecs.big_endian = config["endian"] == "big",
            "sharding_indexed" => {
                let inner = v3_codecs(config["codecs"].as_array().ok_or("shard codecs")?, rank, depth + 1)?;
                let index = v3_codecs(config["index_codecs"].as_array().ok_or("shard index codecs")?, 1, depth + 1)?;
                let index_at_end = config["index_location"].as_str().unwrap_or("end") == "end";
                let inner_shape = dims(&config["chunk_shape"], "inner chunk_shape")?;
                codecs.shard = Some(Box::new(Sharding { inner_shape, inner, index, index_at_end }));
            }
            "zstd" => codecs.compression.push(Compression::Zstd),
            "gzip" => codecs.compression.push(Compression::Gzip),
            "blosc" => codecs.compression.push(Compression::Blosc),
            "crc32c" => codecs.compression.push(Compression::Crc32c),
            other => return Err(format!("codec {other:?}")),
        }
    }
    Ok(codecs)
}

/// Undoes bytes-to-bytes codecs; `expected` bounds what any decompression may produce.
fn decompress(mut data: Vec<u8>, steps: &[Compression], expected: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    for step in steps.iter().rev() {
        let mut out = Vec::new();
        match step {
            Compression::Crc32c => {
                let body = data.len().checked_sub(4).ok_or_else(|| ReadError::Corrupt("chunk shorter than its CRC-32C".into()))?;
                let stored = u32::from_le_bytes(data[body..].try_into().unwrap());
                if crc32c::crc32c(&data[..body]) != stored {
                    return Err(ReadError::Corrupt("chunk CRC-32C mismatch".into()));
                }
                data.truncate(body);
                continue;
            }
            Compression::Zstd => {
                let decoder = ruzstd::decoding::StreamingDecoder::new(&data[..]).map_err(|e| ReadError::Corrupt(format!("zstd chunk: {e}")))?;
                decoder.take(expected + 1).read_to_end(&mut out).map_err(|e| ReadError::Corrupt(format!("zstd chunk: {e}")))?;
            }
            Compression::Zlib => crate::codecs::inflate(&data, expected, &mut out)?,
            Compression::Gzip => {
                flate2::read::MultiGzDecoder::new(&data[..])
                    .take(expected + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| ReadError::Corrupt(format!("gzip chunk: {e}")))?;
            }
            Compression::Blosc => out = blosc_decompress(&data, expected)?,
        }
        if out.len() as u64 > expected {
            return Err(ReadError::Corrupt(format!("a chunk inflates beyond its {expected} bytes")));
        }
        data = out;
    }
    Ok(data)
}

/// One blosc1 frame (c-blosc's `blosc_decompress`): a 16-byte header, then the blocks, each
/// compressed whole or in one split per byte of the element, then byte- or bit-unshuffled.
fn blosc_decompress(frame: &[u8], expected: u64) -> Result<Vec<u8>, ReadError> {
    let corrupt = |why: &str| ReadError::Corrupt(format!("blosc frame: {why}"));
    let header = frame.get(..16).ok_or_else(|| corrupt("shorter than its header"))?;
    let (flags, typesize) = (header[2], usize::from(header[3]).max(1));
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap()) as usize;
    let (nbytes, blocksize) = (word(4), word(8));
    if nbytes as u64 > expected {
        return Err(corrupt("larger than the chunk"));
    }
    if flags & 0x02 != 0 {
        // Stored without compression.
        return frame.get(16..16 + nbytes).map(<[u8]>::to_vec).ok_or_else(|| corrupt("ends early"));
    }
    if nbytes == 0 {
        return Ok(Vec::new());
    }
    if blocksize == 0 {
        return Err(corrupt("block size 0"));
    }
    let nblocks = nbytes.div_ceil(blocksize);
    let mut out = vec![0u8; nbytes];
    let mut block = Vec::with_capacity(blocksize);
    let mut unshuffled = Vec::new();
    for j in 0..nblocks {
        let start_at = 16 + 4 * j;
        let start = frame.get(start_at..start_at + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize).ok_or_else(|| corrupt("ends early"))?;
        let size = blocksize.min(nbytes - j * blocksize);
        let leftover = size < blocksize;
        let splits = if flags & 0x10 == 0 && typesize <= 16 && blocksize / typesize >= 128 && !leftover { typesize } else { 1 };
        let part = size / splits;
        block.clear();
        let mut at = start;
        for _ in 0..splits {
            let len = frame.get(at..at + 4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).ok_or_else(|| corrupt("ends early"))?;
            at += 4;
            let len = usize::try_from(len).map_err(|_| corrupt("negative length"))?;
            let src = frame.get(at..at.saturating_add(len)).ok_or_else(|| corrupt("ends early"))?;
            at += len;
            let before = block.len();
            if len == part {
                block.extend_from_slice(src);
            } else {
                blosc_codec(flags >> 5, src, part, &mut block).map_err(|why| corrupt(&why))?;
            }
            if block.len() - before != part {
                return Err(corrupt("a block decodes to other than its size"));
            }
        }
        let dest = &mut out[j * blocksize..j * blocksize + size];
        if flags & 0x01 != 0 && typesize > 1 {
            crate::codecs::unshuffle(&block, typesize, &mut unshuffled);
            dest.copy_from_slice(&unshuffled);
        } else if flags & 0x04 != 0 {
            bit_unshuffle(&block, typesize, dest);
        } else {
            dest.copy_from_slice(&block);
        }
    }
    Ok(out)
}

/// Decodes one blosc split of `part` bytes with the codec of its frame's flags, appending to `out`.
fn blosc_codec(code: u8, src: &[u8], part: usize, out: &mut Vec<u8>) -> Result<(), String> {
    use std::io::Read;
    let bounded = |reader: &mut dyn Read, out: &mut Vec<u8>| reader.take(part as u64 + 1).read_to_end(out).map(|_| ()).map_err(|e| e.to_string());
    match code {
        1 => {
            let start = out.len();
            out.resize(start + part, 0);
            let n = lz4_flex::block::decompress_into(src, &mut out[start..]).map_err(|e| format!("lz4: {e}"))?;
            out.truncate(start + n);
            Ok(())
        }
        3 => bounded(&mut flate2::read::ZlibDecoder::new(src), out),
        4 => bounded(&mut ruzstd::decoding::StreamingDecoder::new(src).map_err(|e| e.to_string())?, out),
        0 => Err("blosclz blocks are not read (no zarr writer defaults to them)".into()),
        other => Err(format!("codec {other}")),
    }
}

/// Undoes blosc's bit shuffle of a block: bit `b` of element `i` was stored at bit
/// `b * n + i` (least significant first); blocks of other than a multiple of 8 elements are
/// stored as they are.
fn bit_unshuffle(src: &[u8], typesize: usize, dest: &mut [u8]) {
    let n = src.len() / typesize;
    if !n.is_multiple_of(8) {
        dest.copy_from_slice(src);
        return;
    }
    dest.fill(0);
    for bit in 0..typesize * 8 {
        for i in 0..n {
            let k = bit * n + i;
            if src[k / 8] >> (k % 8) & 1 != 0 {
                dest[i * typesize + bit / 8] |= 1 << (bit % 8);
            }
        }
    }
}

/// The C-order elements of a chunk of `shape` decoded from its stored bytes.
fn decode_chunk(data: Vec<u8>, codecs: &Codecs, shape: &[u64], dtype: DType, fill: &[u8]) -> Result<Vec<u8>, ReadError> {
    let item = dtype.size();
    let count = shape.iter().product::<u64>();
    let expected = count * item as u64;
    if let Some(shard) = &codecs.shard {
        let data = decompress(data, &codecs.compression, 2 * MAX_CHUNK_BYTES)?;
        return decode_shard(&data, shard, shape, dtype, fill);
    }
    let mut data = decompress(data, &codecs.compression, expected)?;
    if data.len() as u64 != expected {
        return Err(ReadError::Corrupt(format!("a chunk of {} bytes where its shape needs {expected}", data.len())));
    }
    if codecs.big_endian {
        for element in data.chunks_exact_mut(dtype.swap_unit()) {
            element.reverse();
        }
    }
    match &codecs.transpose {
        Some(order) if order.iter().enumerate().any(|(i, &d)| i != d) => Ok(untranspose(&data, order, shape, item)),
        _ => Ok(data),
    }
}

/// Elements stored in the axis order `order` (the stored chunk has shape `shape[order[k]]`),
/// back in C order of `shape`.
fn untranspose(data: &[u8], order: &[usize], shape: &[u64], item: usize) -> Vec<u8> {
    let rank = shape.len();
    let stored: Vec<u64> = order.iter().map(|&d| shape[d]).collect();
    // Stride in the stored layout of each logical axis.
    let mut stride = vec![0u64; rank];
    let mut s = 1u64;
    for k in (0..rank).rev() {
        stride[order[k]] = s;
        s *= stored[k];
    }
    let mut out = vec![0u8; data.len()];
    let mut index = vec![0u64; rank];
    for element in out.chunks_exact_mut(item) {
        let from = index.iter().zip(&stride).map(|(i, s)| i * s).sum::<u64>() as usize * item;
        element.copy_from_slice(&data[from..from + item]);
        for d in (0..rank).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

/// A `sharding_indexed` shard: its index of (offset, length) per inner chunk, each inner chunk
/// decoded and placed in the shard's C-order elements; missing ones are the fill value.
fn decode_shard(data: &[u8], shard: &Sharding, shape: &[u64], dtype: DType, fill: &[u8]) -> Result<Vec<u8>, ReadError> {
    let item = dtype.size();
    let grid: Vec<u64> = shape.iter().zip(&shard.inner_shape).map(|(s, i)| s / i).collect();
    let count = grid.iter().product::<u64>();
    let index_len = count.checked_mul(16).ok_or_else(|| ReadError::Corrupt("shard index overflows".into()))?;
    let stored_index_len = index_len + if shard.index.compression.iter().any(|c| matches!(c, Compression::Crc32c)) { 4 } else { 0 };
    let stored_index_len = usize::try_from(stored_index_len).ok().filter(|&n| n <= data.len()).ok_or_else(|| ReadError::Corrupt("shard shorter than its index".into()))?;
    let raw_index = if shard.index_at_end { &data[data.len() - stored_index_len..] } else { &data[..stored_index_len] };
    let index = decompress(raw_index.to_vec(), &shard.index.compression, index_len)?;
    if index.len() as u64 != index_len {
        return Err(ReadError::Corrupt("shard index of the wrong size".into()));
    }
    let total = shape.iter().product::<u64>() as usize;
    let mut out: Vec<u8> = fill.iter().copied().cycle().take(total * item).collect();
    for (k, entry) in index.chunks_exact(16).enumerate() {
        let word = |at: usize| u64::from_le_bytes(entry[at..at + 8].try_into().unwrap());
        let (offset, len) = (word(0), word(8));
        if offset == u64::MAX && len == u64::MAX {
            continue;
        }
        let end = offset.checked_add(len).filter(|&end| end <= data.len() as u64).ok_or_else(|| ReadError::Corrupt("a shard index entry points outside the shard".into()))?;
        let inner = decode_chunk(data[offset as usize..end as usize].to_vec(), &shard.inner, &shard.inner_shape, dtype, fill)?;
        // Place inner chunk k (C order over the grid) into the shard, one row at a time.
        let mut at = vec![0u64; grid.len()];
        let mut rest = k as u64;
        for d in (0..grid.len()).rev() {
            at[d] = rest % grid[d] * shard.inner_shape[d];
            rest /= grid[d];
        }
        let rank = shape.len();
        let row = shard.inner_shape.last().map_or(1, |&n| n as usize) * item;
        for (r, src) in inner.chunks_exact(row).enumerate() {
            let mut index = at.clone();
            let mut rest = r as u64;
            for d in (0..rank.saturating_sub(1)).rev() {
                index[d] += rest % shard.inner_shape[d];
                rest /= shard.inner_shape[d];
            }
            let linear = index.iter().zip(shape).fold(0u64, |acc, (i, s)| acc * s + i) as usize * item;
            out[linear..linear + row].copy_from_slice(src);
        }
    }
    Ok(out)
}

/// An array's C-order bytes, read chunk by chunk through the cache.
pub(crate) struct ZarrArray {
    store: Arc<dyn Store>,
    /// The array's key prefix in the store (`params.w/`, or "" for a store that is the array).
    base: String,
    meta: ArrayMeta,
    cache: Arc<ChunkCache>,
    id: u64,
    len: u64,
}

impl ZarrArray {
    pub fn new(store: Arc<dyn Store>, base: String, meta: ArrayMeta, cache: Arc<ChunkCache>) -> ZarrArray {
        let len = meta.shape.iter().product::<u64>() * meta.dtype.size() as u64;
        ZarrArray { store, base, id: cache.new_id(), cache, meta, len }
    }

    /// The decoded chunk at grid index `grid` (C order, chunk shape; edge chunks full size).
    fn chunk(&self, grid: &[u64], linear: u64) -> Result<Arc<[u8]>, ReadError> {
        self.cache.get_or_load((self.id, linear), || {
            let meta = &self.meta;
            let key = format!("{}{}", self.base, meta.chunk_key(grid));
            let count = meta.chunk_shape.iter().product::<u64>() as usize;
            match self.store.get(&key)? {
                None => Ok(meta.fill.iter().copied().cycle().take(count * meta.dtype.size()).collect::<Vec<u8>>()),
                Some(blob) => {
                    let data = blob.read_vec(0, blob.len())?;
                    decode_chunk(data, &meta.codecs, &meta.chunk_shape, meta.dtype, &meta.fill)
                }
            }
        })
    }
}

impl TensorBytes for ZarrArray {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let meta = &self.meta;
        let item = meta.dtype.size() as u64;
        let rank = meta.shape.len();
        let grid_dims: Vec<u64> = meta.shape.iter().zip(&meta.chunk_shape).map(|(s, c)| s.div_ceil(*c)).collect();
        let mut done = 0usize;
        let mut index = vec![0u64; rank];
        let mut grid = vec![0u64; rank];
        while done < buf.len() {
            let at = offset + done as u64;
            let (element, within) = (at / item, at % item);
            let mut rest = element;
            for d in (0..rank).rev() {
                index[d] = rest % meta.shape[d];
                rest /= meta.shape[d];
            }
            let mut linear = 0u64;
            let mut in_chunk = 0u64;
            for d in 0..rank {
                grid[d] = index[d] / meta.chunk_shape[d];
                linear = linear * grid_dims[d] + grid[d];
                in_chunk = in_chunk * meta.chunk_shape[d] + index[d] % meta.chunk_shape[d];
            }
            // The run along the last axis that stays in this chunk and inside the array.
            let run = match rank {
                0 => 1,
                _ => {
                    let (last, c) = (index[rank - 1], meta.chunk_shape[rank - 1]);
                    (c - last % c).min(meta.shape[rank - 1] - last)
                }
            };
            let chunk = self.chunk(&grid, linear)?;
            let from = (in_chunk * item + within) as usize;
            let n = ((run * item - within) as usize).min(buf.len() - done);
            let src = chunk.get(from..from + n).ok_or_else(|| ReadError::Corrupt("a chunk shorter than its shape".into()))?;
            buf[done..done + n].copy_from_slice(src);
            done += n;
        }
        Ok(())
    }
}

/// Reads the metadata of the array at `base` in `store`: `zarr.json` (v3) or `.zarray` (v2).
/// `Ok(None)` when neither is there; `Err` says what is wrong with the metadata.
pub(crate) fn array_meta(store: &dyn Store, base: &str) -> Result<Option<ArrayMeta>, String> {
    let read = |key: &str| -> Result<Option<Vec<u8>>, String> {
        match store.get(&format!("{base}{key}")).map_err(|e| e.to_string())? {
            Some(blob) if blob.len() > 1 << 20 => Err(format!("{key} of {} bytes", blob.len())),
            Some(blob) => blob.read_vec(0, blob.len()).map(Some).map_err(|e| e.to_string()),
            None => Ok(None),
        }
    };
    if let Some(text) = read("zarr.json")? {
        let meta: Json = serde_json::from_slice(&text).map_err(|e| format!("zarr.json is not JSON: {e}"))?;
        if meta["node_type"] != "array" {
            return Ok(None);
        }
        return ArrayMeta::from_v3(&meta).map(Some);
    }
    match read(".zarray")? {
        Some(text) => ArrayMeta::from_v2(&text).map(Some),
        None => Ok(None),
    }
}

/// An array found in a store: its path below the store, and its metadata or why it is not read.
pub(crate) type FoundArray = (String, Result<ArrayMeta, String>);

/// Every array below a zarr store directory (a group, nested groups, or one array), as
/// (path below the store, its metadata or why it is not read), in name order.
pub(crate) fn find_arrays(dir: &Dir, depth: usize) -> Result<Vec<FoundArray>, OpenError> {
    let store = DirStore(dir.clone());
    if let Some(meta) = array_meta(&store, "").transpose() {
        return Ok(vec![(String::new(), meta)]);
    }
    let mut found = Vec::new();
    if depth >= 32 {
        return Ok(found);
    }
    for entry in dir.list()? {
        if entry.kind != crate::source::EntryKind::Dir || entry.name.starts_with('.') {
            continue;
        }
        for (path, meta) in find_arrays(&dir.sub(&entry.name)?, depth + 1)? {
            let path = if path.is_empty() { entry.name.clone() } else { format!("{}/{path}", entry.name) };
            found.push((path, meta));
        }
    }
    Ok(found)
}

/// `true` for a zarr group or array directory (v2 `.zgroup`/`.zarray`, v3 `zarr.json`).
pub(crate) fn is_zarr_dir(dir: &Dir) -> bool {
    dir.list().is_ok_and(|entries| entries.iter().any(|e| e.kind != crate::source::EntryKind::Dir && matches!(e.name.as_str(), ".zgroup" | ".zarray" | "zarr.json")))
}

/// Adds the arrays of `store` (keys below `base`) as tensors named `name` at `path`; an array
/// whose metadata wfs cannot read is listed as skipped with why.
pub(crate) fn add_array(model: &mut crate::model::Model, store: &Arc<dyn Store>, base: &str, name: &str, path: Vec<String>, cache: &Arc<ChunkCache>) -> Result<(), String> {
    let meta = array_meta(store.as_ref(), base)?.ok_or("no .zarray or zarr.json")?;
    let (dtype, shape) = (meta.dtype, meta.shape.clone());
    let bytes = Arc::new(ZarrArray::new(store.clone(), base.to_string(), meta, cache.clone()));
    model.tensors.push(crate::model::Tensor { name: name.to_string(), ..crate::model::Tensor::new(path, dtype, shape, bytes) });
    Ok(())
}

/// A zarr store (a group of arrays, or one array) that is a directory: each array a tensor
/// named by its path in the store. `None` if the directory is no zarr store.
pub(crate) fn open_dir(dir: &Dir, options: &crate::formats::ReadOptions) -> Result<Option<crate::model::Model>, OpenError> {
    if !is_zarr_dir(dir) {
        return Ok(None);
    }
    let mut model = crate::model::Model::default();
    let store: Arc<dyn Store> = Arc::new(DirStore(dir.clone()));
    for (path, meta) in find_arrays(dir, 0)? {
        let name = if path.is_empty() { dir_name(dir) } else { path };
        let added = meta.and_then(|_| {
            let base = if name.is_empty() || !dir_is_group(dir) { String::new() } else { format!("{name}/") };
            let tree_path = std::iter::once("tensors".to_string()).chain(name.split('/').map(str::to_string)).collect();
            add_array(&mut model, &store, &base, &name, tree_path, &options.cache)
        });
        if let Err(reason) = added {
            model.skipped.push(crate::model::SkippedTensor::new(crate::model::TensorId::Name(name), reason));
        }
    }
    Ok(Some(model))
}

/// `true` unless the directory is itself an array.
fn dir_is_group(dir: &Dir) -> bool {
    array_meta(&DirStore(dir.clone()), "").ok().flatten().is_none()
}

/// The last name of a directory (an array store's only tensor is named after it).
fn dir_name(dir: &Dir) -> String {
    match dir {
        Dir::Local(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "array".into()),
        Dir::Remote(_) => "array".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats_round_to_nearest_even() {
        for (x, bits) in [(0.0f32, 0u16), (1.0, 0x3c00), (-2.0, 0xc000), (65504.0, 0x7bff), (1e6, 0x7c00), (5.96e-8, 1), (0.1, 0x2e66)] {
            assert_eq!(f32_to_f16(x), bits, "{x}");
            assert_eq!(crate::dtype::f16_to_f32(bits), if x == 1e6 { f32::INFINITY } else { crate::dtype::f16_to_f32(f32_to_f16(x)) });
        }
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
    }

    #[test]
    fn transposed_chunks_come_back_in_c_order() {
        // A 2x3 chunk stored in F order: columns first.
        let stored = [0u8, 3, 1, 4, 2, 5];
        assert_eq!(untranspose(&stored, &[1, 0], &[2, 3], 1), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn bit_unshuffle_inverts_the_bit_transpose() {
        // Eight 1-byte elements 0..8: bit plane b holds bit b of each element, element i at bit i.
        let mut planes = [0u8; 8];
        for i in 0..8u8 {
            for (b, plane) in planes.iter_mut().enumerate() {
                *plane |= (i >> b & 1) << i;
            }
        }
        let mut out = [0u8; 8];
        bit_unshuffle(&planes, 1, &mut out);
        assert_eq!(out, [0, 1, 2, 3, 4, 5, 6, 7]);
    }
}
