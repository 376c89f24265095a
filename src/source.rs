//! Where tensor bytes come from: the source file (checked for changes on every read), memory
//! (standard input, inflated archive members), a remote object (read in ranges), or a byte
//! range of any of them (archive members); and the directory the files beside a source lie in.

use crate::error::{OpenError, ReadError};
// Listings are part of `Dir`'s interface: readers take them from here.
pub use crate::listing::{Entry, EntryKind};
use crate::remote::{RemoteDir, RemoteObject};
use std::fs::File;
use std::os::fd::AsRawFd;
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

/// Every file this process opened as (part of) a source, by device and inode: shards,
/// checkpoint indexes and data files, external data, whenever they were opened and whether or
/// not they are still open. A command refuses to write its output over any of them.
static OPENED: std::sync::Mutex<std::collections::BTreeMap<(u64, u64), Opened>> = std::sync::Mutex::new(std::collections::BTreeMap::new());

struct Opened {
    /// How many `SourceFile`s hold it open now.
    open: usize,
    path: PathBuf,
}

fn opened() -> std::sync::MutexGuard<'static, std::collections::BTreeMap<(u64, u64), Opened>> {
    OPENED.lock().unwrap_or_else(|e| e.into_inner())
}

/// `true` if the file with this device and inode was opened as (part of) a source. A file no
/// longer open counts while its path still leads to it: once deleted, its inode number may be
/// given to an unrelated file.
pub fn is_source_file(dev: u64, ino: u64) -> bool {
    let opened = opened();
    let Some(file) = opened.get(&(dev, ino)) else { return false };
    file.open > 0 || std::fs::metadata(&file.path).is_ok_and(|m| (m.dev(), m.ino()) == (dev, ino))
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
        opened().entry((identity.dev, identity.ino)).or_insert_with(|| Opened { open: 0, path: path.to_path_buf() }).open += 1;
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

impl Drop for SourceFile {
    fn drop(&mut self) {
        if let Some(file) = opened().get_mut(&(self.identity.dev, self.identity.ino)) {
            file.open -= 1;
        }
    }
}

/// Bytes addressed by offset: a file read with `pread`, a buffer in memory, or a range of
/// another blob.
#[derive(Debug, Clone)]
pub enum Blob {
    File(Arc<SourceFile>),
    /// A `Vec` rather than `[u8]` so that standard input read into a `Vec` is never copied.
    Memory(Arc<Vec<u8>>),
    Slice(Arc<Slice>),
    Remote(Arc<RemoteObject>),
}

/// A byte range of a file on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// `len` bytes of `inner` from `offset` (a stored archive member).
#[derive(Debug)]
pub struct Slice {
    inner: Blob,
    offset: u64,
    len: u64,
}

impl Blob {
    pub fn len(&self) -> u64 {
        match self {
            Blob::File(f) => f.len(),
            Blob::Memory(m) => m.len() as u64,
            Blob::Slice(s) => s.len,
            Blob::Remote(r) => r.len(),
        }
    }

    /// The bytes at `[offset, offset + len)` as a blob of their own, read through this one.
    pub fn slice(&self, offset: u64, len: u64) -> Result<Blob, ReadError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(ReadError::OutOfBounds);
        }
        Ok(Blob::Slice(Arc::new(Slice { inner: self.clone(), offset, len })))
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
            Blob::Slice(s) => s.inner.read_at(s.offset + offset, buf),
            Blob::Remote(r) => r.read_at(offset, buf),
        }
    }

    /// Fetches the `(offset, len)` ranges of a remote blob ahead of the reads that will want
    /// them, several at once (a no-op for local bytes, which cost no round trip).
    pub fn prefetch(&self, ranges: &[(u64, u64)]) {
        match self {
            Blob::Remote(r) => r.prefetch(ranges),
            Blob::Slice(s) => s.inner.prefetch(&ranges.iter().map(|&(offset, len)| (s.offset + offset, len)).collect::<Vec<_>>()),
            Blob::File(_) | Blob::Memory(_) => {}
        }
    }

    /// The name of the file that the blob is, local or remote (not of one it is a part of).
    pub fn file_name(&self) -> Option<String> {
        match self {
            Blob::File(f) => f.path().file_name().map(|n| n.to_string_lossy().into_owned()),
            Blob::Remote(r) => r.file_name(),
            Blob::Memory(_) | Blob::Slice(_) => None,
        }
    }

    /// `true` for bytes on a remote store (read in ranges, never mapped whole).
    pub fn is_remote(&self) -> bool {
        match self {
            Blob::Remote(_) => true,
            Blob::Slice(s) => s.inner.is_remote(),
            Blob::File(_) | Blob::Memory(_) => false,
        }
    }

    /// Where `[offset, offset + len)` of this blob lies in a file on disk, if it does.
    pub fn location(&self, offset: u64, len: u64) -> Option<Location> {
        match self {
            Blob::File(f) => Some(Location { file: f.path().to_path_buf(), offset, len }),
            Blob::Memory(_) | Blob::Remote(_) => None,
            Blob::Slice(s) => s.inner.location(s.offset + offset, len),
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

    /// A `Read + Seek` cursor over the blob (for parsers such as the zip reader).
    pub fn reader(&self) -> BlobReader {
        BlobReader { blob: self.clone(), pos: 0 }
    }

    /// The blob's bytes at a stable address, for a library that parses them in place (libhdf5's
    /// file images): files are mapped read-only, memory is used as it is.
    pub fn map(&self) -> std::io::Result<Mapping> {
        match self {
            Blob::Memory(m) => Ok(Mapping { ptr: m.as_ptr(), len: m.len(), _owner: Some(m.clone()) }),
            Blob::File(f) => {
                let len = usize::try_from(f.len()).map_err(|_| std::io::Error::other("file too large to map"))?;
                if len == 0 {
                    return Ok(Mapping { ptr: std::ptr::NonNull::dangling().as_ptr(), len: 0, _owner: None });
                }
                // SAFETY: a fresh read-only private mapping of an open descriptor; unmapped on drop.
                let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, f.file.as_raw_fd(), 0) };
                if ptr == libc::MAP_FAILED {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(Mapping { ptr: ptr as *const u8, len, _owner: Some(Arc::new(Mmap { ptr, len })) })
            }
            Blob::Slice(s) => {
                let whole = s.inner.map()?;
                // SAFETY: `slice` checked `offset + len` against the inner blob's length, so the pointer stays inside the mapping.
                let ptr = unsafe { whole.ptr.add(s.offset as usize) };
                Ok(Mapping { ptr, len: s.len as usize, _owner: whole._owner })
            }
            Blob::Remote(_) => Err(std::io::Error::other("a remote file is read in ranges, never mapped whole")),
        }
    }
}

/// Where the files that belong with a source lie (checkpoint data files, shards), or a model
/// that is a directory (SavedModel, checkpoints): a local directory or a directory of a remote
/// store. Readers ask it for files by name and for its listing.
#[derive(Clone)]
pub enum Dir {
    Local(PathBuf),
    Remote(Arc<RemoteDir>),
}

impl Dir {
    /// Opens the file `name` of this directory; `name` must be a plain file name. The error
    /// says why, not which file: callers name it as their users know it.
    pub fn open(&self, name: &str) -> Result<Blob, OpenError> {
        plain_name(name)?;
        match self {
            Dir::Local(dir) => {
                let path = dir.join(name);
                let file = SourceFile::open(&path).map_err(|e| OpenError::unreadable(crate::error::io_reason(&e)))?;
                Ok(Blob::File(Arc::new(file)))
            }
            Dir::Remote(dir) => Ok(Blob::Remote(dir.open(name)?)),
        }
    }

    /// The subdirectory `name` (a plain name; whether it exists shows when it is used).
    pub fn sub(&self, name: &str) -> Result<Dir, OpenError> {
        plain_name(name)?;
        Ok(match self {
            Dir::Local(dir) => Dir::Local(dir.join(name)),
            Dir::Remote(dir) => Dir::Remote(dir.sub(name)),
        })
    }

    /// The directory `rel` (`/`-separated plain names) below this one, and the last name of
    /// `rel`: where a path below the directory points.
    fn walk<'a>(&self, rel: &'a str) -> Result<(Dir, &'a str), OpenError> {
        let (dirs, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let mut dir = self.clone();
        for part in dirs.split('/').filter(|part| !dirs.is_empty() && *part != ".") {
            dir = dir.sub(part)?;
        }
        Ok((dir, name))
    }

    /// Opens the file at `rel`, a `/`-separated path of plain names below this directory.
    pub fn open_below(&self, rel: &str) -> Result<Blob, OpenError> {
        let (dir, name) = self.walk(rel)?;
        dir.open(name)
    }

    /// `true` if `rel` (as for [`Self::open_below`]) is a file (locally: or a link to one).
    pub fn has_file(&self, rel: &str) -> bool {
        match self.walk(rel) {
            Ok((Dir::Local(dir), name)) => dir.join(name).is_file(),
            Ok((remote @ Dir::Remote(_), name)) => {
                remote.list().is_ok_and(|entries| entries.iter().any(|e| e.name == name && e.kind == EntryKind::File))
            }
            Err(_) => false,
        }
    }

    /// The directory's entries, sorted by name (remote: one listing request, kept).
    pub fn list(&self) -> Result<Vec<Entry>, OpenError> {
        let mut entries = match self {
            Dir::Local(dir) => {
                let listing = std::fs::read_dir(dir).map_err(|e| OpenError::unreadable(crate::error::io_reason(&e)))?;
                listing
                    .filter_map(|entry| {
                        let entry = entry.ok()?;
                        let kind = entry.file_type().ok()?;
                        let kind = if kind.is_symlink() {
                            EntryKind::Link
                        } else if kind.is_dir() {
                            EntryKind::Dir
                        } else if kind.is_file() {
                            EntryKind::File
                        } else {
                            return None;
                        };
                        Some(Entry { name: entry.file_name().into_string().ok()?, kind })
                    })
                    .collect()
            }
            Dir::Remote(dir) => dir.list()?,
        };
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// How the file `name` of this directory is shown to users.
    pub fn shown(&self, name: &str) -> String {
        match self {
            Dir::Local(dir) => dir.join(name).display().to_string(),
            Dir::Remote(dir) => dir.shown(name),
        }
    }
}

fn plain_name(name: &str) -> Result<(), OpenError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(OpenError::corrupt(format!("{name:?} is not a file name beside the source")));
    }
    Ok(())
}

/// See [`Blob::reader`].
pub struct BlobReader {
    blob: Blob,
    pos: u64,
}

impl std::io::Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.blob.len().saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        self.blob.read_at(self.pos, &mut buf[..n]).map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for BlobReader {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            std::io::SeekFrom::Start(n) => Some(n),
            std::io::SeekFrom::End(d) => self.blob.len().checked_add_signed(d),
            std::io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// Read-only bytes at a fixed address, valid while this value (or a clone of its owner) lives.
pub struct Mapping {
    ptr: *const u8,
    len: usize,
    _owner: Owner,
}

// SAFETY: the bytes are never written through this pointer and outlive the value.
unsafe impl Send for Mapping {}
// SAFETY: as for Send: the bytes are only read.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Whatever keeps a mapping's bytes alive (a buffer, an `mmap`), held only to be dropped last.
type Owner = Option<Arc<dyn std::any::Any + Send + Sync>>;

struct Mmap {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: a read-only mapping may be used and unmapped from any thread.
unsafe impl Send for Mmap {}
// SAFETY: as for Send.
unsafe impl Sync for Mmap {}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are the mapping mmap returned, unmapped once, here.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}
