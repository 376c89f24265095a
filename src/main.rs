//! The `wfs` command line: `mount`/`umount`, the tools that read the tree without mounting
//! (`ls`, `cat`, `export`, `info`), and the `mount.fuse.wfs` form used by mount(8) and fstab.

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use wfs::cache::ChunkCache;
use wfs::daemon::{self, MountSettings};
use wfs::error::{MountError, OpenError};
use wfs::formats::{self, ReadOptions, Source};
use wfs::fs::Fs;
use wfs::fuse::Ownership;
use wfs::output::{self, AtomicFile, OutputError};
use wfs::tools;
use wfs::tree::{SAFETENSORS_FILE, Tree, TreeOptions};

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

/// Where the model comes from, shared by every command that reads one.
#[derive(Args)]
struct SourceArgs {
    /// A model file, a directory (SavedModel, checkpoints), a checkpoint prefix, - for standard
    /// input, or a URL: https://..., s3://BUCKET/KEY, hf://ORG/REPO[@REVISION]/FILE
    source: PathBuf,
    /// Memory for decoded chunks of compressed tensors, e.g. 256M, 2G
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    cache_size: u64,
    /// Most bytes read from standard input (SOURCE -), held in memory while in use
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    stdin_limit: u64,
    /// Seconds a request to a remote source may take before it is retried (3 retries)
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
}

impl SourceArgs {
    /// The source as a URL, if it is one.
    fn url(&self) -> Option<&str> {
        self.source.to_str().filter(|s| wfs::remote::is_url(s))
    }

    /// The source as it may be shown (a URL without its credentials).
    fn shown(&self) -> String {
        match self.url() {
            Some(url) => wfs::remote::redact(url),
            None => self.source.display().to_string(),
        }
    }
}

/// What the tree offers beyond the model's own files.
#[derive(Args)]
struct TreeArgs {
    /// Leave model.safetensors out of the tree (also `-o noexport`)
    #[arg(long)]
    no_export: bool,
}

impl TreeArgs {
    fn options(&self) -> TreeOptions {
        TreeOptions { safetensors: !self.no_export }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Mount SOURCE on MOUNTPOINT (created if missing); returns once the mount is live
    Mount {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        tree: TreeArgs,
        mountpoint: PathBuf,
        /// Stay in the foreground (logs go to stderr)
        #[arg(short, long)]
        foreground: bool,
        /// Threads serving kernel requests
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: u16,
        /// Mount options: allow_other, allow_root, default_permissions, uid=N, gid=N, ro, noexport
        #[arg(short = 'o', value_delimiter = ',')]
        options: Vec<String>,
        /// Log file for the daemon (default: syslog, or the journal under systemd)
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// Unmount after this many seconds with no access and no open file
        #[arg(long, value_name = "SECONDS")]
        idle_timeout: Option<u64>,
    },
    /// Unmount MOUNTPOINT and wait for its daemon to exit
    Umount { mountpoint: PathBuf },
    /// List a directory of the tree (default: the top), without mounting
    Ls {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        tree: TreeArgs,
        /// A path inside the tree
        #[arg(default_value = "")]
        path: String,
        /// List subdirectories too
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Show sizes
        #[arg(short, long)]
        long: bool,
        /// Print the tensor table (tensors.tsv) instead
        #[arg(long)]
        tensors: bool,
    },
    /// Write one file of the tree to standard output, without mounting
    Cat {
        #[command(flatten)]
        source: SourceArgs,
        /// A file path inside the tree, e.g. layers/0/bias.npy
        path: String,
    },
    /// Write the tree (or a part of it) out as real files into DIR, without mounting
    Export {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        tree: TreeArgs,
        dir: PathBuf,
        /// Only this path of the tree
        #[arg(long, default_value = "")]
        path: String,
        /// Write into DIR although it holds files (same names are replaced; never a source file)
        #[arg(long)]
        force: bool,
    },
    /// Write every tensor as one safetensors file (the mount's model.safetensors), without mounting
    Convert {
        #[command(flatten)]
        source: SourceArgs,
        /// The file to write, or - for standard output
        out: PathBuf,
    },
    /// Print info.json, without mounting
    Info {
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Print a shell completion script
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff)
    Man,
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
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let args = mount_helper_args(&args).unwrap_or(args);
    let cli = match Cli::try_parse_from(args) {
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
        Err(e) => {
            // `{:#}` joins the context chain into one line: "<what failed>: <why>".
            eprintln!("wfs: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// mount(8) runs `mount.fuse.wfs SOURCE MOUNTPOINT -o OPTIONS` (directly, or through
/// mount.fuse3 as `wfs SOURCE MOUNTPOINT -o OPTIONS`): turn that into `wfs mount ...`,
/// dropping the options that only mean something to mount(8) and fstab.
fn mount_helper_args(args: &[std::ffi::OsString]) -> Option<Vec<std::ffi::OsString>> {
    let invoked_as_helper = args.first().and_then(|a| std::path::Path::new(a).file_name()).is_some_and(|n| n.to_str().is_some_and(|n| n.starts_with("mount.")));
    let looks_like_mount_form = args.len() >= 3 && args.get(1).is_some_and(|a| {
        let a = a.to_string_lossy();
        !a.starts_with('-') && Cli::command().find_subcommand(&*a).is_none()
    });
    if !invoked_as_helper && !looks_like_mount_form {
        return None;
    }
    let mut out = vec!["wfs".into(), "mount".into(), args[1].clone(), args[2].clone()];
    let mut rest = args[3..].iter();
    while let Some(arg) = rest.next() {
        if arg == "-o" {
            let Some(options) = rest.next() else { break };
            let kept: Vec<String> = options
                .to_string_lossy()
                .split(',')
                .filter(|o| !matches!(*o, "rw" | "defaults" | "auto" | "noauto" | "user" | "users" | "nouser" | "nofail" | "_netdev" | "dev" | "suid" | "exec" | "async" | "") && !o.starts_with("x-") && !o.starts_with("comment="))
                .map(str::to_string)
                .collect();
            if !kept.is_empty() {
                out.push("-o".into());
                out.push(kept.join(",").into());
            }
        } else if arg == "-f" {
            out.push(arg.clone());
        }
        // -n (no mtab), -s (sloppy), -v (mount's verbose) have no meaning here.
    }
    Some(out)
}

/// A usage mistake found after argument parsing (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

/// The exit code of a failure's class, from the library error at its root.
fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Usage>().is_some() {
        return exit::USAGE;
    }
    if let Some(open) = e.downcast_ref::<OpenError>() {
        return match open {
            OpenError::Unreadable(_) => exit::SOURCE_UNREADABLE,
            OpenError::UnknownFormat(_) | OpenError::Corrupt(_) => exit::BAD_FORMAT,
        };
    }
    match e.downcast_ref::<MountError>() {
        Some(MountError::Mountpoint(_)) => exit::MOUNTPOINT,
        _ => exit::OTHER,
    }
}

/// Opens SOURCE and builds its filesystem; also returns the source's modification time. The
/// filesystem lives until the process exits and is deliberately never freed: freeing a large
/// model's millions of small allocations took as long as building them (half of `wfs info`
/// on 200,000 tensors), and would delay every exit and unmount.
fn open_fs(args: &SourceArgs, options: TreeOptions) -> Result<(&'static Fs, Option<SystemTime>)> {
    let cache = Arc::new(ChunkCache::new(args.cache_size));
    let read_options = ReadOptions { cache: cache.clone() };
    let (model, shown, modified) = if args.source.as_os_str() == "-" {
        let bytes = read_stdin(args.stdin_limit).context("standard input")?;
        let model = formats::open(Source::Bytes(bytes), &read_options).context("standard input")?;
        (model, "-".to_string(), None)
    } else if let Some(url) = args.url() {
        let remote = wfs::remote::RemoteOptions { timeout: Duration::from_secs(args.timeout), retries: 3 };
        let shown = args.shown();
        let model = formats::open(Source::Url(url, &remote), &read_options).with_context(|| shown.clone())?;
        (model, shown, None)
    } else {
        let shown = args.source.display().to_string();
        let source = formats::canonical_source(&args.source)
            .map_err(|e| OpenError::unreadable(wfs::error::io_reason(&e)))
            .with_context(|| shown.clone())?;
        let modified = std::fs::metadata(&source).and_then(|m| m.modified()).ok();
        let model = formats::open(Source::Path(&source), &read_options).with_context(|| shown.clone())?;
        (model, source.display().to_string(), modified)
    };
    let fs = Fs::new(Tree::build_with(model, &shown, options)).with_cache(cache);
    Ok((Box::leak(Box::new(fs)), modified))
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Mount { source, tree, mountpoint, foreground, threads, options, log_file, idle_timeout } => {
            let mut settings = MountSettings {
                mountpoint: mountpoint.clone(),
                source_name: source.shown(),
                foreground,
                threads: threads as usize,
                allow_other: false,
                allow_root: false,
                default_permissions: false,
                owner: Ownership { uid: unsafe { libc::geteuid() }, gid: unsafe { libc::getegid() }, time: SystemTime::now() },
                idle_timeout: idle_timeout.map(Duration::from_secs),
            };
            let mut tree_options = tree.options();
            apply_options(&mut settings, &mut tree_options, &options).map_err(Usage)?;
            settings.mountpoint = daemon::prepare_mountpoint(&mountpoint)?;
            let (fs, modified) = open_fs(&source, tree_options)?;
            // The daemon forks: the remote requests' threads must not exist at that moment.
            wfs::remote::quiesce();
            if let Some(t) = modified {
                settings.owner.time = t;
            }
            Ok(daemon::mount(fs, settings, || detach_stdio(log_file.as_deref()))?)
        }
        Command::Umount { mountpoint } => Ok(daemon::umount(&mountpoint)?),
        Command::Ls { source, tree, path, recursive, long, tensors } => {
            let fs = open_fs(&source, tree.options())?.0;
            let target = if tensors { "tensors.tsv" } else { path.as_str() };
            let ino = tools::resolve(fs, target).ok_or_else(|| not_in_tree(&path))?;
            let mut out = std::io::stdout().lock();
            let result = if tensors || fs.readdir(ino, 0).is_err() {
                tools::copy_file(fs, ino, &mut out).map(|_| ())
            } else {
                let prefix = if recursive && !path.is_empty() { format!("{}/", path.trim_end_matches('/')) } else { String::new() };
                tools::list(fs, ino, &prefix, recursive, long, &mut out)
            };
            Ok(result.or_else(ignore_closed_pipe).with_context(|| path.clone())?)
        }
        Command::Cat { source, path } => {
            let fs = open_fs(&source, TreeOptions::default())?.0;
            let ino = tools::resolve(fs, &path).ok_or_else(|| not_in_tree(&path))?;
            tools::copy_file(fs, ino, &mut std::io::stdout().lock())
                .map(|_| ())
                .or_else(ignore_closed_pipe)
                .with_context(|| path.clone())
        }
        Command::Export { source, tree, dir, path, force } => {
            let fs = open_fs(&source, tree.options())?.0;
            let ino = tools::resolve(fs, &path).ok_or_else(|| not_in_tree(&path))?;
            let tty = std::io::stderr().is_terminal();
            let mut progress = |done: tools::Exported, total: u64| {
                if tty {
                    eprint!("\rwfs: exported {}/{} files, {:.1} MiB", done.files, total, done.bytes as f64 / (1 << 20) as f64);
                }
            };
            let done = tools::export(fs, ino, &dir, force, &mut progress)?;
            if tty {
                eprintln!();
            }
            log::info!("exported {} files, {} bytes", done.files, done.bytes);
            Ok(())
        }
        Command::Convert { source, out } => {
            let fs = open_fs(&source, TreeOptions::default())?.0;
            let ino = tools::resolve(fs, SAFETENSORS_FILE).ok_or_else(|| OpenError::UnknownFormat("no safetensors file can hold this model".into()))?;
            convert(fs, ino, &out).with_context(|| if out.as_os_str() == "-" { "standard output".into() } else { out.display().to_string() })
        }
        Command::Info { source } => {
            let fs = open_fs(&source, TreeOptions::default())?.0;
            let ino = tools::resolve(fs, "info.json").ok_or_else(|| not_in_tree("info.json"))?;
            Ok(tools::copy_file(fs, ino, &mut std::io::stdout().lock()).map(|_| ()).or_else(ignore_closed_pipe)?)
        }
        Command::Completions { shell } => {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "wfs", &mut text);
            print_all(&text)
        }
        Command::Man => {
            let mut text = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut text)?;
            print_all(&text)
        }
    }
}

/// Writes the file `ino` of the tree to `out` (`-`: standard output), with a progress line on
/// a terminal. A file is written whole under a temporary name and renamed into place, so a
/// failure leaves `out` as it was; a file of the source itself is refused, as a standard output
/// redirected onto it is.
fn convert(fs: &Fs, ino: wfs::tree::Ino, out: &std::path::Path) -> Result<(), OutputError> {
    let tty = std::io::stderr().is_terminal();
    let mut progress = |done: u64, total: u64| {
        if tty {
            eprint!("\rwfs: converted {:.1} of {:.1} MiB", done as f64 / (1 << 20) as f64, total as f64 / (1 << 20) as f64);
        }
    };
    let result = if out.as_os_str() == "-" {
        // Standard output's own handle is line-buffered, which splits binary data at newlines:
        // a duplicate of its descriptor writes each chunk whole.
        use std::os::fd::AsFd;
        let stdout = std::io::stdout().as_fd().try_clone_to_owned()?;
        output::check_fd_not_source(&stdout)?;
        tools::copy_file_overlapped(fs, ino, &mut std::fs::File::from(stdout), &mut progress).map(|_| ()).or_else(ignore_closed_pipe).map_err(OutputError::from)
    } else {
        let mut file = AtomicFile::create(out)?;
        tools::copy_file_overlapped(fs, ino, file.file(), &mut progress)?;
        file.commit()
    };
    if tty {
        eprintln!();
    }
    result
}

fn print_all(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    Ok(out.write_all(bytes).and_then(|_| out.flush()).or_else(ignore_closed_pipe)?)
}

fn not_in_tree(path: &str) -> Usage {
    Usage(format!("{path}: no such path in the tree"))
}

/// `wfs cat ... | head` closes the pipe early: that is not a failure.
fn ignore_closed_pipe(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe { Ok(()) } else { Err(e) }
}

/// All of standard input, refused (rather than cut) past `limit` bytes.
fn read_stdin(limit: u64) -> Result<Vec<u8>, OpenError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| OpenError::unreadable(wfs::error::io_reason(&e)))?;
    if bytes.len() as u64 > limit {
        return Err(OpenError::unreadable(format!("more than {limit} bytes (raise --stdin-limit)")));
    }
    Ok(bytes)
}

fn apply_options(settings: &mut MountSettings, tree: &mut TreeOptions, options: &[String]) -> Result<(), String> {
    for opt in options.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        let parse_id = |v: &str| v.parse::<u32>().map_err(|_| format!("invalid mount option '{opt}'"));
        match opt.split_once('=') {
            Some(("uid", v)) => settings.owner.uid = parse_id(v)?,
            Some(("gid", v)) => settings.owner.gid = parse_id(v)?,
            None if opt == "allow_other" => settings.allow_other = true,
            None if opt == "allow_root" => settings.allow_root = true,
            None if opt == "default_permissions" => settings.default_permissions = true,
            None if opt == "noexport" => tree.safetensors = false,
            None if matches!(opt, "ro" | "nodev" | "nosuid" | "noexec" | "noatime") => {}
            None if opt == "rw" => return Err("wfs mounts are read-only: option 'rw' is not allowed".into()),
            _ => return Err(format!("unknown mount option '{opt}'")),
        }
    }
    Ok(())
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
