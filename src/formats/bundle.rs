//! The TensorFlow tensor bundle's `.index` file (docs/formats/tensorflow.md#the-index-file-a-leveldb-format-sstable, docs/formats/tensorflow.md#bundle-entries): a LevelDB-format SSTable
//! whose values are `BundleHeaderProto` / `BundleEntryProto` messages, plus the masked crc32c
//! that checks both the table blocks and the tensor data.

use crate::error::OpenError;
use crate::source::Blob;
use super::wire::read_varint;

/// `kTableMagicNumber`, stored little-endian in the footer's last 8 bytes.
pub(crate) const TABLE_MAGIC: u64 = 0xdb47_7524_8b80_fb57;
const FOOTER_LEN: u64 = 48;
const BLOCK_TRAILER_LEN: u64 = 5;
/// Largest table block read into memory. TF's data blocks target 256 KiB, so anything near this
/// is a damaged handle, not a real block.
const MAX_BLOCK_LEN: u64 = 256 << 20;
const MASK_DELTA: u32 = 0xa282_ead8;

/// LevelDB's crc masking, which keeps a crc of data that embeds crcs from looking regular.
pub fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

pub fn masked_crc32c(data: &[u8]) -> u32 {
    mask(crc32c::crc32c(data))
}

/// `true` if the blob ends with the SSTable footer magic (how a `.index` file is recognised).
pub fn has_table_magic(blob: &Blob) -> bool {
    let len = blob.len();
    len >= FOOTER_LEN && blob.read_vec(len - 8, 8).is_ok_and(|m| m == TABLE_MAGIC.to_le_bytes())
}

/// Offset and size of a block, as stored in the footer and the index block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BlockHandle {
    offset: u64,
    size: u64,
}

impl BlockHandle {
    fn decode(data: &[u8], pos: &mut usize) -> Option<BlockHandle> {
        Some(BlockHandle { offset: read_varint(data, pos)?, size: read_varint(data, pos)? })
    }
}

/// A table key and its value.
pub type TableEntry = (Vec<u8>, Vec<u8>);

/// Every key/value pair of the table, in key order.
pub fn read_table(blob: &Blob) -> Result<Vec<TableEntry>, OpenError> {
    let len = blob.len();
    if !has_table_magic(blob) {
        return Err(OpenError::corrupt("index file has no table footer (truncated?)"));
    }
    let footer = read(blob, len - FOOTER_LEN, FOOTER_LEN)?;
    let mut pos = 0;
    let handles = BlockHandle::decode(&footer, &mut pos).and_then(|_metaindex| BlockHandle::decode(&footer, &mut pos));
    let index_handle = handles.ok_or_else(|| OpenError::corrupt("index file footer is damaged"))?;
    let index = read_block(blob, index_handle, len - FOOTER_LEN)?;
    let mut entries = Vec::new();
    for (_, value) in block_entries(&index)? {
        let mut pos = 0;
        let handle = BlockHandle::decode(&value, &mut pos)
            .ok_or_else(|| OpenError::corrupt("index block holds a damaged block handle"))?;
        let block = read_block(blob, handle, index_handle.offset)?;
        entries.extend(block_entries(&block)?);
    }
    if entries.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(OpenError::corrupt("index file keys are out of order"));
    }
    Ok(entries)
}

fn read(blob: &Blob, offset: u64, len: u64) -> Result<Vec<u8>, OpenError> {
    blob.read_vec(offset, len).map_err(|e| OpenError::corrupt(format!("cannot read index file: {e}")))
}

/// A block's contents, its trailer's crc checked and Snappy undone; the block and its trailer
/// must lie below `limit`.
fn read_block(blob: &Blob, handle: BlockHandle, limit: u64) -> Result<Vec<u8>, OpenError> {
    let end = handle.offset.checked_add(handle.size).and_then(|e| e.checked_add(BLOCK_TRAILER_LEN));
    if handle.size > MAX_BLOCK_LEN || end.is_none_or(|e| e > limit) {
        return Err(OpenError::corrupt(format!(
            "index file block at {} (size {}) lies outside the file",
            handle.offset, handle.size
        )));
    }
    let mut raw = read(blob, handle.offset, handle.size + BLOCK_TRAILER_LEN)?;
    let trailer = raw.split_off(handle.size as usize);
    let stored = u32::from_le_bytes([trailer[1], trailer[2], trailer[3], trailer[4]]);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&raw), &trailer[..1]);
    if mask(crc) != stored {
        return Err(OpenError::corrupt(format!("index file block at {} fails its checksum", handle.offset)));
    }
    match trailer[0] {
        0 => Ok(raw),
        1 => {
            let size = snap::raw::decompress_len(&raw)
                .map_err(|e| OpenError::corrupt(format!("bad Snappy block in index file: {e}")))?;
            if size as u64 > MAX_BLOCK_LEN {
                return Err(OpenError::corrupt("Snappy block in index file is implausibly large"));
            }
            snap::raw::Decoder::new()
                .decompress_vec(&raw)
                .map_err(|e| OpenError::corrupt(format!("bad Snappy block in index file: {e}")))
        }
        t => Err(OpenError::corrupt(format!("index file block has unknown compression type {t}"))),
    }
}

/// The key/value entries of one block (prefix-compressed keys, restart array at the end).
fn block_entries(block: &[u8]) -> Result<Vec<TableEntry>, OpenError> {
    let bad = |what: &str| OpenError::corrupt(format!("index file block is damaged: {what}"));
    let tail = block.len().checked_sub(4).ok_or_else(|| bad("too short"))?;
    let restarts = u32::from_le_bytes([block[tail], block[tail + 1], block[tail + 2], block[tail + 3]]) as usize;
    let entries_end = restarts
        .checked_add(1)
        .and_then(|n| n.checked_mul(4))
        .and_then(|n| block.len().checked_sub(n))
        .ok_or_else(|| bad("restart count too large"))?;
    let data = &block[..entries_end];
    let mut entries: Vec<TableEntry> = Vec::new();
    let mut pos = 0;
    let mut key: Vec<u8> = Vec::new();
    while pos < data.len() {
        let mut field = || read_varint(data, &mut pos).and_then(|v| usize::try_from(v).ok());
        let (shared, own, value_len) = match (field(), field(), field()) {
            (Some(s), Some(o), Some(v)) => (s, o, v),
            _ => return Err(bad("entry header")),
        };
        if shared > key.len() {
            return Err(bad("shared key prefix longer than the previous key"));
        }
        let key_end = pos.checked_add(own).filter(|&e| e <= data.len()).ok_or_else(|| bad("key overruns block"))?;
        let value_end =
            key_end.checked_add(value_len).filter(|&e| e <= data.len()).ok_or_else(|| bad("value overruns block"))?;
        key.truncate(shared);
        key.extend_from_slice(&data[pos..key_end]);
        entries.push((key.clone(), data[key_end..value_end].to_vec()));
        pos = value_end;
    }
    Ok(entries)
}

/// `tensor_bundle.proto`; proto3, so absent fields are zero.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BundleHeaderProto {
    #[prost(int32, tag = "1")]
    pub num_shards: i32,
    /// 0 = little-endian, 1 = big-endian.
    #[prost(int32, tag = "2")]
    pub endianness: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BundleEntryProto {
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
    #[prost(int32, tag = "3")]
    pub shard_id: i32,
    #[prost(int64, tag = "4")]
    pub offset: i64,
    #[prost(int64, tag = "5")]
    pub size: i64,
    #[prost(fixed32, tag = "6")]
    pub crc32c: u32,
    #[prost(message, repeated, tag = "7")]
    pub slices: Vec<TensorSliceProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<Dim>,
    #[prost(bool, tag = "3")]
    pub unknown_rank: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Dim {
    #[prost(int64, tag = "1")]
    pub size: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorSliceProto {
    #[prost(message, repeated, tag = "1")]
    pub extent: Vec<SliceExtent>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SliceExtent {
    #[prost(int64, tag = "1")]
    pub start: i64,
    /// Absent means the whole dimension.
    #[prost(int64, optional, tag = "2")]
    pub length: Option<i64>,
}

/// The table key of one slice of a partitioned tensor (`EncodeTensorNameSlice`: OrderedCode of
/// 0, the name, the rank, then start and length per dimension, -1 length for a whole dimension).
pub fn slice_key(name: &[u8], slice: &TensorSliceProto) -> Vec<u8> {
    let mut key = Vec::new();
    write_num_increasing(&mut key, 0);
    for &b in name {
        match b {
            0x00 => key.extend_from_slice(&[0x00, 0xff]),
            0xff => key.extend_from_slice(&[0xff, 0x00]),
            _ => key.push(b),
        }
    }
    key.extend_from_slice(&[0x00, 0x01]);
    write_num_increasing(&mut key, slice.extent.len() as u64);
    for e in &slice.extent {
        write_signed_num_increasing(&mut key, e.start);
        write_signed_num_increasing(&mut key, e.length.unwrap_or(-1));
    }
    key
}

/// OrderedCode's unsigned form: a length byte, then the big-endian bytes without leading zeros.
fn write_num_increasing(out: &mut Vec<u8>, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    out.push((8 - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// OrderedCode's signed form: two's complement, sign-extended to the encoded length, with the
/// length in unary in the leading bits (1s for non-negative values, 0s for negative ones).
fn write_signed_num_increasing(out: &mut Vec<u8>, value: i64) {
    const HEADER: [[u8; 2]; 11] = [
        [0, 0],
        [0x80, 0],
        [0xc0, 0],
        [0xe0, 0],
        [0xf0, 0],
        [0xf8, 0],
        [0xfc, 0],
        [0xfe, 0],
        [0xff, 0],
        [0xff, 0x80],
        [0xff, 0xc0],
    ];
    let magnitude = if value < 0 { !value as u64 } else { value as u64 };
    let bits = 64 - magnitude.leading_zeros() as usize;
    // Each encoded byte carries 7 payload bits, one of which is spent on the sign.
    let len = bits / 7 + 1;
    let sign = if value < 0 { 0xff } else { 0x00 };
    let mut buf = [sign; 10];
    buf[2..].copy_from_slice(&value.to_be_bytes());
    let encoded = &mut buf[10 - len..];
    encoded[0] ^= HEADER[len][0];
    if len > 1 {
        encoded[1] ^= HEADER[len][1];
    }
    out.extend_from_slice(encoded);
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::sync::Arc;

    /// The whole 142-byte `.index` of docs/formats/tensorflow.md#data-files.
    fn worked_example() -> Vec<u8> {
        let mut f = vec![0x00, 0x00, 0x06, 0x08, 0x01, 0x1a, 0x02, 0x08, 0x01];
        f.extend_from_slice(&[0x00, 0x01, 0x0f, 0x73]);
        f.extend_from_slice(&[0x08, 0x07, 0x12, 0x04, 0x12, 0x02, 0x08, 0x02, 0x28, 0x08, 0x35, 0x9e, 0x9e, 0x48, 0xed]);
        f.extend_from_slice(&[0x00, 0x01, 0x11, 0x77]);
        f.extend_from_slice(&[
            0x08, 0x01, 0x12, 0x04, 0x12, 0x02, 0x08, 0x02, 0x20, 0x08, 0x28, 0x08, 0x35, 0x59, 0x3c, 0xe5, 0x35,
        ]);
        f.extend_from_slice(&[0, 0, 0, 0, 1, 0, 0, 0, 0x00, 0x3d, 0x3f, 0xb6, 0x71]);
        f.extend_from_slice(&[0, 0, 0, 0, 1, 0, 0, 0, 0x00, 0xc0, 0xf2, 0xa1, 0xb0]);
        f.extend_from_slice(&[0x00, 0x01, 0x02, 0x78, 0x00, 0x39, 0, 0, 0, 0, 1, 0, 0, 0, 0x00, 0x53, 0xee, 0x0f, 0x5d]);
        f.extend_from_slice(&[0x3e, 0x08, 0x4b, 0x0e]);
        f.extend_from_slice(&[0; 36]);
        f.extend_from_slice(&[0x57, 0xfb, 0x80, 0x8b, 0x24, 0x75, 0x47, 0xdb]);
        assert_eq!(f.len(), 142);
        f
    }

    #[test]
    fn crc32c_and_mask() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let data = [0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40];
        assert_eq!(masked_crc32c(&data), 0x35e5_3c59);
    }

    #[test]
    fn reads_the_worked_example() {
        let blob = Blob::Memory(Arc::from(worked_example()));
        let entries = read_table(&blob).unwrap();
        let keys: Vec<&[u8]> = entries.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, [b"".as_slice(), b"s", b"w"]);
        let header = BundleHeaderProto::decode(entries[0].1.as_slice()).unwrap();
        assert_eq!((header.num_shards, header.endianness), (1, 0));
        let s = BundleEntryProto::decode(entries[1].1.as_slice()).unwrap();
        assert_eq!((s.dtype, s.offset, s.size), (7, 0, 8));
        let w = BundleEntryProto::decode(entries[2].1.as_slice()).unwrap();
        assert_eq!((w.dtype, w.shard_id, w.offset, w.size, w.crc32c), (1, 0, 8, 8, 0x35e5_3c59));
        assert_eq!(w.shape.unwrap().dim.iter().map(|d| d.size).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let good = worked_example();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x41;
            let _ = read_table(&Blob::Memory(Arc::from(bad)));
        }
        for cut in 0..good.len() {
            assert!(read_table(&Blob::Memory(Arc::new(good[..cut].to_vec()))).is_err());
        }
        let mut bad = good.clone();
        bad[0x10] ^= 1;
        assert!(read_table(&Blob::Memory(Arc::from(bad))).unwrap_err().to_string().contains("checksum"));
    }

    #[test]
    fn snappy_blocks_are_accepted() {
        let contents = &worked_example()[..0x39];
        let mut file = snap::raw::Encoder::new().compress_vec(contents).unwrap();
        let size = file.len() as u64;
        let crc = mask(crc32c::crc32c_append(crc32c::crc32c(&file), &[1]));
        file.push(1);
        file.extend_from_slice(&crc.to_le_bytes());
        let blob = Blob::Memory(Arc::from(file));
        let block = read_block(&blob, BlockHandle { offset: 0, size }, blob.len()).unwrap();
        assert_eq!(block, contents);
        assert_eq!(block_entries(&block).unwrap().len(), 3);
    }

    #[test]
    fn slice_keys_match_tensorflow() {
        let extent = |start, length| SliceExtent { start, length };
        let slice = TensorSliceProto { extent: vec![extent(0, Some(5)), extent(0, Some(2))] };
        assert_eq!(slice_key(b"part", &slice), b"\x00part\x00\x01\x01\x02\x80\x85\x80\x82");
        let whole = TensorSliceProto { extent: vec![extent(3, None)] };
        assert_eq!(slice_key(b"a\x00b", &whole), b"\x00a\x00\xffb\x00\x01\x01\x01\x83\x7f");
        let mut big = Vec::new();
        write_signed_num_increasing(&mut big, 64);
        assert_eq!(big, [0xc0, 0x40]);
        big.clear();
        write_signed_num_increasing(&mut big, -65);
        assert_eq!(big, [0x3f, 0xbf]);
    }
}
