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
    /// The errno a failed read returns to the program reading the mount. Every cause gets EIO,
    /// deliberately: it is the one errno that every reader of a file (cat, cp, dd, numpy, a
    /// training script) takes as "these bytes cannot be read" and reports as such, and the
    /// tree's contract (a changed source or a failed request fails the read with EIO) promises
    /// it. The cause itself goes to the mount's log with the inode and offset.
    pub fn errno(&self) -> i32 {
        match self {
            // The source no longer holds the bytes the tree was built from (rewritten,
            // truncated, deleted; a remote object with a new ETag or size). ESTALE would name
            // it more exactly, but the contract promises EIO and a reader's handling is the
            // same (the read failed, the data is not there); the log line says "source changed".
            ReadError::SourceChanged => libc::EIO,
            // A range the format promised lies outside the source: the model is inconsistent,
            // which to the reader is data that cannot be read.
            ReadError::OutOfBounds => libc::EIO,
            // A failed pread or request (a refused connection, a timeout after retries): EIO as
            // a failing disk gives, not the socket's own errno, which a file reader would not
            // expect from read(2).
            ReadError::Io(_) => libc::EIO,
            // Bytes that fail their checksum or do not decode: EIO, as btrfs and ZFS answer a
            // checksum failure (EBADMSG is ext4's for metadata, and unknown to most readers).
            ReadError::Corrupt(_) => libc::EIO,
        }
    }
}

/// A mount or unmount failure; the CLI maps each to an exit code.
#[derive(Debug, Error)]
pub enum MountError {
    /// The mountpoint cannot be used (not a directory, a live mount, not creatable).
    #[error("{0}")]
    Mountpoint(String),
    #[error("{0}")]
    Other(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the choices above: a change of errno is a change of the tree's contract.
    #[test]
    fn every_read_failure_is_eio() {
        let causes = [
            ReadError::SourceChanged,
            ReadError::OutOfBounds,
            ReadError::Io(io::Error::from(io::ErrorKind::ConnectionRefused)),
            ReadError::Io(io::Error::from_raw_os_error(libc::EACCES)),
            ReadError::Corrupt("crc mismatch".into()),
        ];
        for cause in causes {
            assert_eq!(cause.errno(), libc::EIO, "{cause}");
        }
    }
}
