//! Where tensor bytes come from: the source file (checked for changes on every read) or memory.

use crate::error::ReadError;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What identifies the source file's content at mount time; any change means the bytes a
/// read would return may mix old and new data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Self {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

/// An open, immutable-while-mounted source file.
#[derive(Debug)]
pub struct SourceFile {
    path: PathBuf,
    file: File,
    identity: Identity,
}

impl SourceFile {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let identity = Identity::of(&file.metadata()?);
        Ok(SourceFile { path: path.to_path_buf(), file, identity })
    }

    pub fn len(&self) -> u64 {
        self.identity.size
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `true` while the path still names the same, unmodified file.
    fn unchanged(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| Identity::of(&m) == self.identity)
    }
}

/// Bytes addressed by offset: a file read with `pread`, or a buffer in memory.
#[derive(Debug, Clone)]
pub enum Blob {
    File(Arc<SourceFile>),
    Memory(Arc<[u8]>),
}

impl Blob {
    pub fn len(&self) -> u64 {
        match self {
            Blob::File(f) => f.len(),
            Blob::Memory(m) => m.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from `offset`; the whole range must lie inside the blob as it was at mount.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let end = offset.checked_add(buf.len() as u64).ok_or(ReadError::OutOfBounds)?;
        if end > self.len() {
            return Err(ReadError::OutOfBounds);
        }
        match self {
            Blob::Memory(m) => {
                buf.copy_from_slice(&m[offset as usize..end as usize]);
                Ok(())
            }
            Blob::File(f) => {
                f.file.read_exact_at(buf, offset).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        ReadError::SourceChanged
                    } else {
                        ReadError::Io(e)
                    }
                })?;
                // Checked after the read: if the file changed meanwhile, the bytes may be mixed.
                if f.unchanged() { Ok(()) } else { Err(ReadError::SourceChanged) }
            }
        }
    }

    /// Reads a whole range into a new buffer (for metadata and small members).
    pub fn read_vec(&self, offset: u64, len: u64) -> Result<Vec<u8>, ReadError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(ReadError::OutOfBounds);
        }
        let mut buf = vec![0u8; len as usize];
        self.read_at(offset, &mut buf)?;
        Ok(buf)
    }
}
