//! Mount lifecycle and bad input: exit codes, signals, umount, stale mounts, source changes,
//! hostile names, read-only semantics and concurrent readers.

use crate::common::*;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn mounted(point: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(point.to_str().unwrap()))
}

/// Pids of wfs processes serving `point` (found by their command line).
fn daemons(point: &Path) -> Vec<i32> {
    let want = point.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == want.as_bytes()) && c.starts_with(env!("CARGO_BIN_EXE_wfs").as_bytes()))
        })
        .collect()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn failure(source: &Path, point: &Path, extra: &[&str]) -> (i32, String) {
    let out = wfs().arg("mount").arg(source).arg(point).args(extra).output().unwrap();
    assert!(!out.status.success());
    assert!(!mounted(point), "a failed mount left a mount behind");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr}");
    assert!(stderr.starts_with("wfs: "), "{stderr}");
    (out.status.code().unwrap(), stderr)
}

#[test]
fn exit_codes_per_failure_class() {
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("m");
    let good = fixture("h5/k2_sequential.h5");
    assert_eq!(failure(&good, &point, &["--cache-size", "lots"]).0, 2);
    assert_eq!(failure(&good, &point, &["-o", "rw"]).0, 2);
    assert_eq!(failure(&dir.path().join("missing.h5"), &point, &[]).0, 3);

    let empty = dir.path().join("empty.h5");
    std::fs::write(&empty, b"").unwrap();
    assert!(failure(&empty, &point, &[]).1.contains("empty"));
    let random = dir.path().join("random.h5");
    std::fs::write(&random, (0..100_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>()).unwrap();
    assert_eq!(failure(&random, &point, &[]).0, 4);
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.h5");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(failure(&truncated, &point, &[]).0, 4);

    let file_point = dir.path().join("not-a-dir");
    std::fs::write(&file_point, b"x").unwrap();
    assert_eq!(failure(&good, &file_point, &[]).0, 5);
    let m = Mount::new(&good, &[]);
    let out = wfs().arg("mount").arg(&good).arg(&m.point).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already"));
}

#[test]
fn missing_mountpoint_is_created_and_umount_waits_for_the_daemon() {
    let m = Mount::new(&fixture("h5/k2_sequential.h5"), &[]);
    assert!(mounted(&m.point));
    assert_eq!(daemons(&m.point).len(), 1);
    let out = wfs().arg("umount").arg(&m.point).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!mounted(&m.point));
    assert!(daemons(&m.point).is_empty(), "daemon still running after umount returned");
    let again = wfs().arg("umount").arg(&m.point).output().unwrap();
    assert_eq!(again.status.code(), Some(5));
}

#[test]
fn sigterm_and_sigint_unmount_cleanly() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let point = dir.path().join("m");
        let _guard = UnmountGuard(point.clone());
        let mut child = wfs().arg("mount").arg("-f").arg(fixture("h5/k2_sequential.h5")).arg(&point).spawn().unwrap();
        wait_until("mount", || mounted(&point));
        // a reader is active while the signal arrives
        let mut file = std::fs::File::open(point.join("layers/d1/kernel.npy")).unwrap();
        let mut buf = [0u8; 16];
        file.read_exact(&mut buf).unwrap();
        drop(file);
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        assert!(status.success(), "signal {signal}: {status:?}");
        assert!(!mounted(&point));
    }
}

#[test]
fn killed_daemon_leaves_a_mount_that_umount_and_mount_recover() {
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("m");
    let source = fixture("h5/k2_sequential.h5");
    let _guard = UnmountGuard(point.clone());
    for recover_with_mount in [false, true] {
        assert!(wfs().arg("mount").arg(&source).arg(&point).status().unwrap().success());
        for pid in daemons(&point) {
            // SAFETY: kill only sends a signal to the test's own daemon.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        wait_until("daemon death", || daemons(&point).is_empty());
        let err = std::fs::metadata(&point).unwrap_err();
        assert!(matches!(err.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)), "{err}");
        if recover_with_mount {
            let out = wfs().arg("mount").arg(&source).arg(&point).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert!(point.join("info.json").exists());
        }
        let out = wfs().arg("umount").arg(&point).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!mounted(&point));
    }
}

#[test]
fn busy_mount_is_detached_lazily_with_a_message() {
    let m = Mount::new(&fixture("h5/k2_sequential.h5"), &[]);
    let open = std::fs::File::open(m.path("layers/d1/kernel.raw")).unwrap();
    let cwd_holder = Command::new("sleep").arg("30").current_dir(&m.point).spawn();
    let out = wfs().arg("umount").arg(&m.point).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lazily"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!mounted(&m.point));
    drop(open);
    if let Ok(mut c) = cwd_holder {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn reads_fail_with_eio_once_the_source_changes() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("model.h5");
    std::fs::copy(fixture("h5/k2_sequential.h5"), &source).unwrap();
    let m = Mount::new(&source, &[]);
    assert_eq!(m.read("layers/d1/kernel.raw").len(), 80);
    // Rewrite in place with the same bytes: same size, new mtime.
    std::thread::sleep(Duration::from_millis(20));
    let bytes = std::fs::read(&source).unwrap();
    std::fs::write(&source, &bytes).unwrap();
    let err = std::fs::read(m.path("layers/d2/kernel.raw")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    std::fs::remove_file(&source).unwrap();
    let err = std::fs::read(m.path("layers/d2/bias.raw")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
}

#[test]
fn the_tree_is_read_only() {
    let m = Mount::new(&fixture("h5/k2_sequential.h5"), &[]);
    let err = std::fs::OpenOptions::new().write(true).open(m.path("layers/d1/kernel.npy")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert!(std::fs::write(m.path("new"), b"x").is_err());
    assert!(std::fs::create_dir(m.path("layers/x")).is_err());
    assert!(std::fs::remove_file(m.path("info.json")).is_err());
}

#[test]
fn hostile_names_are_made_safe_and_stay_inside() {
    let m = Mount::new(&fixture("h5/hostile.h5"), &[]);
    let expect = load_json(&fixture("h5/hostile.h5.expect.json"));
    let safe = |c: &str| -> String {
        let mut out = String::new();
        for ch in c.chars() {
            if ch.is_control() || ch == '%' { out.push_str(&format!("%{:02X}", ch as u32)) } else { out.push(ch) }
        }
        if c == ".." { "%2E%2E".into() } else { out }
    };
    let mut seen = std::collections::HashSet::new();
    for entry in expect["raw"].as_array().unwrap().iter().filter(|e| e["kind"] == "dataset") {
        let comps: Vec<&str> = entry["components"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        let sha = entry["sha256"].as_str().unwrap();
        // Long names are cut to 255 bytes; the rest must be exactly the percent-encoded name.
        let long = comps.iter().any(|c| c.len() > 200);
        if long {
            let dir = m.path("datasets");
            let found = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).any(|e| {
                let n = e.file_name().into_string().unwrap();
                n.len() <= 255 && n.starts_with("LLLL") && n.ends_with(".raw") && sha256_hex(&std::fs::read(e.path()).unwrap()) == sha
            });
            assert!(found, "long name not found");
            continue;
        }
        let rel = format!("datasets/{}", comps.iter().map(|c| safe(c)).collect::<Vec<_>>().join("/"));
        let bytes = std::fs::read(m.path(&format!("{rel}.raw"))).unwrap_or_else(|e| panic!("{rel}: {e}"));
        if sha256_hex(&bytes) == sha {
            seen.insert(rel);
        } else {
            // A collision (`%2E%2E` next to `..`) gives the later one a `~2` suffix.
            let alt = std::fs::read(m.path(&format!("{rel}~2.raw"))).unwrap();
            assert_eq!(sha256_hex(&alt), sha, "{rel}");
        }
    }
    assert!(!seen.is_empty());
    // Nothing resolves outside the mount.
    let root = std::fs::canonicalize(&m.point).unwrap();
    let mut stack = vec![m.point.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            let name = name.to_str().unwrap();
            assert!(name.len() <= 255 && name != "." && name != ".." && !name.contains('/') && !name.chars().any(char::is_control));
            let real = std::fs::canonicalize(e.path()).unwrap();
            assert!(real.starts_with(&root), "{} escapes", e.path().display());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
}

#[test]
fn concurrent_readers_with_a_tiny_cache_see_stable_bytes() {
    let source = fixture("h5/v_gzip_shuffle.h5");
    let m = Mount::new(&source, &["--cache-size", "8K", "--threads", "4"]);
    let expect = load_json(&fixture("h5/v_gzip_shuffle.h5.expect.json"));
    let paths: Vec<String> = expect["tensors"].as_object().unwrap().keys().cloned().collect();
    let point = m.point.clone();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (paths, point, expect) = (paths.clone(), point.clone(), expect.clone());
            std::thread::spawn(move || {
                for round in 0..5 {
                    for p in paths.iter().cycle().skip(t + round).take(paths.len()) {
                        let raw = std::fs::read(point.join(format!("{p}.raw"))).unwrap();
                        assert_eq!(sha256_hex(&raw), expect["tensors"][p]["sha256"].as_str().unwrap(), "{p}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The cache held its bound throughout (it only ever shrinks back under it after a load).
    let counter = |name: &str| -> u64 {
        let out = Command::new("getfattr").args(["--only-values", "--absolute-names", "-n", name]).arg(&m.point).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
    };
    assert!(counter("user.wfs.cache_bytes") <= 8 * 1024);
    assert!(counter("user.wfs.decodes") > 0);
}

#[test]
fn sigterm_with_many_readers_in_flight_unmounts_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("m");
    let _guard = UnmountGuard(point.clone());
    let mut child = wfs()
        .arg("mount")
        .arg("-f")
        .args(["--cache-size", "16K"])
        .arg(fixture("h5/v_gzip_shuffle.h5"))
        .arg(&point)
        .spawn()
        .unwrap();
    wait_until("mount", || mounted(&point));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..8)
        .map(|i| {
            let (point, stop) = (point.clone(), stop.clone());
            std::thread::spawn(move || {
                let names = ["layers/d1/kernel.raw", "layers/d1/kernel.npy", "layers/d2/kernel.raw", "tensors.tsv"];
                let mut reads = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Reads may fail once the mount goes away; they must not hang.
                    if std::fs::read(point.join(names[i % names.len()])).is_err() {
                        break;
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "daemon still running 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total: u32 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(total > 0, "readers never got going");
    assert!(status.success(), "{status:?}");
    assert!(!mounted(&point), "SIGTERM left a mount behind");
}
