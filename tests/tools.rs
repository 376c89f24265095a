//! The commands that work without FUSE (`ls`, `cat`, `export`, `info`) give the same bytes as
//! the mount; xattrs, mount(8)/fstab, the systemd units and `--idle-timeout`.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Every file, link and directory below `root`: relative path -> bytes, link target or "dir".
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            let key = rel.to_str().unwrap().to_string();
            let kind = entry.file_type().unwrap();
            if kind.is_symlink() {
                out.insert(key, format!("-> {}", std::fs::read_link(entry.path()).unwrap().display()).into_bytes());
            } else if kind.is_dir() {
                out.insert(key, b"dir".to_vec());
                stack.push(rel);
            } else {
                out.insert(key, std::fs::read(entry.path()).unwrap());
            }
        }
    }
    out
}

fn sources() -> Vec<PathBuf> {
    vec![
        fixture("h5/k2_functional.h5"),
        fixture("h5/v_gzip_shuffle.h5"),
        fixture("keras3/k3_functional.keras"),
        fixture("ckpt/tf2_keras/ckpt-2"),
        fixture("safetensors/all_dtypes.safetensors"),
        fixture("safetensors/sharded/model.safetensors.index.json"),
        fixture("numpy/compressed.npz"),
        fixture("numpy/fortran_be.npy"),
    ]
}

fn run(args: &[&str], source: &Path) -> Vec<u8> {
    let out = wfs().arg(args[0]).arg(source).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "wfs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn export_cat_ls_and_info_match_the_mount() {
    for source in sources() {
        let mount = Mount::new(&source, &[]);
        let mounted = snapshot(&mount.point);
        let out = tempfile::tempdir().unwrap();
        let status = wfs().arg("export").arg(&source).arg(out.path().join("tree")).status().unwrap();
        assert!(status.success());
        assert_eq!(snapshot(&out.path().join("tree")), mounted, "export of {}", source.display());
        for (rel, bytes) in mounted.iter().filter(|(_, b)| *b != b"dir" && !b.starts_with(b"-> ")) {
            assert_eq!(&run(&["cat", rel], &source), bytes, "wfs cat {rel}");
        }
        let listed = String::from_utf8(run(&["ls", "-R"], &source)).unwrap();
        let mut names: Vec<String> = listed.lines().map(|l| l.split(" -> ").next().unwrap().trim_end_matches('/').to_string()).collect();
        names.sort();
        assert_eq!(names, mounted.keys().cloned().collect::<Vec<_>>());
        assert_eq!(run(&["info", "--json"], &source), mount.read("info.json"));
        assert_eq!(run(&["ls", "--tensors"], &source), mount.read("tensors.tsv"));
    }
}

#[test]
fn cat_follows_index_links_and_fails_cleanly() {
    let source = fixture("h5/k2_sequential.h5");
    assert_eq!(run(&["cat", "layers/0/bias.raw"], &source), run(&["cat", "layers/d1/bias.raw"], &source));
    let out = wfs().arg("cat").arg(&source).arg("layers/nope.npy").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

#[test]
fn xattrs_show_dtype_shape_and_where_the_bytes_lie() {
    let source = fixture("h5/k2_sequential.h5");
    let m = Mount::new(&source, &[]);
    let out = Command::new("getfattr").arg("-d").arg("--absolute-names").arg(m.path("layers/d1/kernel.npy")).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("user.wfs.dtype=\"float32\"") && text.contains("user.wfs.shape=\"5,4\""), "{text}");
    assert!(text.contains("user.wfs.storage=\"plain\""), "{text}");
    let attr = |name: &str| xattr_text(&m.path("layers/d1/kernel.raw"), name);
    let offset: u64 = attr("user.wfs.offset").parse().unwrap();
    let length: usize = attr("user.wfs.length").parse().unwrap();
    let file = std::fs::read(attr("user.wfs.file")).unwrap();
    assert_eq!(&file[offset as usize..offset as usize + length], m.read("layers/d1/kernel.raw").as_slice());
    let gz = Mount::new(&fixture("h5/v_gzip_shuffle.h5"), &[]);
    assert_eq!(xattr_text(&gz.path("layers/d1/kernel.npy"), "user.wfs.storage"), "decoded");
}

#[test]
fn mount_helper_forms_used_by_mount8() {
    let source = fixture("h5/k2_sequential.h5");
    let dir = tempfile::tempdir().unwrap();
    // mount(8) runs /sbin/mount.fuse.wfs SOURCE MOUNTPOINT -o OPTIONS
    let helper = dir.path().join("mount.fuse.wfs");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_wfs"), &helper).unwrap();
    let point = dir.path().join("m");
    let _guard = UnmountGuard(point.clone());
    let status = Command::new(&helper).arg(&source).arg(&point).args(["-o", "rw,noauto,allow_other,x-systemd.automount"]).status().unwrap();
    assert!(status.success());
    assert!(point.join("layers/d1/kernel.npy").exists());
    assert!(wfs().arg("umount").arg(&point).status().unwrap().success());
    // mount.fuse3 runs `wfs SOURCE MOUNTPOINT -o OPTIONS`
    let status = wfs().arg(&source).arg(&point).args(["-o", "ro,nodev"]).status().unwrap();
    assert!(status.success());
    assert!(point.join("info.json").exists());
}

#[test]
fn fstab_line_through_real_mount8() {
    // Installs the mount(8) helper the README asks for, pointing at the binary under test
    // (replacing a link left by an earlier build, which may dangle).
    let helper = Path::new("/sbin/mount.fuse.wfs");
    if helper.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(helper).unwrap();
    }
    if !helper.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_wfs"), helper).expect("root is needed to install /sbin/mount.fuse.wfs");
    }
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("m");
    std::fs::create_dir(&point).unwrap();
    let _guard = UnmountGuard(point.clone());
    let fstab = dir.path().join("fstab");
    std::fs::write(&fstab, format!("{} {} fuse.wfs ro,allow_other,noauto 0 0\n", fixture("h5/k2_sequential.h5").display(), point.display())).unwrap();
    let out = Command::new("mount").arg("-T").arg(&fstab).arg(&point).output().unwrap();
    assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_link(point.join("layers/0")).unwrap().to_str(), Some("d1"));
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(mounts.lines().any(|l| l.contains(point.to_str().unwrap()) && l.contains(" fuse.wfs ")));
    assert!(Command::new("umount").arg(&point).status().unwrap().success());
}

#[test]
fn idle_timeout_unmounts_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("m");
    let _guard = UnmountGuard(point.clone());
    let status = wfs().arg("mount").arg(fixture("h5/k2_sequential.h5")).arg(&point).args(["--idle-timeout", "1"]).status().unwrap();
    assert!(status.success());
    assert!(point.join("info.json").exists());
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(point.to_str().unwrap()) {
        assert!(Instant::now() < deadline, "still mounted after the idle timeout");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn systemd_units_verify() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze not installed: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The units name the installed binary; verify them against the one under test.
    for unit in ["wfs@.service", "mnt-model.mount"] {
        let text = std::fs::read_to_string(repo().join("systemd").join(unit)).unwrap();
        std::fs::write(dir.path().join(unit), text.replace("/usr/local/bin/wfs", env!("CARGO_BIN_EXE_wfs"))).unwrap();
    }
    for unit in ["wfs@mnt-model.service", "mnt-model.mount"] {
        let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(dir.path().join(unit)).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Verification runs outside a booted system: only problems in our own unit text count.
        let ours: Vec<&str> = stderr.lines().filter(|l| l.contains(unit.split('@').next().unwrap()) || l.contains("mnt-model")).collect();
        assert!(out.status.success() && ours.is_empty(), "{unit}: {stderr}");
    }
}

#[test]
fn completions_and_man_page() {
    let out = wfs().args(["completions", "bash"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("complete -F"));
    let man = wfs().arg("man").output().unwrap();
    let text = String::from_utf8_lossy(&man.stdout);
    assert!(text.contains(".TH wfs") && text.contains("mount"));
}

#[test]
fn scan_reports_pickle_globals_and_exits_by_verdict() {
    let hostile = fixture("torch/hostile/evil_os_system.pt");
    let benign = fixture("torch/state_dict.pt");
    let module = fixture("torch/module.pt");
    let run = |args: &[&std::ffi::OsStr]| wfs().arg("scan").args(args).output().unwrap();
    let out = run(&[benign.as_os_str(), module.as_os_str()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("state_dict.pt: safe\n"), "{text}");
    assert!(text.contains("module.pt: unknown; unknown: __main__.Net"), "{text}");
    // --strict fails on the pickled module's classes; a dangerous global fails either way.
    assert_eq!(run(&["--strict".as_ref(), module.as_os_str()]).status.code(), Some(1));
    let out = run(&["--json".as_ref(), hostile.as_os_str(), benign.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<serde_json::Value> = out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
    assert_eq!(lines[0]["verdict"], "dangerous");
    assert_eq!(lines[0]["dangerous"], serde_json::json!(["posix.system"]));
    assert_eq!(lines[1]["verdict"], "safe");
    // Files that cannot be read or are of no known format exit as other commands do.
    assert_eq!(run(&["/nonexistent/x.pt".as_ref()]).status.code(), Some(3));
    assert_eq!(run(&[fixture("torch/state_dict.pt.expect.json").as_os_str()]).status.code(), Some(4));
    // A directory: every model below it; the non-models are passed over.
    let out = run(&[fixture("safetensors").as_os_str()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
