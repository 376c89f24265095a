//! The mount's lifecycle: mountpoint checks, daemonizing once the mount is live, clean unmount
//! on SIGTERM/SIGINT, and `wfs umount`.

use crate::error::MountError;
use crate::fs::Fs;
use crate::fuse::{Activity, Ownership, WfsFuse};
use crate::names::fnv1a;
use fuser::{Config, MountOption, Session, SessionACL};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How the filesystem is mounted.
pub struct MountSettings {
    pub mountpoint: PathBuf,
    pub source_name: String,
    pub foreground: bool,
    pub threads: usize,
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
    /// Mount on a directory that holds files (`-o nonempty`).
    pub allow_nonempty: bool,
    pub owner: Ownership,
    /// Unmount by itself after this long with no request and nothing open.
    pub idle_timeout: Option<Duration>,
}

/// A directory ready to be mounted on, with the directories `prepare_mountpoint` created for it
/// (deepest first), which a failed mount removes again.
pub struct Mountpoint {
    pub path: PathBuf,
    created: Vec<PathBuf>,
}

impl Mountpoint {
    /// Removes the directories this mount created, if they are still empty.
    pub fn remove_created(&self) {
        remove_dirs(&self.created);
    }
}

/// Removes `dirs` in order (deepest first), stopping at the first that is not empty.
fn remove_dirs(dirs: &[PathBuf]) {
    for dir in dirs {
        if std::fs::remove_dir(dir).is_err() {
            break;
        }
    }
}

/// Makes sure `path` can be mounted on: creates it (and its missing parents) if missing, clears
/// a stale wfs mount left by a killed daemon, and refuses a live mount, a non-directory, and a
/// non-empty directory (whose files the mount would hide) unless `allow_nonempty`.
pub fn prepare_mountpoint(path: &Path, allow_nonempty: bool) -> Result<Mountpoint, MountError> {
    let shown = path.display();
    let mut created = Vec::new();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(MountError::Mountpoint(format!("{shown}: not a directory"))),
        Err(e) if is_dead_mount(&e) => {
            let abs = absolute(path);
            if mount_type(&abs).is_some_and(|t| t == "fuse.wfs") {
                log::warn!("{shown}: clearing a stale wfs mount (its daemon is gone)");
                detach(&abs);
            } else {
                return Err(MountError::Mountpoint(format!(
                    "{shown}: stale FUSE mount (its daemon is gone); clear it with `wfs umount {shown}` or `fusermount3 -u {shown}`"
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            created = create_missing_dirs(path)
                .map_err(|e| MountError::Mountpoint(format!("{shown}: cannot create: {}", crate::error::io_reason(&e))))?;
        }
        Err(e) => return Err(MountError::Mountpoint(format!("{shown}: {}", crate::error::io_reason(&e)))),
    }
    let fail = |message: String| {
        remove_dirs(&created);
        Err(MountError::Mountpoint(message))
    };
    let abs = match std::fs::canonicalize(path) {
        Ok(abs) => abs,
        Err(e) => return fail(format!("{shown}: {}", crate::error::io_reason(&e))),
    };
    if mount_type(&abs).is_some_and(|t| t.starts_with("fuse")) {
        return fail(format!("{shown}: already a FUSE mount; unmount it first (`wfs umount {shown}`)"));
    }
    if !allow_nonempty && std::fs::read_dir(&abs).is_ok_and(|mut entries| entries.next().is_some()) {
        return fail(format!("{shown}: not empty (the mount would hide its files); use an empty directory, or -o nonempty"));
    }
    Ok(Mountpoint { path: abs, created })
}

/// Creates `path` and whichever of its parents are missing; returns those it created, deepest
/// first. Undoes its own work if it fails midway.
fn create_missing_dirs(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut at = Some(path);
    while let Some(dir) = at.filter(|d| !d.as_os_str().is_empty() && std::fs::symlink_metadata(d).is_err()) {
        missing.push(dir.to_path_buf());
        at = dir.parent();
    }
    for (made, dir) in missing.iter().rev().enumerate() {
        if let Err(e) = std::fs::create_dir(dir) {
            remove_dirs(&missing[missing.len() - made..]);
            return Err(e);
        }
    }
    Ok(missing)
}

/// What `stat` says of a FUSE mount whose daemon is gone (ECONNABORTED on newer kernels).
fn is_dead_mount(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED))
}

/// The filesystem type mounted exactly at `path`, from /proc/self/mountinfo.
pub fn mount_type(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_str()?;
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let mount_point = unescape_mountinfo(fields.get(4)?);
        let dash = fields.iter().position(|f| *f == "-")?;
        (mount_point == want).then(|| fields.get(dash + 1).map(|s| s.to_string()))?
    })
}

/// A live wfs mount, as `wfs list` shows it.
pub struct LiveMount {
    /// The source as the mount table holds it (a URL without its credentials).
    pub source: String,
    pub mountpoint: PathBuf,
    /// The daemon, when its pid file is ours to read and it still runs.
    pub pid: Option<i32>,
}

/// The wfs mounts (type `fuse.wfs`) of this mount namespace, from /proc/self/mountinfo.
pub fn live_mounts() -> Vec<LiveMount> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            if *fields.get(dash + 1)? != "fuse.wfs" {
                return None;
            }
            let mountpoint = PathBuf::from(unescape_mountinfo(fields.get(4)?));
            let pid = std::fs::read_to_string(pid_file(&mountpoint))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .filter(|pid| Path::new(&format!("/proc/{pid}")).exists());
            Some(LiveMount { source: unescape_mountinfo(fields.get(dash + 2)?), mountpoint, pid })
        })
        .collect()
}

fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An absolute path without resolving the last component (which may be a dead mount).
fn absolute(path: &Path) -> PathBuf {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let parent = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
    match path.file_name() {
        Some(name) => parent.join(name),
        None => parent,
    }
}

fn detach(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) == 0 }
}

/// Where the daemon of `mountpoint` records its pid, so `wfs umount` can wait for it.
fn pid_file(mountpoint: &Path) -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let dir = if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/run/wfs")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR")
            .map(|d| PathBuf::from(d).join("wfs"))
            // SAFETY: geteuid has no preconditions and cannot fail.
            .unwrap_or_else(|| std::env::temp_dir().join(format!("wfs-{}", unsafe { libc::geteuid() })))
    };
    dir.join(format!("{:016x}.pid", fnv1a(mountpoint.as_os_str().as_bytes())))
}

/// Mounts `fs` and serves it until unmounted. Without `foreground`, forks first: the parent
/// returns once the mount is live (or with the child's error); the child serves.
pub fn mount(fs: &'static Fs, settings: MountSettings, on_daemonized: impl FnOnce()) -> Result<(), MountError> {
    if settings.foreground {
        return serve(fs, &settings, None::<(&mut std::fs::File, fn())>);
    }
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(MountError::Other("cannot create a pipe".into()));
    }
    // SAFETY: pipe2 succeeded: both descriptors are fresh and owned by nobody else.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The process is single-threaded here (threads start after the fork), so forking is safe.
    // SAFETY: single-threaded here (see above); the child only continues in Rust code it owns.
    match unsafe { libc::fork() } {
        -1 => Err(MountError::Other("cannot fork the daemon".into())),
        0 => {
            drop(read_end);
            // SAFETY: setsid has no memory-safety preconditions.
            unsafe { libc::setsid() };
            let mut status = std::fs::File::from(write_end);
            let result = serve(fs, &settings, Some((&mut status, on_daemonized)));
            if let Err(e) = &result {
                // Reaches the parent if the mount never became live; logged either way.
                let code = if matches!(e, MountError::Mountpoint(_)) { b'M' } else { b'E' };
                let _ = status.write_all(&[code]);
                let _ = status.write_all(e.to_string().as_bytes());
                log::error!("{e}");
            }
            std::process::exit(if result.is_ok() { 0 } else { 1 });
        }
        _child => {
            drop(write_end);
            // The child keeps its end open while serving: read the status byte, then (on
            // failure, when the child has exited) the message.
            let mut pipe = std::fs::File::from(read_end);
            let mut reply = vec![0u8; 1];
            if pipe.read_exact(&mut reply).is_err() {
                reply.clear();
            } else if reply[0] != b'R' {
                let _ = pipe.read_to_end(&mut reply);
            }
            match reply.split_first() {
                Some((b'R', _)) => Ok(()),
                Some((b'M', msg)) => Err(MountError::Mountpoint(String::from_utf8_lossy(msg).into())),
                Some((_, msg)) => Err(MountError::Other(String::from_utf8_lossy(msg).into())),
                None => Err(MountError::Other("the mount daemon exited before the mount was ready".into())),
            }
        }
    }
}

type Status<'a, F> = Option<(&'a mut std::fs::File, F)>;

fn serve(fs: &'static Fs, settings: &MountSettings, status: Status<'_, impl FnOnce()>) -> Result<(), MountError> {
    // Decoded chunks (long-lived, in the cache) and transient buffers come from several threads.
    // glibc raises its mmap threshold each time a large block is freed, after which chunks land
    // in per-thread arenas whose freed holes stay resident: peak RSS reached cache + 135 MiB
    // (bench/, figure 5). A fixed threshold keeps every block >= 128 KiB in its own mapping,
    // returned to the system when freed, so memory follows `--cache-size` (cache + ~60 MiB),
    // at the price of page faults when a chunk is decoded (~10% more CPU for gzip chunks).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    // SIGTERM/SIGINT/SIGHUP are taken by a thread of our own (fuser installs no handlers):
    // block them here so every thread started below inherits the mask.
    // SAFETY: a zeroed sigset_t is valid to pass to sigemptyset, which initialises it; the calls take pointers to locals.
    let signals = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let mut options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::FSName(settings.source_name.clone()),
        // Passed to the kernel (not only to fusermount) so that the type reads `fuse.wfs`.
        MountOption::CUSTOM("subtype=wfs".into()),
    ];
    if settings.default_permissions {
        options.push(MountOption::DefaultPermissions);
    }
    let mut config = Config::default();
    config.mount_options = options;
    config.acl = if settings.allow_other {
        SessionACL::All
    } else if settings.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(settings.threads.max(1));
    config.clone_fd = true;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let activity = Activity::new();
    let handler = WfsFuse::new(fs, settings.owner, Some(ready_tx), activity.clone());
    let mut session = Session::new(handler, &settings.mountpoint, &config).map_err(|e| {
        MountError::Mountpoint(format!("{}: cannot mount: {}", settings.mountpoint.display(), crate::error::io_reason(&e)))
    })?;
    if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
        return Err(MountError::Other("the kernel did not complete the FUSE handshake".into()));
    }
    let pid_path = pid_file(&settings.mountpoint);
    if let Some(dir) = pid_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(&pid_path, format!("{}\n", std::process::id()));
    // The log moves to its file (or syslog) first, so that "mounted" is its first line.
    let status = status.map(|(status, on_daemonized)| {
        on_daemonized();
        status
    });
    log::info!("mounted {} on {}", settings.source_name, settings.mountpoint.display());
    if let Some(status) = status {
        let _ = status.write_all(b"R");
    }
    if let Some(timeout) = settings.idle_timeout {
        let mut unmounter = session.unmount_callable();
        let mountpoint = settings.mountpoint.clone();
        std::thread::spawn(move || {
            let tick = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
            while activity.idle_for() < timeout {
                std::thread::sleep(tick);
            }
            log::info!("idle for {timeout:?}: unmounting {}", mountpoint.display());
            if unmounter.unmount().is_err() {
                detach(&mountpoint);
            }
        });
    }
    let mut unmounter = session.unmount_callable();
    let mountpoint = settings.mountpoint.clone();
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: `signals` is an initialised set and `sig` a valid place for the answer.
        unsafe { libc::sigwait(&signals, &mut sig) };
        log::info!("signal {sig}: unmounting {}", mountpoint.display());
        if unmounter.unmount().is_err() {
            // Busy: detach so that the session ends now and the kernel finishes later.
            detach(&mountpoint);
        }
    });
    let result = session.run();
    let _ = std::fs::remove_file(&pid_path);
    log::info!("unmounted {}", settings.mountpoint.display());
    result.map_err(|e| MountError::Other(format!("FUSE session failed: {e}")))
}

/// Unmounts `path` and waits for its daemon to exit. A busy mount is detached lazily (it goes
/// away when its last user lets go), with a message saying so.
pub fn umount(path: &Path) -> Result<(), MountError> {
    let shown = path.display();
    let abs = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if is_dead_mount(&e) => absolute(path),
        Err(e) => return Err(MountError::Mountpoint(format!("{shown}: {}", crate::error::io_reason(&e)))),
    };
    match mount_type(&abs) {
        Some(t) if t.starts_with("fuse") => {}
        _ => return Err(MountError::Mountpoint(format!("{shown}: not a wfs mount"))),
    }
    let pid_path = pid_file(&abs);
    let pid: Option<i32> = std::fs::read_to_string(&pid_path).ok().and_then(|s| s.trim().parse().ok());
    let c = CString::new(abs.as_os_str().as_bytes()).map_err(|_| MountError::Mountpoint(format!("{shown}: bad path")))?;
    let mut lazy = false;
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EBUSY) => {
                if !detach(&abs) {
                    return Err(MountError::Mountpoint(format!("{shown}: busy and cannot be detached")));
                }
                eprintln!("wfs: {shown}: busy; detached it lazily: it disappears when the last open file is closed");
                lazy = true;
            }
            Some(libc::EPERM) => {
                let status = std::process::Command::new("fusermount3").arg("-u").arg(&abs).status();
                if !status.is_ok_and(|s| s.success()) {
                    return Err(MountError::Mountpoint(format!("{shown}: not permitted to unmount")));
                }
            }
            _ => return Err(MountError::Mountpoint(format!("{shown}: cannot unmount: {}", crate::error::io_reason(&err)))),
        }
    }
    if let (Some(pid), false) = (pid, lazy) {
        let deadline = Instant::now() + Duration::from_secs(10);
        // SAFETY: kill with signal 0 only asks whether the process exists.
        while unsafe { libc::kill(pid, 0) } == 0 && !is_zombie(pid) {
            if Instant::now() > deadline {
                return Err(MountError::Other(format!("{shown}: unmounted, but daemon {pid} has not exited after 10 s")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(&pid_path);
    }
    Ok(())
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}
