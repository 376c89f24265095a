//! `wfs convert` and `wfs export` never harm their input: an output that is the source, a
//! symlink or hard link to it, a shard, a checkpoint data file or an external-data file of it is
//! refused with the source byte-identical afterwards (sha256 before and after); outputs appear
//! whole or not at all, also when the command is killed midway.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A copy of a fixture (file or directory) in a fresh temporary directory.
fn copied(rel: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let from = fixture(rel);
    let to = dir.path().join(from.file_name().unwrap());
    let status = std::process::Command::new("cp").arg("-r").arg(&from).arg(&to).status().unwrap();
    assert!(status.success());
    (dir, to)
}

/// sha256 of every file below `path` (or of `path` itself), by relative name.
fn digests(path: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if path.is_file() {
        out.push((String::new(), sha256_hex(&std::fs::read(path).unwrap())));
        return out;
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let p = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(path).unwrap().display().to_string();
                out.push((rel, sha256_hex(&std::fs::read(&p).unwrap())));
            }
        }
    }
    out.sort();
    out
}

/// Runs `wfs ARGS`, expects it refused with a message naming the source, and the source intact.
fn refused(source: &Path, args: &[&std::ffi::OsStr]) {
    let before = digests(source);
    let out = wfs().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "wfs {args:?} succeeded");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("is a file of the source itself"), "wfs {args:?}: {stderr}");
    assert_eq!(digests(source), before, "wfs {args:?} changed the source");
}

#[test]
fn convert_onto_the_source_or_any_file_it_reads_is_refused() {
    for rel in ["gguf/v2.gguf", "safetensors/all_dtypes.safetensors", "torch/dtypes.pt", "h5/k2_functional.h5"] {
        let (dir, source) = copied(rel);
        refused(&source, &["convert".as_ref(), source.as_os_str(), source.as_os_str()]);
        let link = dir.path().join("link.safetensors");
        std::os::unix::fs::symlink(&source, &link).unwrap();
        refused(&source, &["convert".as_ref(), source.as_os_str(), link.as_os_str()]);
        let hard = dir.path().join("hard.safetensors");
        std::fs::hard_link(&source, &hard).unwrap();
        refused(&source, &["convert".as_ref(), source.as_os_str(), hard.as_os_str()]);
        // A symlink as SOURCE, the real file as OUT.
        refused(&source, &["convert".as_ref(), link.as_os_str(), source.as_os_str()]);
    }
    // Files the source reads besides the one named: shards, data files, external data.
    let (_d, sharded) = copied("safetensors/sharded");
    let index = sharded.join("model.safetensors.index.json");
    for shard in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
        refused(&sharded, &["convert".as_ref(), index.as_os_str(), sharded.join(shard).as_os_str()]);
    }
    let (_d, ckpt) = copied("ckpt/sharded");
    let prefix = ckpt.join("ckpt-1");
    refused(&ckpt, &["convert".as_ref(), prefix.as_os_str(), ckpt.join("ckpt-1.data-00002-of-00004").as_os_str()]);
    refused(&ckpt, &["convert".as_ref(), prefix.as_os_str(), ckpt.join("ckpt-1.index").as_os_str()]);
    let (_d, onnx) = copied("onnx/external_one");
    refused(&onnx, &["convert".as_ref(), onnx.join("model.onnx").as_os_str(), onnx.join("weights.bin").as_os_str()]);
}

#[test]
fn convert_to_standard_output_appended_to_the_source_is_refused() {
    let (_dir, source) = copied("gguf/v2.gguf");
    let before = digests(&source);
    let append = std::fs::OpenOptions::new().append(true).open(&source).unwrap();
    let out = wfs().arg("convert").arg(&source).arg("-").stdout(append).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("standard output: is a file of the source itself"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(digests(&source), before);
}

#[test]
fn export_never_writes_over_a_source_file() {
    // model.safetensors is a file every export writes: make it the source itself.
    let (dir, source) = copied("safetensors/all_dtypes.safetensors");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::hard_link(&source, out.join("model.safetensors")).unwrap();
    refused(&source, &["export".as_ref(), source.as_os_str(), out.as_os_str(), "--force".as_ref()]);
    std::fs::remove_file(out.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink(&source, out.join("model.safetensors")).unwrap();
    refused(&source, &["export".as_ref(), source.as_os_str(), out.as_os_str(), "--force".as_ref()]);
}

#[test]
fn export_into_a_directory_that_holds_files_needs_force() {
    let (dir, source) = copied("gguf/v2.gguf");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("info.json"), b"old").unwrap();
    std::fs::write(out.join("mine"), b"kept").unwrap();
    let refused = wfs().arg("export").arg(&source).arg(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("exists and is not empty (use --force"), "{stderr}");
    assert_eq!(std::fs::read(out.join("info.json")).unwrap(), b"old");
    let forced = wfs().arg("export").arg(&source).arg(&out).arg("--force").output().unwrap();
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("info.json")).unwrap()).unwrap();
    assert_eq!(info["format"], "gguf");
    assert_eq!(std::fs::read(out.join("mine")).unwrap(), b"kept");
    // A second forced export replaces what the first wrote, links included.
    let again = wfs().arg("export").arg(&source).arg(&out).arg("--force").output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let mounted = Mount::new(&source, &[]);
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), mounted.read("model.safetensors"));
}

#[test]
fn a_failed_export_leaves_no_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new/out");
    std::fs::create_dir(dir.path().join("new")).unwrap();
    let ok = wfs().arg("export").arg(fixture("gguf/v2.gguf")).arg(&out).output().unwrap();
    assert!(ok.status.success());
    let listing: Vec<_> = std::fs::read_dir(dir.path().join("new")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(listing, ["out"], "no temporary directory left beside it");
    let missing = wfs().arg("export").arg(dir.path().join("missing.gguf")).arg(dir.path().join("other")).output().unwrap();
    assert!(!missing.status.success());
    assert!(!dir.path().join("other").exists());
}

/// A sparse safetensors file of one large uint8 tensor: converting it takes long enough to be
/// killed midway.
fn large_safetensors(path: &Path, bytes: u64) {
    let header = format!(r#"{{"t":{{"dtype":"U8","shape":[{bytes}],"data_offsets":[0,{bytes}]}}}}"#);
    let mut head = (header.len() as u64).to_le_bytes().to_vec();
    head.extend_from_slice(header.as_bytes());
    std::fs::write(path, &head).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(head.len() as u64 + bytes).unwrap();
}

/// Bytes the process has written so far (`wchar` of /proc/PID/io).
fn written(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix("wchar: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

#[test]
fn a_convert_killed_midway_leaves_out_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("big.safetensors");
    large_safetensors(&source, 8 << 30);
    let out = dir.path().join("out.safetensors");
    std::fs::write(&out, b"the previous output").unwrap();
    let mut child = wfs().arg("convert").arg(&source).arg(&out).stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while written(child.id()) < 64 << 20 {
        assert!(Instant::now() < deadline, "convert wrote nothing in 60 s");
        assert!(child.try_wait().unwrap().is_none(), "convert ended before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"the previous output");
    let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["big.safetensors", "out.safetensors"], "nothing left behind");
}

#[test]
fn convert_replaces_an_existing_output_only_when_complete() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    std::fs::write(&out, b"old").unwrap();
    let ok = wfs().arg("convert").arg(fixture("gguf/v2.gguf")).arg(&out).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let mounted = Mount::new(&fixture("gguf/v2.gguf"), &[]);
    assert_eq!(std::fs::read(&out).unwrap(), mounted.read("model.safetensors"));
    // A source that cannot be read: OUT untouched.
    std::fs::write(&out, b"old").unwrap();
    let failed = wfs().arg("convert").arg(dir.path().join("missing.gguf")).arg(&out).output().unwrap();
    assert!(!failed.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
}
