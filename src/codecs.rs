//! The pure byte filters of HDF5 chunks (deflate, shuffle, Fletcher-32, LZF): no I/O and no
//! libhdf5, each bounded by the chunk's expected size so that a hostile chunk cannot inflate
//! past it. Kept apart from the HDF5 reader so that other chunked formats can use them.

use crate::error::ReadError;

/// Inflates a zlib stream into `out` (replacing its contents).
pub fn inflate(data: &[u8], expected: u64, out: &mut Vec<u8>) -> Result<(), ReadError> {
    use std::io::Read;
    out.clear();
    out.reserve(expected as usize + 1);
    // Reading one byte past the expected size detects (and bounds) a chunk that inflates too far.
    flate2::read::ZlibDecoder::new(data)
        .take(expected + 1)
        .read_to_end(out)
        .map_err(|e| ReadError::Corrupt(format!("gzip chunk: {e}")))?;
    Ok(())
}

/// Undoes HDF5's shuffle filter into `out`: byte k of every element was stored in plane k.
pub fn unshuffle(data: &[u8], elem: usize, out: &mut Vec<u8>) {
    out.clear();
    if elem <= 1 {
        out.extend_from_slice(data);
        return;
    }
    out.resize(data.len(), 0);
    let count = data.len() / elem;
    let (planes, tail) = data.split_at(count * elem);
    let (whole, out_tail) = out.split_at_mut(count * elem);
    if elem == 4 {
        // The common case (float32), without per-byte index arithmetic.
        let (p0, rest) = planes.split_at(count);
        let (p1, rest) = rest.split_at(count);
        let (p2, p3) = rest.split_at(count);
        for ((((o, &a), &b), &c), &d) in whole.chunks_exact_mut(4).zip(p0).zip(p1).zip(p2).zip(p3) {
            o.copy_from_slice(&[a, b, c, d]);
        }
    } else {
        for (k, plane) in planes.chunks_exact(count.max(1)).enumerate().take(elem) {
            for (o, &b) in whole.chunks_exact_mut(elem).zip(plane) {
                o[k] = b;
            }
        }
    }
    // Bytes past the last whole element are stored unshuffled.
    out_tail.copy_from_slice(tail);
}

/// Drops the Fletcher-32 checksum HDF5 appends to a chunk, verifying it.
pub fn strip_fletcher32(data: &mut Vec<u8>) -> Result<(), ReadError> {
    if data.len() < 4 {
        return Err(ReadError::Corrupt("chunk shorter than its checksum".into()));
    }
    let body_len = data.len() - 4;
    let stored = u32::from_be_bytes(data[body_len..].try_into().unwrap());
    let stored_swapped = u32::from_le_bytes(data[body_len..].try_into().unwrap());
    let sum = fletcher32(&data[..body_len]);
    if sum != stored && sum != stored_swapped {
        return Err(ReadError::Corrupt("Fletcher-32 checksum mismatch".into()));
    }
    data.truncate(body_len);
    Ok(())
}

/// HDF5's Fletcher-32 (H5_checksum_fletcher32): 16-bit big-endian words, odd byte padded.
fn fletcher32(data: &[u8]) -> u32 {
    let (mut sum1, mut sum2) = (0u32, 0u32);
    for block in data.chunks(360 * 2) {
        for word in block.chunks(2) {
            let w = if word.len() == 2 { u32::from(word[0]) << 8 | u32::from(word[1]) } else { u32::from(word[0]) << 8 };
            sum1 += w;
            sum2 += sum1;
        }
        sum1 = (sum1 & 0xffff) + (sum1 >> 16);
        sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    }
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    (sum2 << 16) | sum1
}

/// LZF decompression (h5py's lzf filter, id 32000).
pub fn lzf_decompress(input: &[u8], expected: usize, out: &mut Vec<u8>) -> Result<(), ReadError> {
    let bad = || ReadError::Corrupt("invalid LZF chunk".into());
    out.clear();
    out.reserve(expected);
    let mut i = 0;
    while i < input.len() {
        let ctrl = input[i] as usize;
        i += 1;
        if ctrl < 32 {
            let n = ctrl + 1;
            let lit = input.get(i..i + n).ok_or_else(bad)?;
            out.extend_from_slice(lit);
            i += n;
        } else {
            let mut len = ctrl >> 5;
            if len == 7 {
                len += *input.get(i).ok_or_else(bad)? as usize;
                i += 1;
            }
            let low = *input.get(i).ok_or_else(bad)? as usize;
            i += 1;
            let back = ((ctrl & 0x1f) << 8) + low + 1;
            if back > out.len() {
                return Err(bad());
            }
            let start = out.len() - back;
            for k in 0..len + 2 {
                let b = out[start + k];
                out.push(b);
            }
        }
        if out.len() > expected {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unshuffle_restores_elements() {
        // elements 0x0102, 0x0304 (LE) shuffled: low bytes plane then high bytes plane
        let mut out = vec![9; 9];
        unshuffle(&[0x02, 0x04, 0x01, 0x03], 2, &mut out);
        assert_eq!(out, vec![0x02, 0x01, 0x04, 0x03]);
        // 4-byte elements 0x03020100 and 0x13121110, planes low to high, plus a trailing byte
        unshuffle(&[0x00, 0x10, 0x01, 0x11, 0x02, 0x12, 0x03, 0x13, 0xEE], 4, &mut out);
        assert_eq!(out, vec![0x00, 0x01, 0x02, 0x03, 0x10, 0x11, 0x12, 0x13, 0xEE]);
        unshuffle(&[0x00, 0x10, 0x01, 0x11, 0x02, 0x12], 3, &mut out);
        assert_eq!(out, vec![0x00, 0x01, 0x02, 0x10, 0x11, 0x12]);
        unshuffle(&[7, 8], 4, &mut out);
        assert_eq!(out, vec![7, 8]);
    }

    #[test]
    fn lzf_literal_and_backref() {
        // literal "ab", then a back-reference of length 4 at distance 2 -> "ababab"
        let data = [0x01, b'a', b'b', 0x40, 0x01];
        let mut out = vec![9; 9];
        lzf_decompress(&data, 6, &mut out).unwrap();
        assert_eq!(out, b"ababab");
        assert!(lzf_decompress(&[0x40, 0x05], 6, &mut out).is_err());
    }

    #[test]
    fn inflate_is_bounded() {
        use std::io::Write;
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&vec![0u8; 10_000]).unwrap();
        let z = enc.finish().unwrap();
        let mut out = vec![9; 20_000];
        inflate(&z, 10_000, &mut out).unwrap();
        assert_eq!(out, vec![0u8; 10_000]);
        inflate(&z, 100, &mut out).unwrap();
        assert_eq!(out.len(), 101);
    }
}
