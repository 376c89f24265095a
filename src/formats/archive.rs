//! Zip archives (`.keras` files, zipped SavedModels), never extracted: a stored member is read in
//! place as a slice of the archive, a deflated one is inflated into memory within a budget.

use crate::error::OpenError;
use crate::source::{Blob, BlobReader};
use std::io::Read;
use std::sync::Arc;

/// Most bytes inflated into memory at mount over all deflated members of one archive (stored
/// members, the norm, are read in place). Deflated model archives are rare rewrites.
const MAX_INFLATED: u64 = 2 << 30;

/// Bytes fetched ahead from each member's local header on a remote archive: the header (30
/// bytes, the name, an extra field), and what a reader parses first (a `.npy` header is 128).
const MEMBER_HEAD: u64 = 512;

/// An open zip archive and what is left of its inflation budget.
pub struct Archive {
    zip: zip::ZipArchive<BlobReader>,
    blob: Blob,
    budget: u64,
}

impl Archive {
    pub fn open(blob: &Blob) -> Result<Archive, OpenError> {
        let zip = zip::ZipArchive::new(blob.reader())
            .map_err(|e| OpenError::corrupt(format!("not a readable zip archive: {e}")))?;
        // Readers locate most members (each behind its local header), one after another; a
        // remote archive gets those headers, and the first bytes after them (a `.npy` header),
        // fetched at once beforehand instead of one round trip each.
        if blob.is_remote() {
            let headers: Vec<(u64, u64)> = (0..zip.len()).filter_map(|i| Some((zip.by_index_data(i).ok()?.header_start(), MEMBER_HEAD))).collect();
            blob.prefetch(&headers);
        }
        Ok(Archive { zip, blob: blob.clone(), budget: MAX_INFLATED })
    }

    pub fn index_for_name(&self, name: &str) -> Option<usize> {
        self.zip.index_for_name(name)
    }

    /// The names of the archive's files (not directories), with their indexes.
    pub fn file_names(&mut self) -> Vec<(usize, String)> {
        // From the central directory alone: a member's local header is read when the member is
        // (a remote archive would otherwise be read at every member: docs/remote.md).
        (0..self.zip.len())
            .filter_map(|i| {
                let member = self.zip.by_index_data(i).ok().filter(|f| f.is_file())?;
                // A name that does not decode (invalid UTF-8 under the UTF-8 flag) names nothing wfs serves.
                let name = member.name().ok()?.into_owned();
                Some((i, name))
            })
            .collect()
    }

    /// A member read whole into memory (a JSON document, a protobuf), refused above `max` bytes.
    pub fn read_member(&mut self, index: usize, max: u64) -> Result<Vec<u8>, OpenError> {
        // The declared size is checked before inflating: a deflated member is otherwise
        // inflated whole (up to the archive's budget) only to be refused.
        let declared = self.zip.by_index_raw(index).map_err(|e| OpenError::corrupt(format!("damaged zip archive: {e}")))?.size();
        if declared > max {
            return Err(OpenError::corrupt(format!("archive member {index} is too large ({declared} bytes)")));
        }
        // `member` holds a member to its declared size, so the check above bounds what is read.
        let blob = self.member(index)?;
        blob.read_vec(0, blob.len()).map_err(|e| OpenError::unreadable(e.to_string()))
    }

    /// A deflated member's compressed bytes (in place) and its inflated size, for readers that
    /// inflate on demand; `None` for a member that is not deflated.
    pub fn deflated(&mut self, index: usize) -> Result<Option<(Blob, u64)>, OpenError> {
        let member = self.zip.by_index_raw(index).map_err(|e| OpenError::corrupt(format!("damaged zip archive: {e}")))?;
        if member.compression() != zip::CompressionMethod::Deflated {
            return Ok(None);
        }
        let name = String::from_utf8_lossy(member.name_raw()).into_owned();
        let data = located(&self.blob, &name, member.data_start(), member.compressed_size())?;
        Ok(Some((data, member.size())))
    }

    /// A member's bytes: a stored member is a slice of the archive (read in place), a deflated
    /// one is inflated into memory, within the budget.
    pub fn member(&mut self, index: usize) -> Result<Blob, OpenError> {
        let corrupt = |e: zip::result::ZipError| OpenError::corrupt(format!("damaged zip archive: {e}"));
        let member = self.zip.by_index_raw(index).map_err(corrupt)?;
        let name = String::from_utf8_lossy(member.name_raw()).into_owned();
        let size = member.size();
        match member.compression() {
            zip::CompressionMethod::Stored => {
                if member.compressed_size() != size {
                    return Err(OpenError::corrupt(format!("zip member {name}: stored size differs from its length")));
                }
                located(&self.blob, &name, member.data_start(), size)
            }
            zip::CompressionMethod::Deflated => {
                drop(member);
                if size > self.budget {
                    return Err(OpenError::corrupt(format!(
                        "zip member {name} claims {size} bytes inflated, over wfs's {} GiB limit for compressed members",
                        MAX_INFLATED >> 30
                    )));
                }
                let mut out = Vec::with_capacity(size.min(1 << 26) as usize);
                // One byte past the declared size bounds a member that inflates further (zip refuses that byte).
                self.zip
                    .by_index(index)
                    .map_err(corrupt)?
                    .take(size + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| OpenError::corrupt(format!("zip member {name}: {e}")))?;
                if out.len() as u64 != size {
                    return Err(OpenError::corrupt(format!("zip member {name} does not inflate to its declared size")));
                }
                self.budget -= size;
                Ok(Blob::Memory(Arc::new(out)))
            }
            other => Err(OpenError::UnknownFormat(format!("zip member {name} uses {other} compression, which wfs cannot read"))),
        }
    }
}

/// The `len` bytes of a member's data in the archive, from where `by_index_raw` located them.
fn located(archive: &Blob, name: &str, start: Option<u64>, len: u64) -> Result<Blob, OpenError> {
    let start = start.ok_or_else(|| OpenError::corrupt(format!("zip member {name}: data not located")))?;
    archive.slice(start, len).map_err(|_| OpenError::corrupt(format!("zip member {name} extends past the end of the archive")))
}
