//! The command line of issue 21: no guessing, one-line messages that keep the useful part,
//! failed mounts that leave nothing behind, the log, and `wfs info`/`list`/`cat`/`ls`/`man`.
//! Each case checks the exit code, the one stderr line, and what is left on disk and in
//! /proc/mounts.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn sequential() -> PathBuf {
    fixture("h5/k2_sequential.h5")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A failure: its exit code and its one stderr line ("wfs: ..."), nothing on stdout.
fn one_line_failure(out: &Output, code: i32) -> String {
    let err = stderr_of(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("wfs: "), "{err}");
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    err
}

/// Whether anything is mounted at or below `dir`, from /proc/mounts.
fn mounted_below(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1).is_some_and(|p| p.starts_with(dir.to_str().unwrap())))
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn a_word_that_is_not_a_command_is_a_usage_error() {
    let cwd = tempfile::tempdir().unwrap();
    let source = sequential();
    let run = |args: &[&str]| wfs().args(args).current_dir(cwd.path()).output().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["mout", source.to_str().unwrap(), "x"], "'mout' is not a wfs command; did you mean `wfs mount`"),
        (&["unmount", "x"], "'unmount' is not a wfs command; did you mean `wfs umount`"),
        (&["verify", "a", "b"], "'verify' is not a wfs command (commands: mount, umount, list, ls, cat, export, convert, info, diff"),
        // The bare two-argument form was `wfs mount` before: now only mount.fuse3's, with -o.
        (&[source.to_str().unwrap(), "x"], "is not a wfs command"),
    ];
    for (args, expected) in cases {
        let err = one_line_failure(&run(args), 2);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    assert_eq!(entries(cwd.path()), Vec::<String>::new(), "a usage error created something");
    assert!(!mounted_below(cwd.path()));
}

#[test]
fn help_mount_prints_the_mount_help_and_bare_wfs_the_usage() {
    let cwd = tempfile::tempdir().unwrap();
    let out = wfs().args(["help", "mount"]).current_dir(cwd.path()).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("Usage: wfs mount [OPTIONS] <SOURCE> <MOUNTPOINT>"), "{help}");
    assert_eq!(entries(cwd.path()), Vec::<String>::new(), "`wfs help mount` created something");

    let out = wfs().current_dir(cwd.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let usage = stderr_of(&out);
    assert!(usage.starts_with("Usage: wfs [OPTIONS] <COMMAND>\n"), "{usage}");
    assert!(usage.contains("\n  mount ") && usage.contains("\n  list "), "{usage}");
}

#[test]
fn the_real_mount_fuse3_still_mounts() {
    // mount.fuse3 runs `wfs SOURCE MOUNTPOINT -o OPTIONS` through sh, finding wfs in PATH.
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("m");
    let _guard = UnmountGuard(point.clone());
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_wfs")).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("/sbin/mount.fuse3").arg(sequential()).arg(&point).args(["-t", "fuse.wfs", "-o", "ro"]).env("PATH", path).output().unwrap();
    assert!(out.status.success(), "mount.fuse3: {}", stderr_of(&out));
    assert_eq!(std::fs::read_link(point.join("layers/0")).unwrap().to_str(), Some("d1"));
    assert!(mounted_below(&point));
}

#[test]
fn a_failed_mount_removes_the_directories_it_made() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("keep");
    std::fs::create_dir(&keep).unwrap();
    std::fs::write(keep.join("file"), b"x").unwrap();
    let not_a_model = dir.path().join("notes.txt");
    std::fs::write(&not_a_model, b"just some notes, not a model\n").unwrap();
    let cases = [
        (dir.path().join("missing.h5"), dir.path().join("a/b/c"), 3),
        (not_a_model.clone(), dir.path().join("a/b/c"), 4),
        (dir.path().join("missing.h5"), keep.join("b/c"), 3),
    ];
    for (source, point, code) in cases {
        let out = wfs().arg("mount").arg(&source).arg(&point).output().unwrap();
        let err = one_line_failure(&out, code);
        assert!(err.contains(source.file_name().unwrap().to_str().unwrap()), "{err}");
        assert_eq!(entries(dir.path()), ["keep", "notes.txt"], "{}", point.display());
        assert_eq!(entries(&keep), ["file"]);
        assert!(!mounted_below(dir.path()));
    }
}

#[test]
fn a_non_empty_mountpoint_needs_nonempty() {
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("m");
    std::fs::create_dir(&point).unwrap();
    std::fs::write(point.join("mine.txt"), b"mine").unwrap();
    let _guard = UnmountGuard(point.clone());
    let out = wfs().arg("mount").arg(sequential()).arg(&point).output().unwrap();
    let err = one_line_failure(&out, 5);
    assert!(err.contains("not empty") && err.contains("-o nonempty"), "{err}");
    assert_eq!(entries(&point), ["mine.txt"]);
    assert!(!mounted_below(&point));

    let out = wfs().arg("mount").arg(sequential()).arg(&point).args(["-o", "nonempty"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(mounted_below(&point) && point.join("info.json").exists() && !point.join("mine.txt").exists());
    assert!(wfs().arg("umount").arg(&point).status().unwrap().success());
    assert_eq!(std::fs::read(point.join("mine.txt")).unwrap(), b"mine");
}

#[test]
fn messages_name_what_is_missing_and_what_is_valid() {
    let source = sequential();
    let s = source.to_str().unwrap();
    let err = one_line_failure(&wfs().args(["cat", s]).output().unwrap(), 2);
    assert!(err.contains("required arguments were not provided: <PATH>"), "{err}");
    let err = one_line_failure(&wfs().args(["mount", s]).output().unwrap(), 2);
    assert!(err.contains("required arguments were not provided: <MOUNTPOINT> (see `wfs mount --help`)"), "{err}");
    let err = one_line_failure(&wfs().arg("mount").output().unwrap(), 2);
    assert!(err.contains("required arguments were not provided: <SOURCE>, <MOUNTPOINT>"), "{err}");
    let err = one_line_failure(&wfs().args(["completions", "tcsh"]).output().unwrap(), 2);
    assert!(err.contains("invalid value 'tcsh'") && err.contains("bash, elvish, fish, powershell, zsh"), "{err}");
    let err = one_line_failure(&wfs().args(["mount", s, "/nonexistent/x", "--idle-timeout", "5x"]).output().unwrap(), 2);
    assert!(err.contains("'5x'") && err.contains("s, m or h"), "{err}");
    assert!(!Path::new("/nonexistent").exists());
    let err = one_line_failure(&wfs().args(["cat", s, "layers/d1"]).output().unwrap(), 2);
    assert!(err.contains(&format!("layers/d1: a directory; list it with `wfs ls {s} layers/d1`")), "{err}");

    // Every signature wfs sniffs is named when none matches.
    let dir = tempfile::tempdir().unwrap();
    let unknown = dir.path().join("unknown.bin");
    std::fs::write(&unknown, (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>()).unwrap();
    let err = one_line_failure(&wfs().arg("info").arg(&unknown).output().unwrap(), 4);
    for signature in ["HDF5", "zip", "PyTorch", "safetensors", "NumPy", "GGUF", "ONNX", "TFLite", "JSON", "checkpoint"] {
        assert!(err.contains(signature), "{signature} missing: {err}");
    }
}

#[test]
fn a_directory_without_a_model_suggests_only_model_files() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(repo.join("README.md"), b"# a model\n").unwrap();
    std::fs::write(repo.join("config.json"), b"{\"hidden_size\": 4}\n").unwrap();
    let err = one_line_failure(&wfs().arg("info").arg(&repo).output().unwrap(), 4);
    assert!(!err.contains("name one of its files"), "suggested files that fail too: {err}");
    std::fs::copy(sequential(), repo.join("model.h5")).unwrap();
    let err = one_line_failure(&wfs().arg("info").arg(&repo).output().unwrap(), 4);
    assert!(err.trim_end().ends_with("; name one of its files: model.h5"), "{err}");
    assert!(wfs().arg("info").arg(repo.join("model.h5")).status().unwrap().success());
}

#[test]
fn ls_names_a_file_and_shows_sizes_as_ls_does() {
    let source = sequential();
    let out = wfs().arg("ls").arg(&source).arg("info.json").output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "info.json\n");

    // Sizes against GNU ls on the mount: the same numbers, the same human form.
    let mount = Mount::new(&source, &[]);
    for (args, ls_flags) in [(&["-l"][..], "-ln"), (&["-l", "-h"][..], "-lhn"), (&["-lh"][..], "-lhn")] {
        let out = wfs().arg("ls").arg(&source).args(args).output().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        let ours: Vec<(String, String)> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let mut f = l.split_whitespace();
                let size = f.next().unwrap().to_string();
                (f.next().unwrap().trim_end_matches('/').to_string(), size)
            })
            .collect();
        let ls = Command::new("ls").arg(ls_flags).arg(&mount.point).output().unwrap();
        let mut theirs: Vec<(String, String)> = String::from_utf8(ls.stdout)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[8].to_string(), f[4].to_string())
            })
            .collect();
        let mut sorted = ours.clone();
        sorted.sort();
        theirs.sort();
        assert_eq!(sorted, theirs, "wfs ls {args:?} against ls {ls_flags}");
        assert!(ours.iter().any(|(_, size)| size.ends_with('K')) == args.iter().any(|a| a.contains('h')), "{ours:?}");
    }
}

#[test]
fn cat_takes_several_paths() {
    let source = sequential();
    let mount = Mount::new(&source, &[]);
    let paths = ["layers/d1/bias.npy", "layers/0/kernel.shape", "info.json"];
    let out = wfs().arg("cat").arg(&source).args(paths).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let expected: Vec<u8> = paths.iter().flat_map(|p| mount.read(p)).collect();
    assert_eq!(out.stdout, expected);
    // A missing path among them: nothing written, exit 2, the path named.
    let out = wfs().arg("cat").arg(&source).args(["info.json", "layers/nope.npy"]).output().unwrap();
    let err = one_line_failure(&out, 2);
    assert!(err.contains("layers/nope.npy"), "{err}");
}

#[test]
fn info_summarizes_and_json_prints_info_json() {
    let source = sequential();
    let out = wfs().arg("info").arg(&source).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let summary = String::from_utf8(out.stdout).unwrap();
    // The oracle: the tensors Keras wrote, as its .expect.json records them.
    let expect = load_json(&fixture("h5/k2_sequential.h5.expect.json"));
    let tensors = expect["tensors"].as_object().unwrap();
    let mut sizes: Vec<(u64, &str)> = tensors
        .iter()
        .map(|(name, t)| (t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).product::<u64>(), name.as_str()))
        .collect();
    let params: u64 = sizes.iter().map(|(n, _)| n).sum();
    assert!(tensors.values().all(|t| t["dtype"] == "float32"));
    let line = |label: &str| summary.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label} in {summary}")).to_string();
    assert_eq!(line("format:"), "format:     keras-h5");
    assert_eq!(line("producer:"), "producer:   keras_version 2.21.0, backend tensorflow");
    assert!(expect["writer"].as_str().unwrap().ends_with("2.21.0"));
    assert_eq!(line("tensors:"), format!("tensors:    {}", tensors.len()));
    assert_eq!(line("parameters:"), format!("parameters: {params} (float32 {params})"));
    assert_eq!(line("bytes:"), format!("bytes:      {}", params * 4));
    sizes.sort_by_key(|s| std::cmp::Reverse(s.0));
    assert!(line("largest:").starts_with(&format!("largest:    {}  float32 [", sizes[0].1)), "{summary}");
    assert!(!summary.contains("quantized"), "{summary}");

    let json = wfs().args(["info", "--json"]).arg(&source).output().unwrap();
    let mount = Mount::new(&source, &[]);
    assert_eq!(json.stdout, mount.read("info.json"));

    // A quantized GGUF says so, with its block formats.
    let out = wfs().arg("info").arg(fixture("gguf/all_types.gguf")).output().unwrap();
    let summary = String::from_utf8(out.stdout).unwrap();
    let quantized = summary.lines().find(|l| l.starts_with("quantized:")).unwrap_or_else(|| panic!("{summary}"));
    assert!(quantized.contains("q4_0 (1 tensor)") && quantized.contains("q8_0") && !quantized.contains("float32"), "{quantized}");
}

/// The pid of the daemon serving `point`: the process whose command line is `wfs mount ... point`.
fn daemon_pid(point: &Path) -> i32 {
    let want = point.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&&b"mount"[..]) && args.contains(&want.as_bytes())
        })
        .expect("no daemon")
}

#[test]
fn list_shows_live_mounts_with_pids_and_cache() {
    let gzip = fixture("h5/v_gzip_shuffle.h5");
    let a = Mount::new(&sequential(), &[]);
    let b = Mount::new(&gzip, &[]);
    // Decoding a gzip chunk puts it in b's cache.
    let _ = b.read("layers/d1/kernel.npy");
    let held: u64 = xattr_text(&b.point, "user.wfs.cache_bytes").parse().unwrap();
    assert!(held > 0);
    for command in ["list", "status"] {
        let out = wfs().arg(command).output().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        let table = String::from_utf8(out.stdout).unwrap();
        assert_eq!(table.lines().next(), Some("SOURCE\tMOUNTPOINT\tPID\tCACHE"));
        for (mount, source, cache) in [(&a, sequential(), "0".to_string()), (&b, gzip.clone(), held.to_string())] {
            let row = format!("{}\t{}\t{}\t{cache}", source.display(), mount.point.display(), daemon_pid(&mount.point));
            assert!(table.lines().any(|l| l == row), "{row:?} not in\n{table}");
        }
    }
    let point = b.point.clone();
    drop(b);
    let table = String::from_utf8(wfs().arg("list").output().unwrap().stdout).unwrap();
    assert!(!table.contains(point.to_str().unwrap()), "{table}");
}

#[test]
fn idle_timeout_zero_is_off_and_durations_take_units() {
    let dir = tempfile::tempdir().unwrap();
    let never = dir.path().join("never");
    let soon = dir.path().join("soon");
    let _guards = (UnmountGuard(never.clone()), UnmountGuard(soon.clone()));
    let mount = |point: &Path, timeout: &str| wfs().arg("mount").arg(sequential()).arg(point).args(["--idle-timeout", timeout]).status().unwrap();
    assert!(mount(&never, "0").success());
    assert!(mount(&soon, "1s").success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while mounted_below(&soon) {
        assert!(Instant::now() < deadline, "still mounted after --idle-timeout 1s");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(mounted_below(&never), "--idle-timeout 0 unmounted");
    for timeout in ["5m", "1h", "90"] {
        let point = dir.path().join(format!("t{timeout}"));
        let _guard = UnmountGuard(point.clone());
        assert!(mount(&point, timeout).success(), "--idle-timeout {timeout}");
        assert!(mounted_below(&point));
    }
}

#[test]
fn the_log_holds_one_line_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("m");
    let log = dir.path().join("wfs.log");
    let _guard = UnmountGuard(point.clone());
    let out = wfs().args(["-v", "mount"]).arg(sequential()).arg(&point).arg("--log-file").arg(&log).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(stderr_of(&out), "", "the daemon's log belongs in its file");
    // What users do: read, list, copy (cp asks for holes with lseek), look at xattrs, close.
    for args in [&["cat", "layers/0/kernel.npy", "info.json"][..], &["ls", "-lR", "."], &["cp", "-r", ".", "../copy"], &["getfattr", "-d", "layers/d1/bias.npy"]] {
        let status = Command::new(args[0]).args(&args[1..]).current_dir(&point).output().unwrap().status;
        assert!(status.success(), "{args:?}");
    }
    assert_eq!(std::fs::read(dir.path().join("copy/layers/d1/kernel.npy")).unwrap(), std::fs::read(point.join("layers/d1/kernel.npy")).unwrap());
    let pid = daemon_pid(&point);
    assert!(wfs().arg("umount").arg(&point).status().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let expected = format!(
        "wfs[{pid}]: info: mounted {} on {}\nwfs[{pid}]: info: unmounted {}\n",
        sequential().display(),
        point.display(),
        point.display()
    );
    assert_eq!(text, expected);
}

#[test]
fn man_page_and_help_cover_every_command_and_argument() {
    let out = wfs().arg("man").output().unwrap();
    assert!(out.status.success());
    let roff = String::from_utf8(out.stdout).unwrap();
    let commands = ["mount", "umount", "list", "ls", "cat", "export", "convert", "info", "scan", "diff", "completions", "man"];
    for command in commands {
        assert!(roff.contains(&format!(".SS \"wfs {command}\"")), "no section for {command}");
    }
    for section in [".SH \"THE TREE\"", ".SH \"EXIT STATUS\"", ".SH ENVIRONMENT", ".SH EXAMPLES"] {
        assert!(roff.contains(section), "no {section}");
    }
    for var in ["HF_TOKEN", "HF_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "SSL_CERT_FILE", "SSL_CERT_DIR"] {
        assert!(roff.contains(var), "no {var}");
    }
    // man(1) renders it without a warning.
    let mut child = Command::new("man")
        .args(["--warnings", "-l", "-"])
        .env("MANWIDTH", "100")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), roff.as_bytes()).unwrap();
    let rendered = child.wait_with_output().unwrap();
    assert!(rendered.status.success() && rendered.stderr.is_empty(), "{}", stderr_of(&rendered));
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(text.contains("EXIT STATUS") && text.contains("wfs mount"), "{text}");

    // Every argument of every command says what it is.
    for command in commands {
        let help = String::from_utf8(wfs().args([command, "--help"]).output().unwrap().stdout).unwrap();
        for line in help.lines().filter(|l| l.trim_start().starts_with('<') || l.trim_start().starts_with('-')) {
            let described = line.trim().split_once("  ").is_some_and(|(_, text)| !text.trim().is_empty());
            assert!(described, "wfs {command} --help: {line:?} has no description");
        }
    }
}
