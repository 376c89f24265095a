//! Logging through `log`: to stderr in the foreground, to a file or syslog once daemonized.

use std::io::Write;
use std::sync::Mutex;

enum Target {
    Stderr,
    File(Mutex<std::fs::File>),
    Syslog,
}

struct Logger {
    target: Mutex<Target>,
}

static LOGGER: Logger = Logger { target: Mutex::new(Target::Stderr) };

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        // fuser's own notes (requests it answers by default, its unmount steps) say nothing a
        // user can act on: they show only with -vv.
        let level = match record.level() {
            log::Level::Warn | log::Level::Info if record.target().starts_with("fuser") => log::Level::Debug,
            // rustls reports each failed handshake; the request's own error says it once.
            _ if record.target().starts_with("rustls") => log::Level::Debug,
            level => level,
        };
        if level > log::max_level() {
            return;
        }
        // One line per event: a message formatted across lines (pretty `Debug`) is joined.
        let message = record.args().to_string();
        let message = if message.contains('\n') { message.lines().map(str::trim).collect::<Vec<_>>().join(" ") } else { message };
        let line = format!("wfs[{}]: {}: {message}", std::process::id(), level.as_str().to_lowercase());
        match &*self.target.lock().unwrap() {
            // Under systemd, stderr goes to the journal: a `<N>` prefix (sd-daemon(3)) gives each
            // line its priority, and the journal adds the name and pid itself.
            Target::Stderr if std::env::var_os("JOURNAL_STREAM").is_some() => {
                eprintln!("<{}>{}: {message}", priority(level), level.as_str().to_lowercase())
            }
            Target::Stderr => eprintln!("{line}"),
            Target::File(f) => {
                let _ = writeln!(f.lock().unwrap(), "{line}");
            }
            Target::Syslog => {
                if let Ok(c) = std::ffi::CString::new(line.replace('\0', " ")) {
                    // SAFETY: both strings are NUL-terminated, and the format takes exactly the one string argument.
                    unsafe { libc::syslog(priority(level), c"%s".as_ptr(), c.as_ptr()) };
                }
            }
        }
    }

    fn flush(&self) {}
}

fn priority(level: log::Level) -> libc::c_int {
    match level {
        log::Level::Error => libc::LOG_ERR,
        log::Level::Warn => libc::LOG_WARNING,
        log::Level::Info => libc::LOG_INFO,
        _ => libc::LOG_DEBUG,
    }
}

/// Installs the logger writing to stderr at `level`.
pub fn init(level: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Switches to `file` (appended), or to syslog when `None`; used when the daemon detaches.
pub fn redirect(file: Option<&std::path::Path>) -> std::io::Result<()> {
    let target = match file {
        Some(path) => Target::File(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?)),
        None => {
            // SAFETY: the identity is a static NUL-terminated string, as openlog keeps the pointer.
            unsafe { libc::openlog(c"wfs".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
            Target::Syslog
        }
    };
    *LOGGER.target.lock().unwrap() = target;
    Ok(())
}
