//! Error types of the library. The CLI maps `OpenError` classes to exit codes.

use std::io;
use thiserror::Error;

/// Why a source could not be turned into a model.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The source cannot be read at all (missing, permission, I/O error).
    #[error("{0}")]
    Unreadable(String),
    /// The bytes are not a format wfs knows.
    #[error("{0}")]
    UnknownFormat(String),
    /// The format is known but the content is damaged or hostile.
    #[error("{0}")]
    Corrupt(String),
}

impl OpenError {
    pub fn corrupt(msg: impl Into<String>) -> Self {
        OpenError::Corrupt(msg.into())
    }
    pub fn unreadable(msg: impl Into<String>) -> Self {
        OpenError::Unreadable(msg.into())
    }
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        OpenError::Unreadable(e.to_string())
    }
}

/// Why a read of tensor bytes failed; every variant surfaces as an errno to FUSE.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("source changed or vanished since mount")]
    SourceChanged,
    #[error("read beyond the end of the source")]
    OutOfBounds,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

/// An I/O error as a short reason ("No such file or directory").
pub fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

impl ReadError {
    pub fn errno(&self) -> i32 {
        libc::EIO
    }
}
