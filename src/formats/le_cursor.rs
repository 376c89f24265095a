//! Sequential little-endian reads over a source, through a read-ahead buffer: the headers of
//! the formats that interleave small records with tensor data (MXNet, legacy GGML, Darknet).

use crate::error::OpenError;
use crate::source::Blob;

/// How much of the source is read at a time.
const READ_AHEAD: u64 = 64 << 10;

pub struct LeCursor<'a> {
    blob: &'a Blob,
    pub pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
    /// Names the format in every refusal (`mxnet: ...`).
    format: &'static str,
}

impl<'a> LeCursor<'a> {
    pub fn new(blob: &'a Blob, format: &'static str) -> Self {
        LeCursor { blob, pos: 0, buf: Vec::new(), buf_start: 0, format }
    }

    pub fn remaining(&self) -> u64 {
        self.blob.len().saturating_sub(self.pos)
    }

    /// A refusal naming the format and where in the file it happened.
    pub fn corrupt(&self, what: impl std::fmt::Display) -> OpenError {
        OpenError::corrupt(format!("{}: {what} (at byte {})", self.format, self.pos))
    }

    /// The next `n` bytes; `what` names them in the refusal if the file ends first.
    pub fn bytes(&mut self, n: u64, what: &str) -> Result<&[u8], OpenError> {
        if n > self.remaining() {
            return Err(self.corrupt(format!("{what}: {n} bytes run past the end of the {}-byte file", self.blob.len())));
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        if self.pos < self.buf_start || self.pos + n > buf_end {
            let len = n.max(READ_AHEAD).min(self.remaining());
            self.buf = self.blob.read_vec(self.pos, len).map_err(|e| OpenError::unreadable(e.to_string()))?;
            self.buf_start = self.pos;
        }
        let start = (self.pos - self.buf_start) as usize;
        self.pos += n;
        Ok(&self.buf[start..start + n as usize])
    }

    /// Moves past `n` bytes (tensor data), which must lie inside the file.
    pub fn skip(&mut self, n: u64, what: &str) -> Result<(), OpenError> {
        if n > self.remaining() {
            return Err(self.corrupt(format!("{what}: {n} bytes run past the end of the {}-byte file", self.blob.len())));
        }
        self.pos += n;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], OpenError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N as u64, what)?);
        Ok(out)
    }

    pub fn u32(&mut self, what: &str) -> Result<u32, OpenError> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub fn i32(&mut self, what: &str) -> Result<i32, OpenError> {
        self.array(what).map(i32::from_le_bytes)
    }

    pub fn u64(&mut self, what: &str) -> Result<u64, OpenError> {
        self.array(what).map(u64::from_le_bytes)
    }

    pub fn i64(&mut self, what: &str) -> Result<i64, OpenError> {
        self.array(what).map(i64::from_le_bytes)
    }

    pub fn f32(&mut self, what: &str) -> Result<f32, OpenError> {
        self.array(what).map(f32::from_le_bytes)
    }

    /// Checks that `count` records of at least `min_size` bytes each fit in the rest of the
    /// file, before anything is allocated for them.
    pub fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<(), OpenError> {
        if count.checked_mul(min_size).is_none_or(|bytes| bytes > self.remaining()) {
            return Err(self.corrupt(format!("{what}: {count} cannot fit in the {} bytes left in the file", self.remaining())));
        }
        Ok(())
    }
}
