//! Writing what a command produces (`wfs convert`, `wfs export`) without ever harming its
//! input: a target that is one of the source's files (the same device and inode, through
//! symlinks and hard links) is refused, and every file is written under a temporary name in its
//! own directory and renamed into place only when complete, so a failed or killed command
//! leaves the target as it was.

use crate::source;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why an output cannot be written.
#[derive(Debug, Error)]
pub enum OutputError {
    /// The target is a file the source reads: writing it would destroy the input.
    #[error("is a file of the source itself (refusing to overwrite the input)")]
    IsSource,
    /// The target directory exists and holds files (`--force` writes into it).
    #[error("exists and is not empty (use --force to write into it)")]
    NotEmpty,
    #[error("{}", crate::error::io_reason(.0))]
    Io(#[from] io::Error),
}

/// `true` if `meta` is one of the files this process opened as (part of) a source.
fn is_source(meta: &std::fs::Metadata) -> bool {
    source::is_source_file(meta.dev(), meta.ino())
}

/// Refuses `path` if it is (or, being a symlink, leads to) a file of the source.
pub fn check_not_source(path: &Path) -> Result<(), OutputError> {
    match std::fs::metadata(path) {
        Ok(meta) if is_source(&meta) => Err(OutputError::IsSource),
        _ => Ok(()),
    }
}

/// Refuses an open descriptor (standard output redirected onto the source, `>> model.gguf`).
pub fn check_fd_not_source(fd: &impl AsRawFd) -> Result<(), OutputError> {
    // SAFETY: a zeroed `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat fills a properly sized stat buffer for a descriptor we hold.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0 && source::is_source_file(st.st_dev, st.st_ino) {
        return Err(OutputError::IsSource);
    }
    Ok(())
}

/// A file being written in place of `target`: invisible until [`AtomicFile::commit`], removed
/// if dropped before. Where the filesystem allows (`O_TMPFILE`), the file has no name at all
/// until it is complete, so even a killed process leaves nothing behind.
pub struct AtomicFile {
    file: File,
    /// Where the finished file goes: `target` itself, or where `target` (a symlink) leads.
    target: PathBuf,
    /// The temporary name, when the file has one from the start (no `O_TMPFILE`).
    named: Option<PathBuf>,
    /// `target` existed: it is replaced only once the new file is on disk.
    replaces: bool,
}

impl AtomicFile {
    /// Starts a file that will replace `target`; refuses a target that is a source file.
    pub fn create(target: &Path) -> Result<AtomicFile, OutputError> {
        check_not_source(target)?;
        let target = through_links(target)?;
        let existing = std::fs::metadata(&target).ok();
        if existing.as_ref().is_some_and(|m| m.is_dir()) {
            return Err(OutputError::Io(io::Error::from_raw_os_error(libc::EISDIR)));
        }
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (file, named) = match open_unnamed(&dir) {
            Ok(file) => (file, None),
            Err(_) => {
                let (file, path) = open_named(&dir, &target)?;
                (file, Some(path))
            }
        };
        if let Some(meta) = &existing {
            // The replacement keeps the permissions of the file it replaces.
            let _ = file.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777));
        }
        Ok(AtomicFile { file, target, named, replaces: existing.is_some() })
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Puts the complete file in place of the target. An existing target is replaced only
    /// after the new bytes are on disk, so a crash leaves either the old file or the new one.
    pub fn commit(mut self) -> Result<(), OutputError> {
        // The source may have opened more files while the output was written.
        check_not_source(&self.target)?;
        if self.replaces {
            self.file.sync_data()?;
        }
        let dir = self.target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let named = match self.named.take() {
            Some(path) => path,
            None => {
                let path = temporary_name(dir, &self.target);
                let proc_path = CString::new(format!("/proc/self/fd/{}", self.file.as_raw_fd())).expect("no NUL in a number");
                let to = c_path(&path)?;
                // SAFETY: both paths are NUL-terminated strings that live across the call.
                let linked = unsafe { libc::linkat(libc::AT_FDCWD, proc_path.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
                if linked != 0 {
                    return Err(io::Error::last_os_error().into());
                }
                path
            }
        };
        if let Err(e) = std::fs::rename(&named, &self.target) {
            let _ = std::fs::remove_file(&named);
            return Err(e.into());
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some(path) = &self.named {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Where `path` leads through symlinks, like `cp` writes through them; the last link's target
/// need not exist yet.
fn through_links(path: &Path) -> io::Result<PathBuf> {
    let mut path = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::read_link(&path) {
            Ok(next) => path = path.parent().map_or_else(|| next.clone(), |dir| dir.join(&next)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) || e.kind() == io::ErrorKind::NotFound => return Ok(path),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ELOOP))
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A file with no name in `dir` (`O_TMPFILE`), if the filesystem supports it.
fn open_unnamed(dir: &Path) -> io::Result<File> {
    let c = c_path(dir)?;
    // SAFETY: `c` is a NUL-terminated path; the descriptor returned is owned by the File.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC, 0o666) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A new file under a temporary name beside `target` (created exclusively).
fn open_named(dir: &Path, target: &Path) -> io::Result<(File, PathBuf)> {
    loop {
        let path = temporary_name(dir, target);
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `.NAME.wfs-PID-N` in `dir`: hidden, and telling whose it is if it is ever left behind.
fn temporary_name(dir: &Path, target: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.join(format!(".{name}.wfs-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)))
}

/// A directory being written in place of `target`, which does not exist yet: it is built under
/// a temporary name beside it and renamed into place when complete, removed if dropped before.
pub struct AtomicDir {
    building: PathBuf,
    target: PathBuf,
    done: bool,
}

impl AtomicDir {
    pub fn create(target: &Path) -> Result<AtomicDir, OutputError> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir)?;
        loop {
            let building = temporary_name(&dir, target);
            match std::fs::create_dir(&building) {
                Ok(()) => return Ok(AtomicDir { building, target: target.to_path_buf(), done: false }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Where to write the directory's contents meanwhile.
    pub fn path(&self) -> &Path {
        &self.building
    }

    pub fn commit(mut self) -> Result<(), OutputError> {
        // Fails (rather than replacing anything) if something took the name meanwhile.
        let from = c_path(&self.building)?;
        let to = c_path(&self.target)?;
        // SAFETY: NUL-terminated paths that live across the call.
        if unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.building);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_dropped_file_leaves_the_target_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        std::fs::write(&target, b"old").unwrap();
        let mut out = AtomicFile::create(&target).unwrap();
        out.file().write_all(b"new, half written").unwrap();
        drop(out);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_committed_file_replaces_the_target_and_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        std::fs::write(&target, b"old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut out = AtomicFile::create(&target).unwrap();
        out.file().write_all(b"new").unwrap();
        out.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_symlink_target_is_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("real", &link).unwrap();
        let mut out = AtomicFile::create(&link).unwrap();
        out.file().write_all(b"x").unwrap();
        out.commit().unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"x");
    }

    #[test]
    fn a_directory_appears_only_when_complete() {
        let parent = tempfile::tempdir().unwrap();
        let target = parent.path().join("a/b");
        let building = AtomicDir::create(&target).unwrap();
        std::fs::write(building.path().join("f"), b"1").unwrap();
        assert!(!target.exists());
        building.commit().unwrap();
        assert_eq!(std::fs::read(target.join("f")).unwrap(), b"1");
        let dropped = AtomicDir::create(&parent.path().join("c")).unwrap();
        drop(dropped);
        assert_eq!(std::fs::read_dir(parent.path().join("a")).unwrap().count(), 1);
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 1);
    }
}
