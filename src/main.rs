//! The `wfs` command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use wfs::cache::ChunkCache;
use wfs::daemon::{self, MountError, MountSettings};
use wfs::error::OpenError;
use wfs::formats::{self, ReadOptions};
use wfs::fs::Fs;
use wfs::fuse::Ownership;
use wfs::tree::Tree;

/// Exit codes, one per failure class (documented in the README).
mod exit {
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const SOURCE_UNREADABLE: u8 = 3;
    pub const BAD_FORMAT: u8 = 4;
    pub const MOUNTPOINT: u8 = 5;
}

#[derive(Parser)]
#[command(name = "wfs", version, about = "Mount machine-learning model files as a read-only filesystem")]
struct Cli {
    /// More log output (repeat for more)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors in the log
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount SOURCE (a model file, directory or checkpoint prefix) on MOUNTPOINT
    Mount {
        source: PathBuf,
        mountpoint: PathBuf,
        /// Stay in the foreground (logs go to stderr)
        #[arg(short, long)]
        foreground: bool,
        /// Memory for decoded chunks, e.g. 256M, 2G
        #[arg(long, default_value = "256M", value_parser = parse_size)]
        cache_size: u64,
        /// Threads serving kernel requests
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: u16,
        /// Mount options: allow_other, allow_root, default_permissions, uid=N, gid=N, ro
        #[arg(short = 'o', value_delimiter = ',')]
        options: Vec<String>,
        /// Log file for the daemon (default: syslog)
        #[arg(long)]
        log_file: Option<PathBuf>,
    },
    /// Unmount MOUNTPOINT and wait for its daemon to exit
    Umount { mountpoint: PathBuf },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = digits.parse().map_err(|_| format!("invalid size '{s}' (use e.g. 512M or 2G)"))?;
    let shift = match unit.to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("invalid size unit in '{s}' (use K, M, G or T)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("size '{s}' is too large"))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, like every other failure: clap's first line without its "error: ".
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!("wfs: {} (see `wfs --help`)", first.trim_start_matches("error: "));
            return ExitCode::from(exit::USAGE);
        }
    };
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) => log::LevelFilter::Warn,
        (false, 1) => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    wfs::logger::init(level);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("wfs: {message}");
            ExitCode::from(code)
        }
    }
}

type Failure = (u8, String);

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Mount { source, mountpoint, foreground, cache_size, threads, options, log_file } => {
            let mut settings = MountSettings {
                mountpoint: mountpoint.clone(),
                source_name: source.display().to_string(),
                foreground,
                threads: threads as usize,
                allow_other: false,
                allow_root: false,
                default_permissions: false,
                owner: Ownership { uid: unsafe { libc::geteuid() }, gid: unsafe { libc::getegid() }, time: std::time::SystemTime::now() },
            };
            apply_options(&mut settings, &options).map_err(|m| (exit::USAGE, m))?;
            settings.mountpoint = daemon::prepare_mountpoint(&mountpoint).map_err(mount_failure)?;
            let shown = source.display().to_string();
            let source = std::fs::canonicalize(&source)
                .map_err(|e| (exit::SOURCE_UNREADABLE, format!("{shown}: {}", formats::io_reason(&e))))?;
            if let Ok(meta) = std::fs::metadata(&source) {
                if let Ok(t) = meta.modified() {
                    settings.owner.time = t;
                }
            }
            let cache = Arc::new(ChunkCache::new(cache_size));
            let model = formats::open_path(&source, &ReadOptions { cache: cache.clone() }).map_err(|e| open_failure(&shown, e))?;
            let tree = Tree::build(model, &source.display().to_string());
            daemon::mount(Fs::new(tree).with_cache(cache), settings, || detach_stdio(log_file.as_deref())).map_err(mount_failure)
        }
        Command::Umount { mountpoint } => daemon::umount(&mountpoint).map_err(mount_failure),
    }
}

fn apply_options(settings: &mut MountSettings, options: &[String]) -> Result<(), String> {
    for opt in options.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        let parse_id = |v: &str| v.parse::<u32>().map_err(|_| format!("invalid mount option '{opt}'"));
        match opt.split_once('=') {
            Some(("uid", v)) => settings.owner.uid = parse_id(v)?,
            Some(("gid", v)) => settings.owner.gid = parse_id(v)?,
            None if opt == "allow_other" => settings.allow_other = true,
            None if opt == "allow_root" => settings.allow_root = true,
            None if opt == "default_permissions" => settings.default_permissions = true,
            None if matches!(opt, "ro" | "nodev" | "nosuid" | "noexec" | "noatime") => {}
            None if opt == "rw" => return Err("wfs mounts are read-only: option 'rw' is not allowed".into()),
            _ => return Err(format!("unknown mount option '{opt}'")),
        }
    }
    Ok(())
}

fn open_failure(source: &str, e: OpenError) -> Failure {
    let code = match e {
        OpenError::Unreadable(_) => exit::SOURCE_UNREADABLE,
        OpenError::UnknownFormat(_) | OpenError::Corrupt(_) => exit::BAD_FORMAT,
    };
    (code, format!("{source}: {e}"))
}

fn mount_failure(e: MountError) -> Failure {
    match e {
        MountError::Mountpoint(m) => (exit::MOUNTPOINT, m),
        MountError::Other(m) => (exit::OTHER, m),
    }
}

/// Once the daemon runs on its own: logs go to the log file or syslog, stdio to /dev/null.
fn detach_stdio(log_file: Option<&std::path::Path>) {
    if let Err(e) = wfs::logger::redirect(log_file) {
        log::error!("cannot open log file: {e}");
    }
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            libc::close(null);
        }
        libc::chdir(c"/".as_ptr());
    }
}
