//! Protobuf's base-128 varint (also LevelDB's, in checkpoint tables), the one decoder the
//! readers share.

/// A varint at the start of `bytes`: its value and length, `None` if `bytes` ends inside it,
/// an error if it is longer than ten bytes.
pub fn decode_varint(bytes: &[u8]) -> Result<Option<(u64, usize)>, String> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 10 { Err("malformed varint".into()) } else { Ok(None) }
}

/// The varint at `pos` in `data`, advancing `pos` past it; `None` if it is cut or too long.
pub fn read_varint(data: &[u8], pos: &mut usize) -> Option<u64> {
    let (value, len) = decode_varint(data.get(*pos..)?).ok()??;
    *pos += len;
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        assert_eq!(decode_varint(&[0x96, 0x01]).unwrap(), Some((150, 2)));
        assert_eq!(decode_varint(&[0x96]).unwrap(), None);
        let mut minus_one = [0xFF; 10];
        minus_one[9] = 0x01;
        assert_eq!(decode_varint(&minus_one).unwrap(), Some((u64::MAX, 10)));
        assert!(decode_varint(&[0xFF; 11]).is_err());
        let mut pos = 1;
        assert_eq!(read_varint(&[0x00, 0x96, 0x01, 0x05], &mut pos), Some(150));
        assert_eq!((read_varint(&[0x00, 0x96, 0x01, 0x05], &mut pos), pos), (Some(5), 4));
        assert_eq!(read_varint(&[0x96], &mut 0), None);
    }
}
