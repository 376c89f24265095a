//! Commands that read the tree without mounting (`wfs ls`, `cat`, `export`, `info`): they
//! go through the same `Fs` as the mount, so the bytes are the same. Also `wfs list`'s table.

use crate::fs::{Fs, Kind};
use crate::tree::{Ino, ROOT};
use crate::output::{AtomicDir, AtomicFile, OutputError, check_not_source};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// How many bytes one read asks for (the size of the kernel's largest FUSE read).
pub const READ_SIZE: u32 = 1 << 20;

/// Resolves a `/`-separated path from the root, following the tree's symlinks.
pub fn resolve(fs: &Fs, path: &str) -> Option<Ino> {
    let mut pending: Vec<String> = path.split('/').filter(|c| !c.is_empty()).rev().map(str::to_string).collect();
    let mut at = ROOT;
    let mut links_followed = 0;
    while let Some(name) = pending.pop() {
        at = match name.as_str() {
            "." => at,
            ".." => fs.tree.parent(at)?,
            _ => fs.tree.lookup(at, &name)?,
        };
        if let Ok(target) = fs.readlink(at) {
            links_followed += 1;
            if links_followed > 40 {
                return None;
            }
            at = fs.tree.parent(at)?;
            pending.extend(target.split('/').filter(|c| !c.is_empty()).rev().map(str::to_string));
        }
    }
    Some(at)
}

/// Copies a whole file of the tree to `out`.
pub fn copy_file(fs: &Fs, ino: Ino, out: &mut impl Write) -> io::Result<u64> {
    copy_file_with_progress(fs, ino, out, &mut |_, _| {})
}

/// Copies a whole file of the tree to `out`, calling `progress` with the bytes written so far
/// and the file's size after every read.
pub fn copy_file_with_progress(fs: &Fs, ino: Ino, out: &mut impl Write, progress: &mut dyn FnMut(u64, u64)) -> io::Result<u64> {
    let total = fs.attr(ino).map_or(0, |a| a.size);
    let mut buf = Vec::new();
    let mut offset = 0u64;
    loop {
        let len = fs.read_into(ino, offset, READ_SIZE, &mut buf).map_err(io::Error::from_raw_os_error)?;
        if len == 0 {
            return Ok(offset);
        }
        out.write_all(&buf[..len])?;
        offset += len as u64;
        progress(offset, total);
    }
}

/// Like `copy_file_with_progress`, with the reads from the tree and the writes to `out` on two
/// threads, so that they overlap: one large file then takes about as long as the slower side.
pub fn copy_file_overlapped(fs: &Fs, ino: Ino, out: &mut impl Write, progress: &mut dyn FnMut(u64, u64)) -> io::Result<u64> {
    let total = fs.attr(ino).map_or(0, |a| a.size);
    // Three buffers circulate: filled ones go to the writer, emptied ones come back.
    let (filled, to_write) = std::sync::mpsc::channel::<io::Result<(Vec<u8>, usize)>>();
    let (emptied, to_fill) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..3 {
        let _ = emptied.send(vec![0u8; READ_SIZE as usize]);
    }
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut offset = 0u64;
            // Ends when the file is read, or when the writer has failed and dropped its ends.
            while let Ok(mut buf) = to_fill.recv() {
                match fs.read_into(ino, offset, READ_SIZE, &mut buf) {
                    Ok(0) => return,
                    Ok(len) => {
                        offset += len as u64;
                        if filled.send(Ok((buf, len))).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = filled.send(Err(io::Error::from_raw_os_error(e)));
                        return;
                    }
                }
            }
        });
        let mut written = 0u64;
        for chunk in to_write {
            let (buf, len) = chunk?;
            out.write_all(&buf[..len])?;
            written += len as u64;
            progress(written, total);
            let _ = emptied.send(buf);
        }
        Ok(written)
    })
}

/// How `list` shows sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sizes {
    None,
    Bytes,
    /// As `ls -lh`: K, M, G, T (powers of 1024).
    Human,
}

/// A size as `ls -lh` shows it: bytes below 1 KiB, else one decimal below 10 and none from 10
/// on, rounded up (`ls` never shows a file smaller than it is).
pub fn human_size(bytes: u64) -> String {
    let mut unit = 0;
    let mut scaled = bytes as f64;
    while scaled >= 1024.0 && unit < 4 {
        scaled /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        return bytes.to_string();
    }
    let suffix = ["", "K", "M", "G", "T"][unit];
    let tenths = (scaled * 10.0).ceil() / 10.0;
    if tenths < 10.0 { format!("{tenths:.1}{suffix}") } else { format!("{}{suffix}", scaled.ceil()) }
}

/// Lists `ino`, shown as `name`: one line per entry of a directory (`name/` for directories,
/// `name -> target` for links, sizes as asked), descending into subdirectories with
/// `recursive`; a file is one line naming it, as `ls FILE` does.
pub fn list(fs: &Fs, ino: Ino, name: &str, prefix: &str, recursive: bool, sizes: Sizes, out: &mut impl Write) -> io::Result<()> {
    match fs.attr(ino).map(|a| a.kind) {
        Some(Kind::Dir) => list_dir(fs, ino, prefix, recursive, sizes, out),
        Some(kind) => entry_line(fs, ino, kind, name.trim_end_matches('/'), sizes, out),
        None => Err(io::Error::from_raw_os_error(libc::ENOENT)),
    }
}

fn list_dir(fs: &Fs, ino: Ino, prefix: &str, recursive: bool, sizes: Sizes, out: &mut impl Write) -> io::Result<()> {
    let entries = fs.readdir(ino, 2).map_err(io::Error::from_raw_os_error)?;
    for (child, kind, name) in entries {
        let shown = format!("{prefix}{name}");
        entry_line(fs, child, kind, &shown, sizes, out)?;
        if recursive && kind == Kind::Dir {
            list_dir(fs, child, &format!("{shown}/"), recursive, sizes, out)?;
        }
    }
    Ok(())
}

fn entry_line(fs: &Fs, ino: Ino, kind: Kind, shown: &str, sizes: Sizes, out: &mut impl Write) -> io::Result<()> {
    let bytes = fs.attr(ino).map_or(0, |a| a.size);
    let size = match sizes {
        Sizes::None => String::new(),
        Sizes::Bytes => format!("{bytes:>12}  "),
        Sizes::Human => format!("{:>6}  ", human_size(bytes)),
    };
    match kind {
        Kind::Dir => writeln!(out, "{size}{shown}/"),
        Kind::File => writeln!(out, "{size}{shown}"),
        Kind::Symlink => writeln!(out, "{size}{shown} -> {}", fs.readlink(ino).unwrap_or("")),
    }
}

/// A whole file of the tree, by path.
fn read_whole(fs: &Fs, path: &str) -> io::Result<Vec<u8>> {
    let ino = resolve(fs, path).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{path}: not in the tree")))?;
    let mut bytes = Vec::new();
    copy_file(fs, ino, &mut bytes)?;
    Ok(bytes)
}

/// The keys of info.json that say what wrote the model, in the order shown.
const PRODUCER_KEYS: &[&str] = &[
    "producer_name",
    "producer_version",
    "keras_version",
    "backend",
    "tensorflow_version",
    "general.name",
    "general.architecture",
    "description",
];

/// dtypes that hold elements as themselves; every other (q4_0, iq2_xs, mxfp4, ...) packs
/// blocks of them with scales: a quantization.
fn is_plain_dtype(dtype: &str) -> bool {
    ["bool", "int", "uint", "float", "bfloat", "complex", "string"].iter().any(|p| dtype.starts_with(p))
}

/// `wfs info`: what a person wants to know first, read from the tree's info.json and
/// tensors.tsv (so it agrees with the mount): format, producer, tensor and parameter counts by
/// dtype, total bytes, the five largest tensors, and quantization if any.
pub fn summary(fs: &Fs) -> io::Result<String> {
    let bad = |e: serde_json::Error| io::Error::new(io::ErrorKind::InvalidData, format!("info.json: {e}"));
    let info: serde_json::Value = serde_json::from_slice(&read_whole(fs, "info.json")?).map_err(bad)?;
    let tsv = String::from_utf8_lossy(&read_whole(fs, "tensors.tsv")?).into_owned();
    // path, dtype, shape, bytes, name
    let rows: Vec<Vec<&str>> = tsv.lines().skip(1).map(|l| l.split('\t').collect()).filter(|r: &Vec<&str>| r.len() >= 4).collect();
    let mut by_dtype: Vec<(&str, u64, u64)> = Vec::new();
    let mut total_bytes = 0u64;
    for row in &rows {
        let elements: u64 = row[2].split(',').filter(|d| !d.is_empty()).map(|d| d.parse::<u64>().unwrap_or(0)).product();
        let bytes: u64 = row[3].parse().unwrap_or(0);
        total_bytes += bytes;
        match by_dtype.iter_mut().find(|(d, _, _)| *d == row[1]) {
            Some(entry) => {
                entry.1 += elements;
                entry.2 += 1;
            }
            None => by_dtype.push((row[1], elements, 1)),
        }
    }
    by_dtype.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut out = String::new();
    let mut line = |label: &str, value: String| out.push_str(&format!("{label:<12}{value}\n"));
    line("format:", info["format"].as_str().unwrap_or("?").to_string());
    line("source:", info["source"].as_str().unwrap_or("?").to_string());
    let producer: Vec<String> = PRODUCER_KEYS
        .iter()
        .filter_map(|k| match &info[*k] {
            serde_json::Value::String(v) if !v.is_empty() => Some(format!("{k} {v}")),
            serde_json::Value::Number(v) => Some(format!("{k} {v}")),
            _ => None,
        })
        .collect();
    if !producer.is_empty() {
        line("producer:", producer.join(", "));
    }
    line("tensors:", rows.len().to_string());
    let params: u64 = by_dtype.iter().map(|(_, n, _)| n).sum();
    let split: Vec<String> = by_dtype.iter().map(|(d, n, _)| format!("{d} {n}")).collect();
    line("parameters:", if split.is_empty() { "0".into() } else { format!("{params} ({})", split.join(", ")) });
    line("bytes:", if total_bytes < 1024 { total_bytes.to_string() } else { format!("{total_bytes} ({})", human_size(total_bytes)) });
    let quantized: Vec<String> = by_dtype.iter().filter(|(d, _, _)| !is_plain_dtype(d)).map(|(d, _, count)| format!("{d} ({count} tensor{})", if *count == 1 { "" } else { "s" })).collect();
    let quant_keys: Vec<String> = info
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| k.contains("quantiz") && !v.is_object() && !v.is_array())
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if !quantized.is_empty() || !quant_keys.is_empty() {
        line("quantized:", quantized.into_iter().chain(quant_keys).collect::<Vec<_>>().join(", "));
    }
    let mut largest: Vec<&Vec<&str>> = rows.iter().collect();
    largest.sort_by_key(|r| std::cmp::Reverse(r[3].parse::<u64>().unwrap_or(0)));
    for (i, row) in largest.iter().take(5).enumerate() {
        let name = row[0].strip_suffix(".npy").unwrap_or(row[0]);
        let shape = if row[2].is_empty() { "scalar".to_string() } else { format!("[{}]", row[2]) };
        let bytes = human_size(row[3].parse().unwrap_or(0));
        line(if i == 0 { "largest:" } else { "" }, format!("{name}  {} {shape}  {bytes}", row[1]));
    }
    Ok(out)
}

/// `wfs list`: one tab-separated line per live mount (source, mountpoint, daemon pid, bytes
/// held by its cache), under a header; `-` where a value cannot be known (another user's mount).
pub fn mounts_table(mounts: &[crate::daemon::LiveMount]) -> String {
    let mut out = String::from("SOURCE\tMOUNTPOINT\tPID\tCACHE\n");
    for m in mounts {
        let pid = m.pid.map_or("-".to_string(), |p| p.to_string());
        let cache = cache_bytes(&m.mountpoint).map_or("-".to_string(), |b| b.to_string());
        out.push_str(&format!("{}\t{}\t{pid}\t{cache}\n", m.source, m.mountpoint.display()));
    }
    out
}

/// The bytes of decoded chunks a mount's cache holds, which its daemon answers as a hidden
/// extended attribute of the root (`fs::XATTR_CACHE_BYTES`).
fn cache_bytes(mountpoint: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(crate::fs::XATTR_CACHE_BYTES).ok()?;
    let mut value = [0u8; 32];
    // SAFETY: both names are NUL-terminated and `value` is writable for the length passed.
    let len = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    let len = usize::try_from(len).ok()?;
    std::str::from_utf8(&value[..len]).ok()?.trim().parse().ok()
}

/// Counts of what `export` wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct Exported {
    pub files: u64,
    pub bytes: u64,
}

/// Why an export stopped, and at which path.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct ExportError {
    pub path: PathBuf,
    #[source]
    pub source: OutputError,
}

fn at(path: &Path) -> impl FnOnce(OutputError) -> ExportError + '_ {
    move |source| ExportError { path: path.to_path_buf(), source }
}

/// Writes the subtree at `ino` into `dir` as real files, directories and symlinks. A `dir`
/// that does not exist appears only once complete; an existing one must be empty unless
/// `force`, and then each file in it is replaced whole or not at all. A file of the source is
/// never overwritten. `progress` is called after every file with the running totals and the
/// total file count.
pub fn export(fs: &Fs, ino: Ino, dir: &Path, force: bool, progress: &mut dyn FnMut(Exported, u64)) -> Result<Exported, ExportError> {
    let total = count_files(fs, ino);
    let mut done = Exported::default();
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let building = AtomicDir::create(dir).map_err(at(dir))?;
            export_into(fs, ino, building.path(), false, &mut done, total, progress)?;
            building.commit().map_err(at(dir))?;
        }
        Err(e) => return Err(at(dir)(e.into())),
        Ok(_) => {
            let mut entries = std::fs::read_dir(dir).map_err(|e| at(dir)(e.into()))?;
            if !force && entries.next().is_some() {
                return Err(at(dir)(OutputError::NotEmpty));
            }
            export_into(fs, ino, dir, true, &mut done, total, progress)?;
        }
    }
    Ok(done)
}

fn count_files(fs: &Fs, ino: Ino) -> u64 {
    fs.readdir(ino, 2)
        .map(|entries| {
            entries
                .map(|(child, kind, _)| match kind {
                    Kind::Dir => count_files(fs, child),
                    Kind::File => 1,
                    Kind::Symlink => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// `replace`: `dir` may already hold entries of the same names, which are replaced.
fn export_into(fs: &Fs, ino: Ino, dir: &Path, replace: bool, done: &mut Exported, total: u64, progress: &mut dyn FnMut(Exported, u64)) -> Result<(), ExportError> {
    std::fs::create_dir_all(dir).map_err(|e| at(dir)(e.into()))?;
    for (child, kind, name) in fs.readdir(ino, 2).map_err(|e| at(dir)(io::Error::from_raw_os_error(e).into()))? {
        // Names in the tree are already safe components: no `/`, `.` or `..`.
        let path = dir.join(name);
        match kind {
            Kind::Dir => export_into(fs, child, &path, replace, done, total, progress)?,
            Kind::Symlink => {
                let target = fs.readlink(child).map_err(|e| at(&path)(io::Error::from_raw_os_error(e).into()))?;
                if replace && std::fs::symlink_metadata(&path).is_ok() {
                    check_not_source(&path).map_err(at(&path))?;
                    std::fs::remove_file(&path).map_err(|e| at(&path)(e.into()))?;
                }
                std::os::unix::fs::symlink(target, &path).map_err(|e| at(&path)(e.into()))?;
            }
            Kind::File => {
                let mut out = AtomicFile::create(&path).map_err(at(&path))?;
                let mut writer = io::BufWriter::with_capacity(READ_SIZE as usize, out.file());
                done.bytes += copy_file(fs, child, &mut writer).map_err(|e| at(&path)(e.into()))?;
                writer.flush().map_err(|e| at(&path)(e.into()))?;
                drop(writer);
                out.commit().map_err(at(&path))?;
                done.files += 1;
                progress(*done, total);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::model::{InMemory, Model, ModelLink, Tensor};
    use crate::tree::Tree;
    use std::sync::Arc;

    fn sample() -> Fs {
        let mut model = Model::default();
        model.tensors.push(Tensor::new(
            vec!["layers".into(), "d".into(), "bias".into()],
            DType::U8,
            vec![3],
            Arc::new(InMemory(vec![7, 8, 9].into())),
        ));
        model.links.push(ModelLink { path: vec!["layers".into(), "0".into()], target: vec!["layers".into(), "d".into()] });
        Fs::new(Tree::build(model, "test"))
    }

    #[test]
    fn resolve_follows_links_and_dots() {
        let fs = sample();
        let direct = resolve(&fs, "layers/d/bias.raw").unwrap();
        assert_eq!(resolve(&fs, "layers/0/bias.raw"), Some(direct));
        assert_eq!(resolve(&fs, "/layers/./0/../d/bias.raw"), Some(direct));
        assert_eq!(resolve(&fs, "layers/nope"), None);
        let mut out = Vec::new();
        copy_file(&fs, direct, &mut out).unwrap();
        assert_eq!(out, vec![7, 8, 9]);
    }

    #[test]
    fn listing_marks_dirs_and_links() {
        let fs = sample();
        let mut out = Vec::new();
        list(&fs, resolve(&fs, "layers").unwrap(), "layers", "", false, Sizes::None, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "d/\n0 -> d\n");
        let mut out = Vec::new();
        list(&fs, resolve(&fs, "layers/d/bias.raw").unwrap(), "layers/d/bias.raw", "", false, Sizes::Bytes, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "           3  layers/d/bias.raw\n");
    }

    #[test]
    fn human_sizes_round_up_like_ls() {
        let cases = [(0, "0"), (1023, "1023"), (1024, "1.0K"), (1025, "1.1K"), (10 * 1024, "10K"), (10 * 1024 + 1, "11K"), (3 << 20, "3.0M"), (5 << 30, "5.0G")];
        for (bytes, shown) in cases {
            assert_eq!(human_size(bytes), shown, "{bytes}");
        }
    }

    #[test]
    fn export_writes_the_tree() {
        let fs = sample();
        let dir = tempfile::tempdir().unwrap();
        let mut calls = 0;
        let done = export(&fs, ROOT, dir.path(), false, &mut |_, total| {
            calls += 1;
            assert_eq!(total, 7);
        })
        .unwrap();
        assert_eq!((done.files, calls), (7, 7));
        assert!(std::fs::read(dir.path().join("model.safetensors")).unwrap().ends_with(&[7, 8, 9]));
        assert_eq!(std::fs::read(dir.path().join("layers/0/bias.raw")).unwrap(), vec![7, 8, 9]);
        assert_eq!(std::fs::read_link(dir.path().join("layers/0")).unwrap().to_str(), Some("d"));
    }
}

/// What `wfs scan` found in one source: the pickle globals its readers recorded in `info.json`
/// (docs/tree.md 7.1), from the source's own info and every part's.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Whether the source holds any pickle.
    pub pickles: bool,
    pub dangerous: Vec<String>,
    pub unknown: Vec<String>,
    pub safe: usize,
}

impl ScanReport {
    pub fn of(model: &crate::model::Model) -> ScanReport {
        let mut report = ScanReport::default();
        for info in std::iter::once(&model.info).chain(model.parts.iter().map(|p| &p.info)) {
            let Some(serde_json::Value::Object(parts)) = info.get("pickle_globals") else { continue };
            report.pickles = true;
            for verdicts in parts.values().filter_map(serde_json::Value::as_object) {
                for (global, verdict) in verdicts {
                    let list = match verdict.as_str() {
                        Some("dangerous") => &mut report.dangerous,
                        Some("unknown") => &mut report.unknown,
                        _ => {
                            report.safe += 1;
                            continue;
                        }
                    };
                    if !list.contains(global) {
                        list.push(global.clone());
                    }
                }
            }
        }
        report
    }

    /// `dangerous`, `unknown` (globals outside the allow-list), `safe`, or `no pickles`.
    pub fn verdict(&self) -> &'static str {
        match (self.pickles, self.dangerous.is_empty(), self.unknown.is_empty()) {
            (false, _, _) => "no pickles",
            (true, false, _) => "dangerous",
            (true, true, false) => "unknown",
            (true, true, true) => "safe",
        }
    }

    /// One line: `PATH: verdict [dangerous: a, b] [unknown: c]`.
    pub fn line(&self, path: &Path) -> String {
        let mut line = format!("{}: {}", path.display(), self.verdict());
        for (what, list) in [("dangerous", &self.dangerous), ("unknown", &self.unknown)] {
            if !list.is_empty() {
                line.push_str(&format!("; {what}: {}", list.join(", ")));
            }
        }
        line
    }

    pub fn json(&self, path: &Path) -> serde_json::Value {
        serde_json::json!({
            "path": path.display().to_string(),
            "verdict": self.verdict(),
            "dangerous": self.dangerous,
            "unknown": self.unknown,
            "safe": self.safe,
        })
    }
}

/// The sources `wfs scan` looks at, each with whether it was found in a directory: each path
/// given, and every file below each directory given (in name order, symlinks to directories
/// not followed); a SavedModel directory is one source.
pub fn scan_files(paths: &[PathBuf]) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() && !path.join("saved_model.pb").is_file() {
            let mut stack = vec![path.clone()];
            while let Some(dir) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    out.push((dir, false));
                    continue;
                };
                let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                entries.sort();
                let mut subdirs = Vec::new();
                for entry in entries {
                    match std::fs::symlink_metadata(&entry) {
                        Ok(m) if m.is_dir() && entry.join("saved_model.pb").is_file() => out.push((entry, true)),
                        Ok(m) if m.is_dir() => subdirs.push(entry),
                        Ok(m) if m.is_file() => out.push((entry, true)),
                        _ => {}
                    }
                }
                // Popped in name order.
                stack.extend(subdirs.into_iter().rev());
            }
        } else {
            out.push((path.clone(), false));
        }
    }
    out
}
