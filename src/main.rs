//! The `wfs` command line: `mount`/`umount`/`list`, the tools that read the tree without
//! mounting (`ls`, `cat`, `export`, `convert`, `info`), and the `mount.fuse.wfs` form used by
//! mount(8) and fstab.

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use wfs::cache::ChunkCache;
use wfs::daemon::{self, MountSettings};
use wfs::diff;
use wfs::error::{MountError, OpenError};
use wfs::formats::{self, ReadOptions, Source};
use wfs::fs::Fs;
use wfs::fuse::Ownership;
use wfs::output::{self, AtomicFile, OutputError};
use wfs::tools;
use wfs::tree::{SAFETENSORS_FILE, Tree, TreeOptions};

/// Exit codes, one per failure class (documented in docs/usage.md and the man page).
mod exit {
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const SOURCE_UNREADABLE: u8 = 3;
    pub const BAD_FORMAT: u8 = 4;
    pub const MOUNTPOINT: u8 = 5;
}

#[derive(Parser)]
#[command(name = "wfs", version, about = "Mount machine-learning model files as a read-only filesystem", after_help = "`wfs help COMMAND` (or `wfs COMMAND --help`) describes one command; `wfs man` prints the manual.")]
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
    #[command(flatten)]
    read: ReadArgs,
}

/// How sources are read.
#[derive(Args, Clone)]
struct ReadArgs {
    /// Memory for decoded chunks of compressed tensors, e.g. 256M, 2G
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    cache_size: u64,
    /// Most bytes read from standard input (SOURCE -), held in memory while in use
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    stdin_limit: u64,
    /// Seconds a request to a remote source may take before it is retried (3 retries)
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    /// Seconds one read of a remote source may take in all, whatever its size and however many
    /// requests and retries it needs, before it fails (EIO in a mount)
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    read_timeout: u64,
    /// Credentials for remote sources, as NAME=VALUE lines (HF_TOKEN, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, HTTP_USER, HTTP_PASSWORD) in a file only you may read
    #[arg(long, value_name = "FILE")]
    credentials_file: Option<PathBuf>,
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
        TreeOptions { safetensors: !self.no_export, ..TreeOptions::default() }
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
        /// The directory to mount on: created (with its parents) if missing, and removed again if
        /// the mount fails; must be empty unless -o nonempty
        mountpoint: PathBuf,
        /// Stay in the foreground (logs go to stderr)
        #[arg(short, long)]
        foreground: bool,
        /// Threads serving kernel requests
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: u16,
        /// Mount options: allow_other, allow_root, default_permissions, uid=N, gid=N, ro, noexport,
        /// nonempty (mount on a directory that holds files, hiding them)
        #[arg(short = 'o', value_delimiter = ',', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Log file for the daemon, appended to (default: syslog, or the journal under systemd)
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
        /// Unmount after this long with no access and no open file: 90 (seconds), 90s, 5m, 1h;
        /// 0 means never, as without the option
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        idle_timeout: Option<Duration>,
    },
    /// Unmount MOUNTPOINT and wait for its daemon to exit
    Umount {
        /// A directory where a wfs filesystem is mounted
        mountpoint: PathBuf,
    },
    /// List the live wfs mounts: source, mountpoint, daemon pid, bytes in its cache
    #[command(visible_alias = "status")]
    List,
    /// List a directory of the tree (default: the top), without mounting
    // -h is --human, as for ls(1); --help stays.
    #[command(disable_help_flag = true)]
    Ls {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        tree: TreeArgs,
        /// A path inside the tree: a directory is listed, a file is named
        #[arg(default_value = "")]
        path: String,
        /// List subdirectories too
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Show sizes
        #[arg(short, long)]
        long: bool,
        /// Sizes in K, M, G (powers of 1024), as `ls -lh`
        #[arg(short = 'h', long)]
        human: bool,
        /// Print help
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        /// Print the tensor table (tensors.tsv) instead
        #[arg(long)]
        tensors: bool,
    },
    /// Write files of the tree to standard output, one after the other, without mounting
    Cat {
        #[command(flatten)]
        source: SourceArgs,
        /// File paths inside the tree, e.g. layers/0/bias.npy
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Write the tree (or a part of it) out as real files into DIR, without mounting
    Export {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        tree: TreeArgs,
        /// The directory to write into: created if missing (appearing only once complete);
        /// an existing one must be empty unless --force
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
        /// Write each quantized layer (GPTQ, AWQ, bitsandbytes, compressed-tensors, FP8, MLX)
        /// as its float32 weight in place of its stored parts
        #[arg(long)]
        dequantize: bool,
    },
    /// Summarize the model (format, producer, tensors, parameters by dtype, largest tensors,
    /// quantization), without mounting
    Info {
        #[command(flatten)]
        source: SourceArgs,
        /// Print the tree's info.json instead
        #[arg(long)]
        json: bool,
    },
    /// Compare two models tensor by tensor, of any formats: equal, close (within the
    /// tolerance), different, only in one, shapes differ; exit status 0 when nothing differs,
    /// 1 when something does
    #[command(after_help = DIFF_HELP)]
    Diff {
        /// The first model: anything `wfs mount` takes
        a: PathBuf,
        /// The second model
        b: PathBuf,
        #[command(flatten)]
        read: ReadArgs,
        /// How tensors are paired: name (tensors.tsv's name column), path (in the tree), order
        /// (the n-th of each), shape (shapes unique on both sides, a matrix also transposed)
        #[arg(long = "match", value_enum, default_value = "name", value_name = "BY")]
        match_by: MatchArg,
        /// Pairs taken first, whatever --match says: one `A_NAME B_NAME` a line (a tab between
        /// them when names hold spaces); a name is a tensor's name or its path in the tree
        #[arg(long, value_name = "FILE")]
        map: Option<PathBuf>,
        /// Relative tolerance: values are close when |a - b| <= atol + rtol * |b|
        #[arg(long, default_value_t = 1e-5, value_name = "R", value_parser = parse_tolerance)]
        rtol: f64,
        /// Absolute tolerance
        #[arg(long, default_value_t = 1e-8, value_name = "A", value_parser = parse_tolerance)]
        atol: f64,
        /// NaN equals NaN (without it, a NaN differs from everything, itself included)
        #[arg(long)]
        nan_equal: bool,
        /// Only the tensors whose name or path matches GLOB (* and ?; * also matches /)
        #[arg(long, value_name = "GLOB")]
        only: Option<String>,
        /// One JSON document: the sources, the options, a row per tensor and the summary
        #[arg(long)]
        json: bool,
    },
    /// Report the globals of every pickle in PATHs (files, directories recursively) without
    /// running them: exit 1 when one is dangerous (or, with --strict, unknown)
    Scan {
        /// Model files or directories
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// One JSON object per line instead of text
        #[arg(long)]
        json: bool,
        /// Fail on globals outside the allow-list too, not only on dangerous ones
        #[arg(long)]
        strict: bool,
    },
    /// Print a shell completion script
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `wfs man | man -l -`
    Man,
}

/// `--match`'s values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum MatchArg {
    Name,
    Path,
    Order,
    Shape,
}

impl From<MatchArg> for diff::MatchBy {
    fn from(m: MatchArg) -> Self {
        match m {
            MatchArg::Name => diff::MatchBy::Name,
            MatchArg::Path => diff::MatchBy::Path,
            MatchArg::Order => diff::MatchBy::Order,
            MatchArg::Shape => diff::MatchBy::Shape,
        }
    }
}

const DIFF_HELP: &str = "\
Each row: the status (equal, close, different, only-a, only-b, shape, dtype), the tensor's name
(`A = B` where the paired names differ), dtype and shape (`A -> B` where they differ), and for
pairs not equal: differing elements, max abs and max rel (|a - b| / |b|) difference, RMS of
a - b and cosine similarity, computed in float64 over the values as each .npy holds them
(bfloat16, float8 and GGUF blocks widened) and over the pairs of finite values. A matrix whose
transpose the other side holds ([in, out] against [out, in]) is compared transposed. Equal means
the same dtype and every value equal; a NaN equals a NaN only with --nan-equal. A summary line
ends the report. Exit status: 0 when every pair is equal or close and nothing is unmatched, 1
when something differs, 2 and above for errors as for the other commands.";

/// A tolerance: a finite number, zero or more.
fn parse_tolerance(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!("invalid tolerance '{s}' (a number, zero or more, e.g. 1e-5)")),
    }
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

/// A duration: seconds, or a number with the unit s, m or h; zero means none.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| format!("invalid duration '{s}' (use e.g. 90, 90s, 5m or 1h)"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("invalid duration unit in '{s}' (use s, m or h)")),
    };
    n.checked_mul(scale).map(Duration::from_secs).ok_or_else(|| format!("duration '{s}' is too large"))
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Before anything else runs for long: `ps` shows every user the process's arguments.
    wfs::argv::scrub_secrets();
    let args = mount_helper_args(&args).unwrap_or(args);
    // Where a usage error points: the help of the command it is about, else the general one.
    let help = match args.iter().skip(1).find_map(|a| Cli::command().find_subcommand(a).map(|c| c.get_name().to_string())) {
        Some(command) => format!("wfs {command} --help"),
        None => "wfs --help".to_string(),
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // Bare `wfs`: the usage and the commands, not the description as if it were an error.
            eprint!("{}", Cli::command().about(None).render_help());
            return ExitCode::from(exit::USAGE);
        }
        Err(e) => {
            eprintln!("wfs: {} (see `{help}`)", usage_message(&e));
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
        Err(e) if e.downcast_ref::<Differ>().is_some() => ExitCode::from(exit::OTHER),
        Err(e) => {
            // `{:#}` joins the context chain into one line: "<what failed>: <why>".
            eprintln!("wfs: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// clap's error as one line: its text up to the usage, lines joined, and for a word that is
/// not a command, the command it resembles (or the list of commands).
fn usage_message(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() == ErrorKind::InvalidSubcommand {
        let word = match e.get(ContextKind::InvalidSubcommand) {
            Some(ContextValue::String(word)) => word.clone(),
            _ => String::new(),
        };
        return match e.get(ContextKind::SuggestedSubcommand) {
            Some(ContextValue::String(similar)) => format!("'{word}' is not a wfs command; did you mean `wfs {similar}`?"),
            // clap orders them by growing likeness: the likeliest first here.
            Some(ContextValue::Strings(similar)) if !similar.is_empty() => {
                let similar: Vec<&str> = similar.iter().rev().map(String::as_str).collect();
                format!("'{word}' is not a wfs command; did you mean `wfs {}`?", similar.join("` or `wfs "))
            }
            _ => {
                let commands: Vec<String> = Cli::command().get_subcommands().map(|c| c.get_name().to_string()).collect();
                format!("'{word}' is not a wfs command (commands: {}; to mount: `wfs mount SOURCE MOUNTPOINT`)", commands.join(", "))
            }
        };
    }
    let text = e.to_string();
    let mut line = String::new();
    let parts = text.lines().take_while(|l| !l.starts_with("Usage:")).map(str::trim);
    for part in parts.filter(|l| !l.is_empty() && !l.starts_with("For more information")) {
        let part = part.trim_start_matches("error: ").trim_start_matches("tip: ");
        if !line.is_empty() {
            // A list (the missing arguments) follows its "...:" line, one item per line.
            let separator = match part.chars().next() {
                _ if line.ends_with(':') => " ",
                Some('[') => " ",
                Some('<' | '-') => ", ",
                _ => "; ",
            };
            line.push_str(separator);
        }
        line.push_str(part);
    }
    line
}

/// mount(8) runs `mount.fuse.wfs SOURCE MOUNTPOINT -o OPTIONS` (directly, or through
/// mount.fuse3 as `wfs SOURCE MOUNTPOINT -o OPTIONS`): turn that into `wfs mount ...`,
/// dropping the options that only mean something to mount(8) and fstab. Invoked as `wfs`, the
/// form is taken only with its `-o` third: mount.fuse3 always passes one (it adds `dev` and
/// `suid`, or the `nodev`/`nosuid` asked for), while a mistyped command (`wfs mout SRC DIR`)
/// has none and is a usage error.
fn mount_helper_args(args: &[std::ffi::OsString]) -> Option<Vec<std::ffi::OsString>> {
    let invoked_as_helper = args.len() >= 3 && args[0].to_str().and_then(|a| std::path::Path::new(a).file_name()?.to_str()).is_some_and(|n| n.starts_with("mount."));
    let mount_fuse3_form = args.len() >= 5 && args[3] == "-o" && {
        let first = args[1].to_string_lossy();
        !first.starts_with('-') && first != "help" && Cli::command().find_subcommand(&*first).is_none()
    };
    if !invoked_as_helper && !mount_fuse3_form {
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

/// `wfs scan` found what it fails on (exit code 1), or could not read a file (its exit code).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct ScanFailed {
    code: u8,
    message: String,
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
    if let Some(scan) = e.downcast_ref::<ScanFailed>() {
        return scan.code;
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
    open_fs_in(args, options, Arc::new(ChunkCache::new(args.read.cache_size)))
}

/// `open_fs` with a given cache of decoded chunks.
fn open_fs_in(args: &SourceArgs, options: TreeOptions, cache: Arc<ChunkCache>) -> Result<(&'static Fs, Option<SystemTime>)> {
    let read_options = ReadOptions { cache: cache.clone() };
    let (model, shown, modified) = if args.source.as_os_str() == "-" {
        let bytes = read_stdin(args.read.stdin_limit).context("standard input")?;
        let model = formats::open(Source::Bytes(bytes), &read_options).context("standard input")?;
        (model, "-".to_string(), None)
    } else if let Some(url) = args.url() {
        let credentials = args.read.credentials_file.as_deref().map(wfs::remote::Credentials::from_file).transpose()?.unwrap_or_default();
        let remote = wfs::remote::RemoteOptions { timeout: Duration::from_secs(args.read.timeout), retries: 3, deadline: Duration::from_secs(args.read.read_timeout), credentials };
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
                allow_nonempty: false,
                // SAFETY: geteuid and getegid have no preconditions and cannot fail.
                owner: Ownership { uid: unsafe { libc::geteuid() }, gid: unsafe { libc::getegid() }, time: SystemTime::now() },
                idle_timeout: idle_timeout.filter(|t| !t.is_zero()),
            };
            let mut tree_options = tree.options();
            apply_options(&mut settings, &mut tree_options, &options).map_err(Usage)?;
            let prepared = daemon::prepare_mountpoint(&mountpoint, settings.allow_nonempty)?;
            settings.mountpoint = prepared.path.clone();
            let mounted = open_fs(&source, tree_options).and_then(|(fs, modified)| {
                // The daemon forks: the remote requests' threads must not exist at that moment.
                wfs::remote::quiesce();
                if let Some(t) = modified {
                    settings.owner.time = t;
                }
                Ok(daemon::mount(fs, settings, || detach_stdio(log_file.as_deref()))?)
            });
            if mounted.is_err() {
                prepared.remove_created();
            }
            mounted
        }
        Command::Umount { mountpoint } => Ok(daemon::umount(&mountpoint)?),
        Command::List => print_all(tools::mounts_table(&daemon::live_mounts()).as_bytes()),
        Command::Ls { source, tree, path, recursive, long, human, tensors, help: _ } => {
            let fs = open_fs(&source, tree.options())?.0;
            let mut out = std::io::stdout().lock();
            let sizes = match (long, human) {
                (false, _) => tools::Sizes::None,
                (true, false) => tools::Sizes::Bytes,
                (true, true) => tools::Sizes::Human,
            };
            let result = if tensors {
                let ino = tools::resolve(fs, "tensors.tsv").ok_or_else(|| not_in_tree("tensors.tsv"))?;
                tools::copy_file(fs, ino, &mut out).map(|_| ())
            } else {
                let ino = tools::resolve(fs, &path).ok_or_else(|| not_in_tree(&path))?;
                let prefix = if recursive && !path.is_empty() { format!("{}/", path.trim_end_matches('/')) } else { String::new() };
                tools::list(fs, ino, &path, &prefix, recursive, sizes, &mut out)
            };
            Ok(result.or_else(ignore_closed_pipe).with_context(|| path.clone())?)
        }
        Command::Cat { source, paths } => {
            let fs = open_fs(&source, TreeOptions::default())?.0;
            // Every path is checked before anything is written.
            let mut files = Vec::with_capacity(paths.len());
            for path in &paths {
                let ino = tools::resolve(fs, path).ok_or_else(|| not_in_tree(path))?;
                if fs.attr(ino).is_some_and(|a| a.kind == wfs::fs::Kind::Dir) {
                    return Err(Usage(format!("{path}: a directory; list it with `wfs ls {} {path}`", source.shown())).into());
                }
                files.push((path, ino));
            }
            let mut out = std::io::stdout().lock();
            for (path, ino) in files {
                match tools::copy_file(fs, ino, &mut out) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    result => result.with_context(|| path.clone())?,
                };
            }
            Ok(())
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
        Command::Convert { source, out, dequantize } => {
            let fs = open_fs(&source, TreeOptions { dequantize, ..TreeOptions::default() })?.0;
            let ino = tools::resolve(fs, SAFETENSORS_FILE).ok_or_else(|| OpenError::UnknownFormat("no safetensors file can hold this model".into()))?;
            convert(fs, ino, &out).with_context(|| if out.as_os_str() == "-" { "standard output".into() } else { out.display().to_string() })
        }
        Command::Info { source, json } => {
            let fs = open_fs(&source, TreeOptions::default())?.0;
            if json {
                let ino = tools::resolve(fs, "info.json").ok_or_else(|| not_in_tree("info.json"))?;
                return Ok(tools::copy_file(fs, ino, &mut std::io::stdout().lock()).map(|_| ()).or_else(ignore_closed_pipe)?);
            }
            print_all(tools::summary(fs)?.as_bytes())
        }
        Command::Diff { a, b, read, match_by, map, rtol, atol, nan_equal, only, json } => {
            if a.as_os_str() == "-" && b.as_os_str() == "-" {
                return Err(Usage("only one of A and B can be standard input".into()).into());
            }
            let map = match map {
                Some(path) => {
                    let text = std::fs::read_to_string(&path).map_err(|e| Usage(format!("{}: {}", path.display(), wfs::error::io_reason(&e))))?;
                    diff::parse_map(&text).map_err(|e| Usage(format!("{}: {e}", path.display())))?
                }
                None => Vec::new(),
            };
            let options = diff::Options { match_by: match_by.into(), map, only, rtol, atol, nan_equal };
            // One cache for both sides: memory stays within --cache-size.
            let cache = Arc::new(ChunkCache::new(read.cache_size));
            let (a, b) = (SourceArgs { source: a, read: read.clone() }, SourceArgs { source: b, read });
            let no_export = TreeOptions { safetensors: false, ..TreeOptions::default() };
            let fs_a = open_fs_in(&a, no_export, cache.clone())?.0;
            let fs_b = open_fs_in(&b, no_export, cache)?.0;
            diff_models(fs_a, fs_b, [a.shown(), b.shown()], &options, json)
        }
        Command::Completions { shell } => {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "wfs", &mut text);
            print_all(&text)
        }
        Command::Man => print_all(&man_page()?),
        Command::Scan { paths, json, strict } => scan(&paths, json, strict),
    }
}

/// `wfs scan`: opens each file as a mount would (tensor data are never read) and reports the
/// pickle globals its readers recorded. In directories, files of no known format are passed over.
fn scan(paths: &[PathBuf], json: bool, strict: bool) -> Result<()> {
    let options = ReadOptions { cache: Arc::new(ChunkCache::new(16 << 20)) };
    let (mut flagged, mut failed, mut error_code) = (0usize, 0usize, 0u8);
    let mut out = std::io::stdout().lock();
    for (path, in_directory) in tools::scan_files(paths) {
        let opened = formats::canonical_source(&path)
            .map_err(|e| OpenError::unreadable(wfs::error::io_reason(&e)))
            .and_then(|source| formats::open(Source::Path(&source), &options));
        let report = match opened {
            Ok(model) => tools::ScanReport::of(&model),
            Err(OpenError::UnknownFormat(_)) if in_directory => continue,
            Err(e) => {
                failed += 1;
                let e = anyhow::Error::new(e).context(path.display().to_string());
                error_code = error_code.max(exit_code(&e));
                eprintln!("wfs: {e:#}");
                continue;
            }
        };
        if !report.dangerous.is_empty() || (strict && !report.unknown.is_empty()) {
            flagged += 1;
        }
        let line = if json { report.json(&path).to_string() } else { report.line(&path) };
        writeln!(out, "{line}").or_else(ignore_closed_pipe)?;
    }
    match (flagged, failed) {
        (0, 0) => Ok(()),
        (0, n) => Err(ScanFailed { code: error_code, message: format!("{n} file(s) could not be scanned") }.into()),
        (n, _) => {
            let what = if strict { "globals outside the allow-list" } else { "dangerous pickle globals" };
            Err(ScanFailed { code: exit::OTHER, message: format!("{n} file(s) hold {what}") }.into())
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

/// Not a failure: the models differ (exit status 1, as diff(1)); the report says how.
#[derive(Debug, thiserror::Error)]
#[error("the models differ")]
struct Differ;

/// Pairs compared below this many bytes get no progress bar.
const DIFF_PROGRESS_FROM: u64 = 64 << 20;

/// `wfs diff`'s report on standard output: a line per pair as it is compared, or one JSON
/// document at the end; then the summary. A progress bar on a terminal for a large pair of models.
fn diff_models(a: &Fs, b: &Fs, shown: [String; 2], options: &diff::Options, json: bool) -> Result<()> {
    let (side_a, side_b) = (diff::Side::new(a.tree()), diff::Side::new(b.tree()));
    let pairs = diff::pair(&side_a, &side_b, options).map_err(|e| Usage(e.to_string()))?;
    let total = diff::total_bytes(&side_a, &side_b, &pairs);
    let bar = std::io::stderr().is_terminal() && total >= DIFF_PROGRESS_FROM;
    let (mut done, mut shown_at) = (0u64, std::time::Instant::now());
    let mut progress = |bytes: u64| {
        done += bytes;
        if bar && shown_at.elapsed() >= Duration::from_millis(100) {
            shown_at = std::time::Instant::now();
            eprint!("\rwfs: compared {:.1} of {:.1} MiB", done as f64 / (1 << 20) as f64, total as f64 / (1 << 20) as f64);
        }
    };
    let mut out = std::io::stdout().lock();
    let (mut rows, mut summary) = (Vec::new(), diff::Summary::default());
    let compared = diff::run(&side_a, &side_b, &pairs, options, &mut progress, &mut |row| {
        summary.add(row.status);
        if json {
            rows.push(row.json(&side_a, &side_b));
            return Ok(());
        }
        if bar {
            eprint!("\r\x1b[K");
        }
        writeln!(out, "{}", row.text(&side_a, &side_b))
    });
    if bar {
        eprint!("\r\x1b[K");
    }
    let written = compared.map_err(|e| match e {
        diff::DiffError::Write(e) => anyhow::Error::from(e),
        read => OpenError::unreadable(read.to_string()).into(),
    }).and_then(|()| {
        if json {
            let document = serde_json::json!({
                "a": shown[0], "b": shown[1], "match": options.match_by.as_str(), "rtol": options.rtol,
                "atol": options.atol, "nan_equal": options.nan_equal, "tensors": rows, "summary": summary.json(),
            });
            serde_json::to_writer_pretty(&mut out, &document)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}", summary.text())?;
        }
        Ok(out.flush()?)
    });
    match written {
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {}
        other => other?,
    }
    if summary.differs() { Err(Differ.into()) } else { Ok(()) }
}

/// `wfs man`: clap_mangen's page for the whole command, one subsection per command (its
/// synopsis, description and options), then what the command line cannot say itself.
fn man_page() -> std::io::Result<Vec<u8>> {
    let cli = Cli::command();
    let man = clap_mangen::Man::new(cli.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    page.extend_from_slice(b".SH COMMANDS\n");
    for sub in cli.get_subcommands() {
        let name = format!("wfs {}", sub.get_name());
        let man = clap_mangen::Man::new(sub.clone().bin_name(name.clone()));
        writeln!(page, ".SS \"{name}\"")?;
        let mut parts = vec![clap_mangen::Man::render_synopsis_section, clap_mangen::Man::render_description_section, clap_mangen::Man::render_options_section];
        if sub.get_after_help().is_some() {
            parts.push(clap_mangen::Man::render_extra_section);
        }
        for render in parts {
            let mut part = Vec::new();
            render(&man, &mut part)?;
            // Each part starts with its own `.SH` heading: here they sit under the command's.
            let part = String::from_utf8_lossy(&part);
            page.extend(part.lines().filter(|l| !l.starts_with(".SH ")).flat_map(|l| l.bytes().chain([b'\n'])));
            page.extend_from_slice(b".PP\n");
        }
    }
    page.extend_from_slice(MAN_SECTIONS.as_bytes());
    man.render_version_section(&mut page)?;
    Ok(page)
}

/// The sections of `wfs man` that come from no argument: the tree, exit codes, environment, examples.
const MAN_SECTIONS: &str = r#".SH "THE TREE"
A mounted model is a read\-only tree:
.TP
\fBinfo.json\fR
what the source says of itself: format, producer, tensor count, bytes
.TP
\fBtensors.tsv\fR
one row per tensor: path, dtype, shape, bytes, name in the source
.TP
\fBmodel.safetensors\fR
every tensor as one safetensors file, assembled on read (left out with \-\-no\-export)
.TP
\fBlayers/\fR, \fBvariables/\fR, \fBtensors/\fR, \fBoptimizer/\fR, \fBdatasets/\fR
the model's own structure; each tensor is four files: \fINAME\fB.npy\fR (NumPy, mmap\-able),
\fINAME\fB.raw\fR (its bytes alone), \fINAME\fB.shape\fR and \fINAME\fB.dtype\fR
.PP
Extended attributes (\fBgetfattr \-d\fR) give each tensor's dtype, shape, its name in the source
and where its bytes lie. A mount's \fBdu\fR is about three times the source: each tensor appears as
\fB.npy\fR, \fB.raw\fR and inside \fBmodel.safetensors\fR, all read from the same source bytes.
.SH "EXIT STATUS"
.TP
\fB0\fR
success
.TP
\fB1\fR
\fBwfs diff\fR: the models differ; \fBwfs scan\fR: a dangerous pickle global (with \fB\-\-strict\fR, any outside the allow\-list); any other failure (an output that cannot be written, a daemon that failed)
.TP
\fB2\fR
usage: an unknown command or option, a missing argument, a path not in the tree, a directory given to \fBcat\fR
.TP
\fB3\fR
the source cannot be read (missing, no permission, a remote error)
.TP
\fB4\fR
the source is not a model wfs can read, or is corrupt
.TP
\fB5\fR
the mountpoint cannot be used (not a directory, not empty, already mounted, not a wfs mount)
.SH ENVIRONMENT
.TP
\fBHF_TOKEN\fR
the token sent to the Hugging Face Hub for \fBhf://\fR sources
.TP
\fBHF_ENDPOINT\fR
the Hub's address (default https://huggingface.co)
.TP
\fBAWS_ACCESS_KEY_ID\fR, \fBAWS_SECRET_ACCESS_KEY\fR, \fBAWS_SESSION_TOKEN\fR, \fBAWS_PROFILE\fR, \fBAWS_SHARED_CREDENTIALS_FILE\fR, \fBAWS_CONFIG_FILE\fR
credentials for \fBs3://\fR sources (else none: public buckets)
.TP
\fBAWS_REGION\fR, \fBAWS_DEFAULT_REGION\fR, \fBAWS_ENDPOINT_URL\fR
the S3 region and endpoint (another S3\-compatible store)
.TP
\fBSSL_CERT_FILE\fR, \fBSSL_CERT_DIR\fR
the root certificates trusted for https (default: the system's)
.SH EXAMPLES
.TP
\fBwfs mount model.h5 /mnt/m\fR
mount a Keras file; \fBwfs umount /mnt/m\fR unmounts it
.TP
\fBwfs mount hf://ORG/REPO/model.safetensors /mnt/m \-\-idle\-timeout 10m\fR
mount a file of the Hub, unmounted after ten idle minutes
.TP
\fBwfs info model.gguf\fR
a summary; \fBwfs info \-\-json model.gguf\fR prints info.json
.TP
\fBwfs ls \-l \-h model.pt layers\fR
list a directory of the tree with sizes, without mounting
.TP
\fBwfs cat model.keras layers/0/kernel.npy > kernel.npy\fR
copy one tensor out
.TP
\fBwfs convert model.pt model.safetensors\fR
write every tensor as one safetensors file
.TP
\fBwfs diff model.h5 model.safetensors\fR
compare two models tensor by tensor; \fB\-\-match order\fR pairs renamed tensors, \fB\-\-json\fR for scripts
.TP
\fBwfs list\fR
the live mounts, their daemons and cache use
.TP
fstab: \fB/models/m.h5 /mnt/m fuse.wfs ro,allow_other,noauto 0 0\fR
with /sbin/mount.fuse.wfs a link to wfs
"#;

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
            None if opt == "nonempty" => settings.allow_nonempty = true,
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
    // SAFETY: open, dup2, close and chdir on descriptors we own and static NUL-terminated paths.
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
