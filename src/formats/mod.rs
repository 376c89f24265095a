//! One reader per source format, chosen by content (never by file name).

pub mod archive;
pub mod bundle;
pub mod checkpoint;
pub mod gguf;
pub mod h5;
pub mod h5_driver;
pub mod keras3;
pub mod keras_h5;
pub mod numpy;
pub mod safetensors;
pub mod onnx;
pub mod paged;
pub mod savedmodel;
pub mod torch;
pub mod tflite;

use crate::cache::ChunkCache;
use crate::error::{OpenError, io_reason};
use crate::model::Model;
use crate::remote::{RemoteOptions, RemoteSource};
use crate::source::{Blob, Dir, EntryKind, SourceFile};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Settings every reader shares.
#[derive(Clone)]
pub struct ReadOptions {
    pub cache: Arc<ChunkCache>,
}

/// What the first bytes of a file say it is.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    Hdf5,
    Zip,
    /// A JSON object (a sharded weights index, if it has a `weight_map`).
    Json,
    /// A PyTorch file in the legacy (pre-1.6) format.
    TorchLegacy,
    Gguf,
    GitLfsPointer,
    Safetensors,
    Npy,
    /// A protobuf that starts like an ONNX `ModelProto`.
    Onnx,
    /// A FlatBuffer with the TensorFlow Lite identifier.
    Tflite,
    Empty,
    Unknown,
}

pub fn sniff(blob: &Blob) -> Sniffed {
    let len = blob.len();
    if len == 0 {
        return Sniffed::Empty;
    }
    let head = blob.read_vec(0, len.min(64)).unwrap_or_default();
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Sniffed::Zip;
    }
    if head.starts_with(torch::LEGACY_MAGIC) {
        return Sniffed::TorchLegacy;
    }
    if tflite::sniff(&head) {
        return Sniffed::Tflite;
    }
    if head.starts_with(gguf::MAGIC) {
        return Sniffed::Gguf;
    }
    if head.starts_with(b"version https://git-lfs.github.com/spec/") {
        return Sniffed::GitLfsPointer;
    }
    if safetensors::sniff(&head, len) {
        return Sniffed::Safetensors;
    }
    if head.starts_with(crate::npy::MAGIC) {
        return Sniffed::Npy;
    }
    if head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return Sniffed::Json;
    }
    // The HDF5 signature sits at 0 or after a user block of 512 * 2^k bytes.
    let mut at = 0u64;
    while at + 8 <= len {
        if blob.read_vec(at, 8).is_ok_and(|sig| sig == h5::SIGNATURE) {
            return Sniffed::Hdf5;
        }
        at = if at == 0 { 512 } else { at * 2 };
    }
    if onnx::sniff(blob) {
        return Sniffed::Onnx;
    }
    Sniffed::Unknown
}

/// Opens SOURCE (a path) and returns its model.
pub fn open_path(path: &Path, options: &ReadOptions) -> Result<Model, OpenError> {
    // A path that exists is mounted as what it is (TREE.md 1); a checkpoint prefix names no
    // file itself, so it is the reading of a path where nothing exists.
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && checkpoint::is_prefix(path) => {
            return checkpoint::open_prefix(path);
        }
        Err(e) => return Err(OpenError::unreadable(io_reason(&e))),
    };
    if let Some(prefix) = checkpoint::prefix_of_index(path) {
        return checkpoint::open_prefix(&prefix);
    }
    if meta.is_dir() {
        return open_dir(&Dir::Local(path.to_path_buf()));
    }
    let file = SourceFile::open(path).map_err(|e| OpenError::unreadable(io_reason(&e)))?;
    open_blob(&Blob::File(Arc::new(file)), path.parent().map(|p| Dir::Local(p.to_path_buf())).as_ref(), options)
}

/// Opens a remote SOURCE (`https://`, `s3://`, `hf://`): a model file, a checkpoint's
/// `.index` or its prefix, with the files that belong with it found beside it, or a directory
/// (SavedModel, checkpoints) on a store that lists them.
pub fn open_url(url: &str, options: &ReadOptions, remote: &RemoteOptions) -> Result<Model, OpenError> {
    let source = RemoteSource::parse(url, remote, options.cache.clone())?;
    let dir = Dir::Remote(source.dir.clone());
    if source.name.is_empty() {
        return open_dir(&dir);
    }
    if let Some(stem) = source.name.strip_suffix(".index") {
        return checkpoint::open_prefix_in(&dir, stem);
    }
    match source.dir.open(&source.name) {
        Ok(object) => open_blob(&Blob::Remote(object), Some(&dir), options),
        // A checkpoint prefix or a directory names no object itself.
        Err(missing) => {
            if source.dir.open(&format!("{}.index", source.name)).is_ok() {
                return checkpoint::open_prefix_in(&dir, &source.name);
            }
            match dir.sub(&source.name).and_then(|sub| Ok((sub.list()?, sub))) {
                Ok((entries, sub)) if !entries.is_empty() => open_dir(&sub),
                _ => Err(missing),
            }
        }
    }
}

/// A model that is a directory: a SavedModel, else the checkpoints in it.
fn open_dir(dir: &Dir) -> Result<Model, OpenError> {
    if savedmodel::is_savedmodel_dir(dir) {
        return savedmodel::open_dir(dir.clone());
    }
    checkpoint::open_dir(dir)?.ok_or_else(|| {
        // A directory of one model's files (a Hub repository) is mounted by naming the file.
        let files: Vec<String> = dir
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.kind != EntryKind::Dir)
            // Only files that open as a model are worth naming; sniffing reads their first bytes
            // (one request each when remote), so a large directory is sniffed only in part.
            .take(64)
            .filter(|e| {
                dir.open(&e.name).is_ok_and(|blob| match sniff(&blob) {
                    Sniffed::Unknown | Sniffed::Empty | Sniffed::GitLfsPointer => false,
                    // Configs and tokenizers are JSON too: only a sharded weights index is a model.
                    Sniffed::Json => e.name.ends_with(".index.json"),
                    _ => true,
                })
            })
            .map(|e| e.name)
            .collect();
        let named = match files.len() {
            0 => String::new(),
            n if n <= 8 => format!("; name one of its files: {}", files.join(", ")),
            n => format!("; name one of its files: {}, ... ({n} in all)", files[..8].join(", ")),
        };
        OpenError::UnknownFormat(format!("directory holds no model wfs can read (no SavedModel or checkpoint){named}"))
    })
}

/// Opens a model held in memory (standard input): every format a file may hold, except those
/// that need files beside it.
pub fn open_bytes(bytes: Vec<u8>, options: &ReadOptions) -> Result<Model, OpenError> {
    open_blob(&Blob::Memory(Arc::new(bytes)), None, options)
}

/// `dir` is where files that belong with the source lie (the shards of a sharded index).
fn open_blob(blob: &Blob, dir: Option<&Dir>, options: &ReadOptions) -> Result<Model, OpenError> {
    match sniff(blob) {
        Sniffed::Hdf5 => {
            let file = h5::open_blob(blob)?;
            keras_h5::read(&file, &h5::H5Context { blob: blob.clone(), cache: options.cache.clone() })
        }
        Sniffed::Zip => {
            let mut archive = archive::Archive::open(blob)?;
            if let Some(prefix) = torch::record_prefix(&mut archive) {
                return torch::read_archive(archive, &prefix, options);
            }
            match savedmodel::root_in(&mut archive) {
                Some(root) => savedmodel::read_archive(archive, root),
                None if numpy::is_npz(&mut archive) => numpy::read_npz(archive, options),
                None => keras3::read_archive(archive, options),
            }
        }
        Sniffed::TorchLegacy => torch::read_legacy(blob, options),
        Sniffed::Safetensors => safetensors::read(blob),
        Sniffed::Npy => numpy::read_npy(blob),
        Sniffed::Json => match dir {
            Some(dir) if safetensors::indexes_safetensors(blob, dir) => safetensors::read_sharded(blob, dir),
            _ => keras3::read_sharded(blob, dir, options),
        },
        Sniffed::Onnx => onnx::read(blob, dir),
        Sniffed::Tflite => tflite::read(blob),
        Sniffed::Gguf => gguf::read(blob, options),
        Sniffed::GitLfsPointer => Err(OpenError::UnknownFormat(
            "this is a Git LFS pointer, not the model itself (run `git lfs pull`)".into(),
        )),
        Sniffed::Empty => Err(OpenError::UnknownFormat("file is empty".into())),
        Sniffed::Unknown if bundle::has_table_magic(blob) => Err(OpenError::UnknownFormat(
            "looks like a TensorFlow checkpoint index, but its name does not end in .index".into(),
        )),
        Sniffed::Unknown => Err(OpenError::UnknownFormat(
            "not a model file wfs can read (no HDF5, zip, PyTorch, safetensors, NumPy, GGUF, ONNX, TFLite, sharded-index JSON or checkpoint signature)".into(),
        )),
    }
}

/// The absolute form of SOURCE. A checkpoint prefix (`dir/ckpt-3`) names no file, so where the
/// path itself does not exist its directory is resolved instead.
pub fn canonical_source(path: &Path) -> std::io::Result<PathBuf> {
    std::fs::canonicalize(path).or_else(|e| {
        let name = path.file_name().ok_or_else(|| std::io::Error::new(e.kind(), e.to_string()))?;
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        match std::fs::canonicalize(parent) {
            Ok(dir) => Ok(dir.join(name)),
            Err(_) => Err(e),
        }
    })
}
