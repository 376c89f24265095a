//! Protobuf's wire format, walked in place over a source (ONNX, Caffe), and its base-128
//! varint (also LevelDB's, in checkpoint tables): the one decoder the readers share.

use super::paged::Paged;

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

/// One protobuf message's fields, walked in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Varint,
    Fixed64,
    Bytes,
    Fixed32,
}

/// One field: its number and, by wire type, its value or where its bytes lie in the source.
#[derive(Clone, Copy, Debug)]
pub enum Field {
    Varint(u32, u64),
    Fixed64(u32, u64),
    Fixed32(u32, u32),
    Bytes { number: u32, at: u64, len: u64 },
}

impl Field {
    pub fn number(&self) -> u32 {
        match *self {
            Field::Varint(n, _) | Field::Fixed64(n, _) | Field::Fixed32(n, _) => n,
            Field::Bytes { number, .. } => number,
        }
    }
    pub fn wire(&self) -> Wire {
        match self {
            Field::Varint(..) => Wire::Varint,
            Field::Fixed64(..) => Wire::Fixed64,
            Field::Fixed32(..) => Wire::Fixed32,
            Field::Bytes { .. } => Wire::Bytes,
        }
    }
    pub fn varint(&self) -> u64 {
        match *self {
            Field::Varint(_, v) | Field::Fixed64(_, v) => v,
            Field::Fixed32(_, v) => u64::from(v),
            Field::Bytes { .. } => 0,
        }
    }
    pub fn span(&self) -> (u64, u64) {
        match *self {
            Field::Bytes { at, len, .. } => (at, len),
            _ => (0, 0),
        }
    }
}

/// The fields of one message at `[at, end)` of the source, in wire order.
pub struct Walker {
    pub at: u64,
    pub end: u64,
}

impl Walker {
    pub fn over(at: u64, len: u64) -> Walker {
        Walker { at, end: at + len }
    }

    pub fn next(&mut self, src: &mut Paged) -> Result<Option<Field>, String> {
        if self.at >= self.end {
            return Ok(None);
        }
        let key = self.varint(src)?;
        let number = u32::try_from(key >> 3).ok().filter(|&n| n > 0).ok_or("bad field number")?;
        let field = match key & 7 {
            0 => Field::Varint(number, self.varint(src)?),
            1 => Field::Fixed64(number, u64::from_le_bytes(self.take::<8>(src)?)),
            2 => {
                let len = self.varint(src)?;
                if len > self.end - self.at {
                    return Err(format!("field {number} runs past the end of its message"));
                }
                let field = Field::Bytes { number, at: self.at, len };
                self.at += len;
                field
            }
            5 => Field::Fixed32(number, u32::from_le_bytes(self.take::<4>(src)?)),
            other => return Err(format!("unsupported wire type {other} in field {number}")),
        };
        Ok(Some(field))
    }

    pub fn varint(&mut self, src: &mut Paged) -> Result<u64, String> {
        let bytes = src.read_upto(self.at, (self.end - self.at).min(10)).map_err(|e| e.to_string())?;
        match decode_varint(&bytes) {
            Ok(Some((value, used))) => {
                self.at += used as u64;
                Ok(value)
            }
            _ => Err("malformed varint".into()),
        }
    }

    fn take<const N: usize>(&mut self, src: &mut Paged) -> Result<[u8; N], String> {
        if self.end - self.at < N as u64 {
            return Err("value runs past the end of its message".into());
        }
        let bytes = src.read(self.at, N as u64).map_err(|e| e.to_string())?;
        self.at += N as u64;
        bytes.try_into().map_err(|_| "short read".to_string())
    }
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
