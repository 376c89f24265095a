//! The thin adapter between the kernel (through fuser) and `fs::Fs`.

use crate::fs::{Attr, Fs, Kind};
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant, SystemTime};

/// The source never changes while mounted, so the kernel may cache names and attributes for as
/// long as it likes.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Owner and times every node reports.
#[derive(Clone, Copy, Debug)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    pub time: SystemTime,
}

/// When the kernel last asked anything, and how many files and directories are open: what
/// `--idle-timeout` needs to know.
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    open: AtomicUsize,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity { start: Instant::now(), last_ms: AtomicU64::new(0), open: AtomicUsize::new(0) })
    }

    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long nothing has been asked while nothing is open (zero while something is open).
    pub fn idle_for(&self) -> Duration {
        if self.open.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

pub struct WfsFuse {
    fs: &'static Fs,
    owner: Ownership,
    /// Told once the kernel handshake is done, i.e. when the mount is usable.
    ready: Option<Sender<()>>,
    activity: Arc<Activity>,
}

impl WfsFuse {
    pub fn new(fs: &'static Fs, owner: Ownership, ready: Option<Sender<()>>, activity: Arc<Activity>) -> Self {
        WfsFuse { fs, owner, ready, activity }
    }

    /// Marks a request and counts an open handle (`delta` +1 on open, -1 on release).
    fn note(&self, delta: isize) {
        self.activity.touch();
        match delta {
            1 => {
                self.activity.open.fetch_add(1, Ordering::Relaxed);
            }
            -1 => {
                self.activity.open.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    fn file_attr(&self, a: &Attr) -> FileAttr {
        FileAttr {
            ino: INodeNo(a.ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: self.owner.time,
            mtime: self.owner.time,
            ctime: self.owner.time,
            crtime: self.owner.time,
            kind: file_type(a.kind),
            perm: a.perm,
            nlink: a.nlink,
            uid: self.owner.uid,
            gid: self.owner.gid,
            rdev: 0,
            blksize: 1 << 20,
            flags: 0,
        }
    }
}

/// The xattr protocol: size 0 asks for the length; a buffer too small gets ERANGE.
fn reply_sized(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(value);
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
    }
}

impl Filesystem for WfsFuse {
    /// Kernel settings, each chosen for a read-only tree of large immutable files:
    /// - max_readahead as large as the kernel allows: sequential tensor reads dominate;
    /// - FUSE_MAX_PAGES (asked by fuser when offered): reads of up to 1 MiB per request;
    /// - FUSE_ASYNC_READ (fuser's default): several reads of one file in flight at once;
    /// - FUSE_PARALLEL_DIROPS: lookups and readdirs of one directory run concurrently;
    /// - FUSE_CACHE_SYMLINKS: `layers/<i>` targets never change;
    /// - FUSE_DO_READDIRPLUS (+ _AUTO): a directory listing carries every entry's attributes, so
    ///   walking the tree (`ls -R`, `cp -r`, `find`) needs no LOOKUP round trip per entry;
    /// - no FUSE_AUTO_INVAL_DATA / WRITEBACK_CACHE: nothing is ever written or invalidated.
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // The largest readahead the kernel allows: a sequential read of a large tensor then
        // arrives as few large requests (the kernel answers with its own maximum if lower).
        if let Err(max) = config.set_max_readahead(u32::MAX) {
            let _ = config.set_max_readahead(max);
        }
        let flags = [
            // Lookups and readdirs of one directory may run at once: the tree never changes.
            InitFlags::FUSE_PARALLEL_DIROPS,
            // Link targets never change, so the kernel may keep them.
            InitFlags::FUSE_CACHE_SYMLINKS,
            // `ls -l` and `find` get every entry's attributes with the listing instead of one
            // lookup per entry; the kernel decides per directory when that pays (AUTO).
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
        ];
        // Capabilities an older kernel lacks are refused one by one and simply not used.
        for flag in flags {
            let _ = config.add_capabilities(flag);
        }
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.note(0);
        match self.fs.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &self.file_attr(&attr), Generation(0)),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.note(0);
        match self.fs.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &self.file_attr(&attr)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.fs.attr(ino.0) {
            // Contents never change while mounted: keep the page cache across opens.
            Some(a) if a.kind == Kind::File => {
                self.note(1);
                reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Some(_) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.note(0);
        // One buffer per serving thread, reused: no allocation (and no page faults) per read.
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with_borrow_mut(|buf| match self.fs.read_into(ino.0, offset, size, buf) {
            Ok(len) => reply.data(&buf[..len]),
            Err(e) => reply.error(Errno::from_i32(e)),
        })
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.attr(ino.0) {
            Some(a) if a.kind == Kind::Dir => {
                self.note(1);
                reply.opened(FileHandle(0), FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE)
            }
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// Every `close()` sends one; nothing is ever written, so there is nothing to flush.
    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    /// `cp` and others ask where data and holes are (SEEK_DATA, SEEK_HOLE; the kernel answers
    /// the other whences itself): a file of the tree is data from start to end.
    fn lseek(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let Some(size) = self.fs.attr(ino.0).map(|a| a.size as i64) else { return reply.error(Errno::ENOENT) };
        match whence {
            _ if offset < 0 => reply.error(Errno::EINVAL),
            _ if offset >= size && matches!(whence, libc::SEEK_DATA | libc::SEEK_HOLE) => reply.error(Errno::from_i32(libc::ENXIO)),
            libc::SEEK_DATA => reply.offset(offset),
            libc::SEEK_HOLE => reply.offset(size),
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn release(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _flags: OpenFlags, _lock_owner: Option<LockOwner>, _flush: bool, reply: ReplyEmpty) {
        self.note(-1);
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.note(-1);
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.note(0);
        match self.fs.readdir(ino.0, offset) {
            Ok(entries) => {
                for (i, (child, kind, name)) in entries.enumerate() {
                    if reply.add(INodeNo(child), offset + i as u64 + 1, file_type(kind), name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        match self.fs.readdir(ino.0, offset) {
            Ok(entries) => {
                for (i, (child, _, name)) in entries.enumerate() {
                    let Some(attr) = self.fs.attr(child) else { continue };
                    if reply.add(INodeNo(child), offset + i as u64 + 1, name, &TTL, &self.file_attr(&attr), Generation(0)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.fs.tree.len() as u64;
        reply.statfs(0, 0, 0, files, 0, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if self.fs.attr(ino.0).is_none() {
            return reply.error(Errno::ENOENT);
        }
        if mask.contains(AccessFlags::W_OK) { reply.error(Errno::EROFS) } else { reply.ok() }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(ino.0, name) {
            Ok(value) => reply_sized(reply, size, &value),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let names: Vec<u8> = self.fs.xattrs(ino.0).into_iter().flat_map(|(n, _)| n.into_bytes().into_iter().chain([0])).collect();
        reply_sized(reply, size, &names);
    }

    fn setxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _value: &[u8], _flags: i32, _position: u32, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
}
