//! One reader per source format, chosen by content (never by file name).

pub mod h5;
pub mod keras_h5;

use crate::cache::ChunkCache;
use crate::error::OpenError;
use crate::model::Model;
use crate::source::{Blob, SourceFile};
use std::path::Path;
use std::sync::Arc;

/// Settings every reader shares.
#[derive(Clone)]
pub struct ReadOptions {
    pub cache: Arc<ChunkCache>,
}

/// What the first bytes of a file say it is.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    Hdf5,
    Zip,
    GitLfsPointer,
    Empty,
    Unknown,
}

pub fn sniff(blob: &Blob) -> Sniffed {
    let len = blob.len();
    if len == 0 {
        return Sniffed::Empty;
    }
    let head = blob.read_vec(0, len.min(64)).unwrap_or_default();
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Sniffed::Zip;
    }
    if head.starts_with(b"version https://git-lfs.github.com/spec/") {
        return Sniffed::GitLfsPointer;
    }
    // The HDF5 signature sits at 0 or after a user block of 512 * 2^k bytes.
    let mut at = 0u64;
    while at + 8 <= len {
        if blob.read_vec(at, 8).is_ok_and(|sig| sig == h5::SIGNATURE) {
            return Sniffed::Hdf5;
        }
        at = if at == 0 { 512 } else { at * 2 };
    }
    Sniffed::Unknown
}

/// Opens SOURCE (a path) and returns its model.
pub fn open_path(path: &Path, options: &ReadOptions) -> Result<Model, OpenError> {
    let meta = std::fs::metadata(path).map_err(|e| OpenError::unreadable(io_reason(&e)))?;
    if meta.is_dir() {
        return Err(OpenError::UnknownFormat("directory holds no model wfs can read".into()));
    }
    let file = SourceFile::open(path).map_err(|e| OpenError::unreadable(io_reason(&e)))?;
    let blob = Blob::File(Arc::new(file));
    match sniff(&blob) {
        Sniffed::Hdf5 => {
            let file = h5::open(path)?;
            keras_h5::read(&file, &h5::H5Context { blob, cache: options.cache.clone() })
        }
        Sniffed::Zip => Err(OpenError::UnknownFormat("zip archives are not supported yet".into())),
        Sniffed::GitLfsPointer => Err(OpenError::UnknownFormat(
            "this is a Git LFS pointer, not the model itself (run `git lfs pull`)".into(),
        )),
        Sniffed::Empty => Err(OpenError::UnknownFormat("file is empty".into())),
        Sniffed::Unknown => Err(OpenError::UnknownFormat(
            "not a model file wfs can read (no HDF5, zip or checkpoint signature)".into(),
        )),
    }
}

/// An I/O error as a short reason ("No such file or directory").
pub fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
