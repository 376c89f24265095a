//! Shared helpers for the integration tests: real mounts (unmounted on every path out) and
//! comparisons against oracles written by Keras/TensorFlow, never by wfs.
#![allow(dead_code)]

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn wfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wfs"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    repo().join("tests/fixtures").join(rel)
}

/// `../shared/real-models`, present in CI and on developer machines. Where it is absent the
/// tests that need it check nothing and say so, unless `WFS_REAL_MODELS=required` (`.ci/run`
/// sets it): then they fail.
pub fn real_models() -> Option<PathBuf> {
    let p = repo().join("../shared/real-models");
    if p.is_dir() {
        return Some(p);
    }
    if std::env::var_os("WFS_REAL_MODELS").is_some_and(|v| v == "required") {
        panic!("WFS_REAL_MODELS=required, but {} is absent: the real-model tests cannot run", p.display());
    }
    eprintln!("skipped: ../shared/real-models is absent");
    None
}

/// Items of ../shared/real-models in formats wfs does not read yet: each must be refused with
/// one line. When a format lands, its items leave this list (tests/real_models.rs says which).
pub const NOT_YET_READ: &[&str] = &[
    "pte_executorchrs_add",
    "pte_simple_torch_model",
];

/// Broken real files (bad/) that still mount what is intact; every other bad/ item is refused.
pub const BAD_BUT_MOUNTS: &[&str] = &[
    // saved_model.pb is two bytes (a CRLF-mangled download); the variables bundle is whole.
    "bad/bad_savedmodel_crlf_pb",
    // weights/weight.bin is absent: the program and its graph mount, every blob constant is
    // listed under info.json's skipped.
    "bad/mlpackage_missing_weight_bin.mlpackage",
];

/// Whether wfs must refuse a real-models item (`name` or `bad/name`) today.
pub fn real_item_refused(item: &str) -> bool {
    NOT_YET_READ.contains(&item) || (item.starts_with("bad/") && !BAD_BUT_MOUNTS.contains(&item))
}

/// Every item of ../shared/real-models (`name`, or `bad/name` for the broken ones) with its
/// oracle, sorted.
pub fn real_items(root: &Path) -> Vec<(String, Value)> {
    let mut items = Vec::new();
    for dir in ["", "bad/"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if let Some(item) = name.strip_suffix(".oracle.json") {
                items.push((format!("{dir}{item}"), load_json(&root.join(dir).join(&name))));
            }
        }
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    items
}

/// What to mount of a real-models item, relative to ../shared/real-models: the files its
/// oracle's parts name, or the item's directory (SavedModels, checkpoint directories); none
/// for a broken item whose oracle has no parts.
pub fn real_item_sources(item: &str, oracle: &Value) -> Vec<String> {
    let mut sources: Vec<String> = oracle["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|part| match part["path"].as_str() {
            Some(".") | None => item.to_string(),
            Some(path) => format!("{item}/{path}"),
        })
        .collect();
    sources.dedup();
    sources
}

/// Every tensor of a real-models oracle part, found by its own name in `tensors.tsv`, against
/// the oracle (dtype, shape, bytes); the mount lists no other tensor. Returns the rows.
pub fn check_part_tensors(mount: &Mount, item: &str, part: &Value) -> Vec<Vec<String>> {
    let rows = tsv_rows(mount);
    let tensors = part["tensors"].as_array().unwrap();
    assert_eq!(rows.len(), tensors.len(), "{item}: tensor count");
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let row = rows.iter().find(|r| r[4] == name).unwrap_or_else(|| panic!("{item}: no row named {name}"));
        check_tensor(mount, row[0].strip_suffix(".npy").unwrap(), t);
    }
    rows
}

/// A live mount in its own temporary directory; unmounted (lazily if need be) when dropped.
pub struct Mount {
    pub dir: tempfile::TempDir,
    pub point: PathBuf,
}

impl Mount {
    pub fn new(source: &Path, args: &[&str]) -> Mount {
        Self::try_new(source, args).unwrap_or_else(|out| {
            panic!("wfs mount {} failed: {}", source.display(), String::from_utf8_lossy(&out.stderr))
        })
    }

    pub fn try_new(source: &Path, args: &[&str]) -> Result<Mount, Output> {
        let dir = tempfile::Builder::new().prefix("wfs-test-").tempdir().unwrap();
        let point = dir.path().join("m");
        // A test killed outright (SIGKILL, a cancelled run) drops no guard: an idle timeout lets
        // its daemon unmount itself instead of leaving a stale mount behind.
        let idle = if args.contains(&"--idle-timeout") { &[][..] } else { &["--idle-timeout", "10m"][..] };
        let out = wfs().arg("mount").arg(source).arg(&point).args(args).args(idle).output().unwrap();
        if out.status.success() { Ok(Mount { dir, point }) } else { Err(out) }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.point.join(rel)
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn text(&self, rel: &str) -> String {
        String::from_utf8(self.read(rel)).unwrap()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        unmount(&self.point);
    }
}

/// Unmounts whatever is mounted at a test's mountpoint, on every path out of the test.
pub struct UnmountGuard(pub PathBuf);

impl Drop for UnmountGuard {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}

fn unmount(point: &Path) {
    let ok = wfs().arg("umount").arg(point).output().is_ok_and(|o| o.status.success());
    if !ok {
        let c = std::ffi::CString::new(point.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that lives across the call.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest an oracle records for a tensor's `.raw` bytes. Oracles hash string tensors as
/// their elements' bytes run together (numpy's view: trailing NULs are not part of an element),
/// while `.raw` holds them fixed-width, so each element is unpadded first.
pub fn oracle_digest(raw: &[u8], dtype: &str, shape: &[u64]) -> String {
    let count = shape.iter().product::<u64>() as usize;
    if dtype != "string" || count == 0 {
        return sha256_hex(raw);
    }
    let elements: Vec<u8> = raw
        .chunks(raw.len() / count)
        .flat_map(|e| &e[..e.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)])
        .copied()
        .collect();
    sha256_hex(&elements)
}

pub fn load_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Checks every tensor of an `.expect.json` oracle through the mount: `.raw` bytes (sha256),
/// `.shape`, `.dtype`, the `.npy` size, `tensors.tsv` rows, and `layers/<i>` links.
pub fn check_expect(mount: &Mount, expect: &Value) {
    let tensors = expect["tensors"].as_object().expect("oracle has tensors");
    let tsv = mount.text("tensors.tsv");
    for (path, t) in tensors {
        let raw = mount.read(&format!("{path}.raw"));
        let dims: Vec<u64> = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        let dtype = t["dtype"].as_str().unwrap();
        assert_eq!(oracle_digest(&raw, dtype, &dims), t["sha256"].as_str().unwrap(), "bytes of {path}");
        let shape: Vec<String> = dims.iter().map(u64::to_string).collect();
        assert_eq!(mount.text(&format!("{path}.shape")), format!("{}\n", shape.join(",")), "shape of {path}");
        assert_eq!(mount.text(&format!("{path}.dtype")), format!("{dtype}\n"), "dtype of {path}");
        // The name column: the tensor's path below its own top level (a part, or the mount).
        let row = format!("{path}.npy\t{dtype}\t{}\t{}\t", shape.join(","), raw.len());
        let name = tsv.lines().find_map(|l| l.strip_prefix(&row)).unwrap_or_else(|| panic!("tensors.tsv lacks {row:?}"));
        assert!(!name.is_empty() && path.ends_with(name), "name {name:?} of {path}");
    }
    if let Some(layers) = expect.get("layers").and_then(Value::as_array) {
        for (i, name) in layers.iter().enumerate() {
            let link = std::fs::read_link(mount.path(&format!("layers/{i}"))).unwrap();
            assert_eq!(link.to_str().unwrap(), name.as_str().unwrap(), "layers/{i}");
        }
        assert!(!mount.path(&format!("layers/{}", layers.len())).exists());
    }
    for dir in expect.get("dirs").and_then(Value::as_array).into_iter().flatten() {
        assert!(mount.path(dir.as_str().unwrap()).is_dir(), "missing dir {dir}");
    }
    let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
    assert!(info["tensors"].as_u64().unwrap() >= tensors.len() as u64);
}

/// Loads every array of the oracle's `.npz` through the mount with numpy (plainly and with
/// mmap_mode) and compares values, dtypes and shapes.
pub fn check_with_numpy(mount: &Mount, npz: &Path) {
    let script = r#"
import sys, numpy as np
mount, npz = sys.argv[1], sys.argv[2]
expected = np.load(npz, allow_pickle=False)
for key in expected.files:
    want = expected[key]
    for mode in (None, 'r'):
        got = np.load(f"{mount}/{key}.npy", mmap_mode=mode, allow_pickle=False)
        assert got.dtype == want.dtype, (key, got.dtype, want.dtype)
        assert got.shape == want.shape, (key, got.shape, want.shape)
        assert np.array_equal(got, want, equal_nan=want.dtype.kind in 'fc'), key
print(len(expected.files))
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(&mount.point).arg(npz).output().unwrap();
    assert!(out.status.success(), "numpy check failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// One tensor's `.raw`, `.shape` and `.dtype` against an oracle entry (dtype, shape, sha256).
pub fn check_tensor(mount: &Mount, path: &str, t: &Value) {
    let dims: Vec<u64> = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
    let dtype = t["dtype"].as_str().unwrap();
    let raw = mount.read(&format!("{path}.raw"));
    assert_eq!(oracle_digest(&raw, dtype, &dims), t["sha256"].as_str().unwrap(), "bytes of {path}");
    let shape: Vec<String> = dims.iter().map(u64::to_string).collect();
    assert_eq!(mount.text(&format!("{path}.shape")), format!("{}\n", shape.join(",")), "shape of {path}");
    assert_eq!(mount.text(&format!("{path}.dtype")), format!("{dtype}\n"), "dtype of {path}");
}

/// Writes a zip archive of (member name, bytes, deflate?), names taken as they are (hostile ones
/// included).
pub fn write_zip(path: &Path, members: &[(&str, Vec<u8>, bool)]) {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, bytes, deflate) in members {
        let method = if *deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
        zip.start_file(*name, zip::write::SimpleFileOptions::default().compression_method(method)).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// Writes a zip archive of (member name, content, deflate?), where a content `@name` stands for
/// `at(name)` (bytes of a fixture) and any other content for itself.
pub fn make_zip(path: &Path, members: &[(&str, &str, bool)], at: impl Fn(&str) -> Vec<u8>) {
    let members: Vec<(&str, Vec<u8>, bool)> = members
        .iter()
        .map(|&(name, content, deflate)| (name, content.strip_prefix('@').map_or_else(|| content.as_bytes().to_vec(), &at), deflate))
        .collect();
    write_zip(path, &members);
}

/// Copies a file or a directory tree (creating `to`'s parents).
pub fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

/// One extended attribute of a path (of a symlink itself, not its target), or None when the
/// path has no attribute of that name.
pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let c_path = c_string(path.as_os_str().as_encoded_bytes());
    let c_name = c_string(name.as_bytes());
    // SAFETY: both names are NUL-terminated CStrings that outlive the calls; the buffer pointer
    // and length describe `value`, which the kernel writes at most `value.len()` bytes into.
    read_sized(|buf: &mut [u8]| unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// The same attribute as text; panics when it is missing.
pub fn xattr_text(path: &Path, name: &str) -> String {
    let value = xattr(path, name).unwrap_or_else(|| panic!("{} has no xattr {name}", path.display()));
    String::from_utf8(value).unwrap()
}

/// Every extended attribute of a path (of a symlink itself), sorted by name.
pub fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let c_path = c_string(path.as_os_str().as_encoded_bytes());
    // SAFETY: as in `xattr`: a NUL-terminated path and a buffer of the length passed.
    let list = read_sized(|buf: &mut [u8]| unsafe { libc::llistxattr(c_path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
        .unwrap_or_else(|| panic!("listxattr {}: {}", path.display(), std::io::Error::last_os_error()));
    let mut names: Vec<String> = list.split(|&b| b == 0).filter(|n| !n.is_empty()).map(|n| String::from_utf8(n.to_vec()).unwrap()).collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let value = xattr(path, &name).unwrap_or_else(|| panic!("{} lost xattr {name}", path.display()));
            (name, value)
        })
        .collect()
}

fn c_string(bytes: &[u8]) -> std::ffi::CString {
    std::ffi::CString::new(bytes).unwrap()
}

/// Calls a get/list-xattr style function first for the size, then for the bytes (again when the
/// value grew in between); None when it fails (ENODATA: no such attribute).
fn read_sized(call: impl Fn(&mut [u8]) -> isize) -> Option<Vec<u8>> {
    loop {
        let size = usize::try_from(call(&mut [])).ok()?;
        let mut buf = vec![0u8; size];
        match call(&mut buf) {
            n if n >= 0 => return Some(buf[..n as usize].to_vec()),
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) => continue,
            _ => return None,
        }
    }
}

/// The `tensors.tsv` rows as (path, dtype, shape, bytes, name).
pub fn tsv_rows(mount: &Mount) -> Vec<Vec<String>> {
    let tsv = mount.text("tensors.tsv");
    let mut lines = tsv.lines();
    assert_eq!(lines.next(), Some("path\tdtype\tshape\tbytes\tname"));
    lines.map(|l| l.split('\t').map(str::to_string).collect()).collect()
}
