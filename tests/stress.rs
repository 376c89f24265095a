//! Faults and concurrency beyond tests/lifecycle.rs (which covers HDF5, SIGKILL, SIGTERM and a
//! tiny cache): every other format's source truncated, rewritten or deleted while mounted, and
//! many parallel readers over every file of a mount.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every regular file below `root`, relative to it.
fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path().strip_prefix(root).unwrap().to_str().unwrap().to_string());
            }
        }
    }
    out.sort();
    out
}

/// A source of each format in a scratch copy: what to mount, and the file to damage.
fn sources(dir: &Path) -> Vec<(&'static str, PathBuf, PathBuf)> {
    let keras = dir.join("model.keras");
    std::fs::copy(fixture("keras3/k3_functional.keras"), &keras).unwrap();
    let ckpt = dir.join("ckpt");
    copy_tree(&fixture("ckpt/tf2_keras"), &ckpt);
    let saved = dir.join("saved");
    copy_tree(&fixture("savedmodel/tf_module"), &saved);
    vec![
        ("keras", keras.clone(), keras),
        ("checkpoint", ckpt.join("ckpt-1"), ckpt.join("ckpt-1.data-00000-of-00001")),
        ("savedmodel", saved.clone(), saved.join("variables/variables.data-00000-of-00001")),
    ]
}

/// The `.raw` files of a mount, largest first (most likely to hit the damaged region).
fn raws(m: &Mount) -> Vec<String> {
    let mut raws: Vec<(u64, String)> = files(&m.point)
        .into_iter()
        .filter(|f| f.ends_with(".raw"))
        .map(|f| (std::fs::metadata(m.path(&f)).unwrap().len(), f))
        .collect();
    raws.sort_by(|a, b| b.cmp(a));
    raws.into_iter().map(|(_, f)| f).collect()
}

#[test]
fn changed_sources_fail_reads_with_eio_never_mixed_bytes() {
    type Fault = fn(&Path);
    let faults: [(&str, Fault); 3] = [
        ("truncated", |p| std::fs::OpenOptions::new().write(true).open(p).unwrap().set_len(std::fs::metadata(p).unwrap().len() / 2).unwrap()),
        ("rewritten", |p| {
            std::thread::sleep(Duration::from_millis(20));
            let bytes = std::fs::read(p).unwrap();
            std::fs::write(p, bytes.iter().map(|b| b ^ 0xff).collect::<Vec<u8>>()).unwrap();
        }),
        ("deleted", |p| std::fs::remove_file(p).unwrap()),
    ];
    for (fault, damage) in faults {
        let dir = tempfile::tempdir().unwrap();
        for (format, source, victim) in sources(dir.path()) {
            let m = Mount::new(&source, &[]);
            let raws = raws(&m);
            // Half the tensors are read before the damage: the kernel may serve those from its
            // page cache afterwards, but only as they were. The other half must fail.
            let read: Vec<&String> = raws.iter().skip(1).step_by(2).collect();
            let unread: Vec<&String> = raws.iter().step_by(2).collect();
            let before: BTreeMap<&String, Vec<u8>> = read.iter().map(|r| (*r, m.read(r))).collect();
            damage(&victim);
            for r in &read {
                if let Ok(bytes) = std::fs::read(m.path(r)) {
                    assert_eq!(bytes, before[r], "{format} {fault}: {r} served changed bytes");
                }
            }
            let mut eio = 0;
            for r in &unread {
                // String tensors are decoded into memory at mount: they keep the bytes they had.
                if m.text(&r.replace(".raw", ".dtype")) == "string\n" {
                    continue;
                }
                match std::fs::read(m.path(r)) {
                    Ok(_) => panic!("{format} {fault}: {r} read after the damage"),
                    Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{format} {fault}: {r}: {e}"),
                }
                eio += 1;
            }
            assert!(eio > 0, "{format} {fault}: no tensor left unread");
            eprintln!("{format} {fault}: {eio} reads failed with EIO");
        }
    }
}

#[test]
fn many_parallel_readers_see_the_single_threaded_bytes() {
    const THREADS: usize = 16;
    const ROUNDS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    for (format, source, _) in sources(dir.path()) {
        let m = Mount::new(&source, &["--cache-size", "64K", "--threads", "4"]);
        let all = files(&m.point);
        let single: BTreeMap<String, String> = all.iter().map(|f| (f.clone(), sha256_hex(&m.read(f)))).collect();
        let point = m.point.clone();
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (all, point) = (all.clone(), point.clone());
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    for round in 0..ROUNDS {
                        for f in all.iter().cycle().skip(t * 7 + round).take(all.len()) {
                            seen.push((f.clone(), sha256_hex(&std::fs::read(point.join(f)).unwrap())));
                        }
                    }
                    seen
                })
            })
            .collect();
        let mut reads = 0;
        for t in threads {
            for (f, digest) in t.join().unwrap() {
                assert_eq!(digest, single[&f], "{format}: {f} differs from the single-threaded pass");
                reads += 1;
            }
        }
        assert_eq!(reads, THREADS * ROUNDS * all.len());
        eprintln!("{format}: {THREADS} threads x {ROUNDS} rounds x {} files = {reads} reads, all stable", all.len());
    }
}
