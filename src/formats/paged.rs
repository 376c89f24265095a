//! Small reads scattered over a big source (protobuf and FlatBuffers metadata), served from a
//! few cached pages: metadata is parsed in place, and tensor bytes between it are never read.

use crate::error::ReadError;
use crate::source::Blob;
use lru::LruCache;
use std::num::NonZeroUsize;

const PAGE: u64 = 16 << 10;
/// The page of a remote source: each page is a request, and the metadata between tensors is a
/// few dozen bytes (docs/remote.md).
const REMOTE_PAGE: u64 = 1 << 10;
/// Pages kept: 4 MiB, whatever the size of the source.
const PAGES: usize = 256;

pub struct Paged {
    blob: Blob,
    page: u64,
    pages: LruCache<u64, Vec<u8>>,
}

impl Paged {
    pub fn new(blob: &Blob) -> Paged {
        let page = if blob.is_remote() { REMOTE_PAGE } else { PAGE };
        Paged { blob: blob.clone(), page, pages: LruCache::new(NonZeroUsize::new(PAGES).unwrap_or(NonZeroUsize::MIN)) }
    }

    pub fn len(&self) -> u64 {
        self.blob.len()
    }

    pub fn blob(&self) -> &Blob {
        &self.blob
    }

    /// The `len` bytes at `offset`; an error if any lies past the end. Reads longer than a page
    /// go to the source directly.
    pub fn read(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, ReadError> {
        let end = offset.checked_add(len).filter(|&end| end <= self.len()).ok_or(ReadError::OutOfBounds)?;
        if len > self.page {
            return self.blob.read_vec(offset, len);
        }
        let mut out = Vec::with_capacity(len as usize);
        let mut at = offset;
        while at < end {
            let page = at / self.page;
            let start = (at - page * self.page) as usize;
            let bytes = self.page(page)?;
            let take = ((end - at) as usize).min(bytes.len() - start);
            out.extend_from_slice(&bytes[start..start + take]);
            at += take as u64;
        }
        Ok(out)
    }

    /// Up to `max` bytes at `offset`, fewer at the end of the source.
    pub fn read_upto(&mut self, offset: u64, max: u64) -> Result<Vec<u8>, ReadError> {
        let len = self.len().saturating_sub(offset).min(max);
        self.read(offset, len)
    }

    fn page(&mut self, page: u64) -> Result<&Vec<u8>, ReadError> {
        if !self.pages.contains(&page) {
            let start = page * self.page;
            let bytes = self.blob.read_vec(start, self.page.min(self.len() - start))?;
            self.pages.put(page, bytes);
        }
        self.pages.get(&page).ok_or(ReadError::OutOfBounds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn reads_across_pages_and_past_the_end() {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let mut paged = Paged::new(&Blob::Memory(Arc::new(data.clone())));
        for (offset, len) in [(0u64, 10u64), (16_380, 10), (32_760, 7_240), (1, 20_000), (39_999, 1)] {
            assert_eq!(paged.read(offset, len).unwrap(), data[offset as usize..(offset + len) as usize]);
        }
        assert!(paged.read(39_999, 2).is_err());
        assert!(paged.read(u64::MAX, 2).is_err());
        assert_eq!(paged.read_upto(39_990, 100).unwrap().len(), 10);
    }
}
