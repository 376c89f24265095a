//! Commands that read the tree without mounting (`wfs ls`, `cat`, `export`, `info`): they
//! go through the same `Fs` as the mount, so the bytes are the same.

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

/// One line per entry of directory `ino` (`name/` for directories, `name -> target` for
/// links, sizes with `long`), descending into subdirectories with `recursive`.
pub fn list(fs: &Fs, ino: Ino, prefix: &str, recursive: bool, long: bool, out: &mut impl Write) -> io::Result<()> {
    let entries = fs.readdir(ino, 2).map_err(io::Error::from_raw_os_error)?;
    for (child, kind, name) in entries {
        let shown = format!("{prefix}{name}");
        let size = fs.attr(child).map_or(0, |a| a.size);
        let size = if long { format!("{size:>12}  ") } else { String::new() };
        match kind {
            Kind::Dir => writeln!(out, "{size}{shown}/")?,
            Kind::File => writeln!(out, "{size}{shown}")?,
            Kind::Symlink => writeln!(out, "{size}{shown} -> {}", fs.readlink(child).unwrap_or(""))?,
        }
        if recursive && kind == Kind::Dir {
            list(fs, child, &format!("{shown}/"), recursive, long, out)?;
        }
    }
    Ok(())
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
        list(&fs, resolve(&fs, "layers").unwrap(), "", false, false, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "d/\n0 -> d\n");
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
