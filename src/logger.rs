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
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!("wfs[{}]: {}: {}", std::process::id(), record.level().as_str().to_lowercase(), record.args());
        match &*self.target.lock().unwrap() {
            Target::Stderr => eprintln!("{line}"),
            Target::File(f) => {
                let _ = writeln!(f.lock().unwrap(), "{line}");
            }
            Target::Syslog => {
                let priority = match record.level() {
                    log::Level::Error => libc::LOG_ERR,
                    log::Level::Warn => libc::LOG_WARNING,
                    log::Level::Info => libc::LOG_INFO,
                    _ => libc::LOG_DEBUG,
                };
                if let Ok(c) = std::ffi::CString::new(line.replace('\0', " ")) {
                    unsafe { libc::syslog(priority, c"%s".as_ptr(), c.as_ptr()) };
                }
            }
        }
    }

    fn flush(&self) {}
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
            unsafe { libc::openlog(c"wfs".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
            Target::Syslog
        }
    };
    *LOGGER.target.lock().unwrap() = target;
    Ok(())
}
