//! The reader registry: one reader per source format, chosen by content (never by file name).
//!
//! A reader is a row of a table: its name (the format's key, and `info.json`'s `format` where
//! that is the same), a sniff that says from the content whether the source is this format, and
//! an open that turns it into a `Model`. Tables are walked in order and the first sniff that
//! says yes opens the source, so a more specific format comes before a looser one. Containers
//! (zip, HDF5, a JSON index) have tables of their own, keyed on what is inside them; directories
//! have theirs. Adding a format: a file in this directory and a row in one table.

// The fuzz entry points (crate::fuzzing) reach some readers' parts directly.
pub(crate) mod archive;
pub mod bundle;
mod caffe;
mod checkpoint;
pub(crate) mod darknet;
mod flax;
mod coreml;
mod gguf;
mod ggml_legacy;
mod ggml_tensors;
mod h5;
mod h5_datasets;
mod h5_driver;
pub(crate) mod keras;
pub(crate) mod keras3;
mod keras_h5;
mod le_cursor;
mod mxnet;
pub(crate) mod ncnn;
pub(crate) mod numpy;
mod onnx;
mod openvino;
mod options;
mod paged;
pub(crate) mod safetensors;
mod savedmodel;
pub(crate) mod tf_bundle;
mod tfjs;
mod tflite;
mod tiled;
pub(crate) mod torch;
mod widened;
mod wire;
pub(crate) mod zarr;

pub use options::ReadOptions;

use crate::error::{OpenError, io_reason};
use crate::model::Model;
use crate::remote::{RemoteOptions, RemoteSource};
use crate::source::{Blob, Dir, EntryKind, SourceFile};
use archive::Archive;
use h5::H5Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a file reader's sniff sees: the first bytes (up to 64), the whole source, and the
/// directory beside it where there is one (the shards of a sharded index).
pub(crate) struct Probe<'a> {
    pub head: &'a [u8],
    pub blob: &'a Blob,
    pub dir: Option<&'a Dir>,
}

/// A reader of a format held in one file (a container's row dispatches further inside it).
pub(crate) struct FileReader {
    /// The format's key, unique over all tables.
    pub name: &'static str,
    /// What `info.json`'s `format` says of a model this row opens ("" for a container, whose
    /// inner row says it).
    pub format: &'static str,
    pub sniff: fn(&Probe) -> bool,
    /// `dir` is where files that belong with the source lie (`None` for standard input).
    pub open: fn(&Blob, Option<&Dir>, &ReadOptions) -> Result<Model, OpenError>,
}

/// The file formats, in priority order. Fixed magic numbers come first; loose shapes (a JSON
/// object, a protobuf) last. HDF5 is probed late because its signature may sit after a user
/// block, which costs reads.
pub(crate) const FILE_READERS: &[FileReader] = &[
    FileReader { name: "zip-archive", format: "", sniff: |p| p.head.starts_with(b"PK\x03\x04") || p.head.starts_with(b"PK\x05\x06"), open: open_zip },
    FileReader { name: "pytorch-legacy", format: "pytorch", sniff: |p| p.head.starts_with(torch::LEGACY_MAGIC), open: |blob, _, options| torch::read_legacy(blob, options) },
    FileReader { name: "tflite", format: "tflite", sniff: |p| tflite::sniff(p.head), open: |blob, _, _| tflite::read(blob) },
    FileReader { name: "gguf", format: "gguf", sniff: |p| p.head.starts_with(gguf::MAGIC), open: |blob, _, options| gguf::read(blob, options) },
    FileReader { name: "ggml-legacy", format: "ggml-legacy", sniff: |p| ggml_legacy::MAGICS.iter().any(|m| p.head.starts_with(*m)), open: |blob, _, options| ggml_legacy::read(blob, options) },
    FileReader { name: "ncnn", format: "ncnn", sniff: |p| ncnn::sniff(p.head), open: |blob, dir, _| ncnn::read(blob, dir) },
    FileReader { name: "mxnet", format: "mxnet", sniff: |p| p.head.starts_with(&mxnet::LIST_MAGIC), open: |blob, dir, _| mxnet::read(blob, dir) },
    // Not a format: a pointer a Git LFS checkout left in the model's place, refused with the fix.
    FileReader {
        name: "git-lfs-pointer", format: "",
        sniff: |p| p.head.starts_with(b"version https://git-lfs.github.com/spec/"),
        open: |_, _, _| Err(OpenError::UnknownFormat("this is a Git LFS pointer, not the model itself (run `git lfs pull`)".into())),
    },
    FileReader { name: "safetensors", format: "safetensors", sniff: |p| safetensors::sniff(p.head, p.blob.len()), open: safetensors::read },
    FileReader { name: "npy", format: "npy", sniff: |p| p.head.starts_with(crate::npy::MAGIC), open: |blob, _, _| numpy::read_npy(blob) },
    FileReader { name: "paddle-pdparams", format: "paddle-pdparams", sniff: |p| torch::paddle::sniff(p.head), open: |blob, _, options| torch::paddle::read_pdparams(blob, options) },
    FileReader { name: "flax-msgpack", format: "flax-msgpack", sniff: |p| flax::sniff(p.head), open: |blob, _, _| flax::read(blob) },
    FileReader { name: "json-index", format: "", sniff: |p| p.head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'), open: open_json },
    FileReader { name: "openvino", format: "openvino", sniff: |p| p.head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<') && openvino::sniff(p.blob), open: |blob, dir, _| openvino::read(blob, dir) },
    FileReader { name: "hdf5-file", format: "", sniff: |p| h5::has_signature(p.blob), open: open_hdf5 },
    FileReader { name: "coreml", format: "coreml", sniff: |p| p.head.first() == Some(&0x08) && coreml::sniff(p.blob), open: |blob, dir, _| coreml::read(blob, dir) },
    FileReader { name: "onnx", format: "onnx", sniff: |p| onnx::sniff(p.blob), open: |blob, dir, _| onnx::read(blob, dir) },
    FileReader { name: "caffe", format: "caffe", sniff: |p| caffe::sniff(p.blob), open: |blob, dir, _| caffe::read(blob, dir) },
    // No magic: a version header, and the cfg beside it (or a body of whole float32 values).
    FileReader { name: "darknet", format: "darknet", sniff: |p| darknet::sniff(p.head, p.blob, p.dir), open: |blob, dir, _| darknet::read(blob, dir) },
];

/// JSON files: sharded weights indexes, told apart by the shards they name.
pub(crate) const JSON_READERS: &[FileReader] = &[
    FileReader { name: "tfjs", format: "tfjs", sniff: |p| tfjs::sniff(p.blob), open: |blob, dir, _| tfjs::read(blob, dir) },
    FileReader {
        name: "safetensors-sharded", format: "safetensors-sharded",
        sniff: |p| p.dir.is_some_and(|dir| safetensors::indexes_safetensors(p.blob, dir)),
        open: |blob, dir, options| {
            safetensors::read_sharded(blob, dir.ok_or_else(|| OpenError::UnknownFormat("a sharded index needs its shards".into()))?, options)
        },
    },
    // Also the refusal of any other JSON file (it says what a Keras index needs).
    FileReader { name: "keras-weights-sharded", format: "keras-weights-sharded", sniff: |_| true, open: |blob, dir, options| keras3::read_sharded(blob, dir, options) },
];

/// A format held in a zip archive, recognised by its members.
pub(crate) struct ZipReader {
    pub name: &'static str,
    /// What `info.json`'s `format` says of a model this row opens.
    pub format: &'static str,
    pub sniff: fn(&mut Archive) -> bool,
    pub open: fn(Archive, &ReadOptions) -> Result<Model, OpenError>,
}

/// Zip archives, in priority order: torch's own rule first (its records may hold anything).
pub(crate) const ZIP_READERS: &[ZipReader] = &[
    ZipReader { name: "torchscript", format: "torchscript", sniff: torch::is_torchscript, open: torch::read_zip },
    ZipReader { name: "pytorch", format: "pytorch", sniff: |zip| torch::record_prefix(zip).is_some(), open: torch::read_zip },
    ZipReader { name: "tf-savedmodel", format: "tf-savedmodel", sniff: |zip| savedmodel::root_in(zip).is_some(), open: |zip, _| savedmodel::read_zip(zip) },
    ZipReader { name: "npz", format: "npz", sniff: numpy::is_npz, open: numpy::read_npz },
    // Also the refusal of any other zip (it says what a .keras or a SavedModel needs).
    ZipReader { name: "keras", format: "keras", sniff: |_| true, open: keras3::read_archive },
];

/// A format held in an HDF5 file, recognised by its root group.
pub(crate) struct Hdf5Reader {
    pub name: &'static str,
    /// What `info.json`'s `format` says of a model this row opens.
    pub format: &'static str,
    pub sniff: fn(&hdf5::Group) -> bool,
    pub open: fn(&hdf5::File, &H5Context) -> Result<Model, OpenError>,
}

/// HDF5 files, in priority order: the Keras layouts, then any HDF5 file as its datasets.
pub(crate) const HDF5_READERS: &[Hdf5Reader] = &[
    Hdf5Reader { name: "keras-h5", format: "keras-h5", sniff: keras_h5::is_model_file, open: keras_h5::read_model },
    Hdf5Reader { name: "keras-h5-weights", format: "keras-h5-weights", sniff: keras_h5::is_weights_file, open: |file, ctx| Ok(keras_h5::read_weights(file, ctx)) },
    Hdf5Reader { name: "keras-weights", format: "keras-weights", sniff: keras3::is_weights_file, open: |file, ctx| Ok(keras3::read_weights_file(file, ctx)) },
    Hdf5Reader { name: "hdf5", format: "hdf5", sniff: |_| true, open: |file, ctx| Ok(h5_datasets::read(file, ctx)) },
];

/// A format that is a directory. Sniffing a directory means listing it, which a remote store
/// charges a request for, so a reader sniffs and opens in one: `None` if it is not its format.
pub(crate) struct DirReader {
    pub name: &'static str,
    /// What `info.json`'s `format` says of a model this row opens.
    pub format: &'static str,
    pub open: fn(&Dir, &ReadOptions) -> Result<Option<Model>, OpenError>,
}

pub(crate) const DIR_READERS: &[DirReader] = &[
    DirReader { name: "tf-savedmodel-dir", format: "tf-savedmodel", open: |dir, _| savedmodel::is_savedmodel_dir(dir).then(|| savedmodel::open_dir(dir.clone())).transpose() },
    DirReader { name: "tf-checkpoint-dir", format: TF_CHECKPOINT, open: |dir, _| checkpoint::open_dir(dir) },
    DirReader { name: "pytorch-dcp", format: "pytorch-dcp", open: torch::dcp::open_dir },
    DirReader { name: "orbax", format: "orbax", open: zarr::orbax::open_dir },
    DirReader { name: "zarr", format: "zarr", open: zarr::open_dir },
    DirReader { name: "coreml-mlpackage", format: "coreml", open: |dir, _| coreml::open_package(dir) },
];

/// `info.json`'s `format` of TensorFlow checkpoints: a checkpoint directory's row, and the
/// prefixes (`ckpt-3`, `ckpt-3.index`), which name no file a row could sniff.
const TF_CHECKPOINT: &str = "tf-checkpoint";

/// A model as the row that opened it: `info.json`'s `format` follows from the registry.
fn opened_as(format: &'static str, model: Result<Model, OpenError>) -> Result<Model, OpenError> {
    model.map(|mut model| {
        if !format.is_empty() {
            model.format = format.into();
        }
        model
    })
}

/// The first bytes of a source, as sniffs see them.
fn head_of(blob: &Blob) -> Vec<u8> {
    blob.read_vec(0, blob.len().min(64)).unwrap_or_default()
}

/// The first reader of `table` whose sniff says yes.
fn choose<'t>(table: &'t [FileReader], probe: &Probe) -> Option<&'t FileReader> {
    table.iter().find(|reader| (reader.sniff)(probe))
}

/// The name of the file reader that would open `blob` (standard input's view: no directory).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn sniff(blob: &Blob) -> Option<&'static str> {
    let head = head_of(blob);
    choose(FILE_READERS, &Probe { head: &head, blob, dir: None }).map(|r| r.name)
}

/// Opens `bytes` with the named reader of any table, as a file without files beside it (a
/// directory reader gets nothing to open). For the fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn open_format(name: &str, blob: &Blob, options: &ReadOptions) -> Option<Result<Model, OpenError>> {
    if let Some(reader) = FILE_READERS.iter().chain(JSON_READERS).find(|r| r.name == name) {
        return Some((reader.open)(blob, None, options));
    }
    if let Some(reader) = ZIP_READERS.iter().find(|r| r.name == name) {
        return Some(Archive::open(blob).and_then(|zip| (reader.open)(zip, options)));
    }
    let reader = HDF5_READERS.iter().find(|r| r.name == name)?;
    Some(h5::open_blob(blob).and_then(|file| (reader.open)(&file, &H5Context { blob: blob.clone(), cache: options.cache.clone() })))
}

/// Where a model comes from.
pub enum Source<'a> {
    /// A file, a directory (SavedModel, checkpoints) or a checkpoint prefix.
    Path(&'a Path),
    /// `https://`, `s3://`, `hf://`.
    Url(&'a str, &'a RemoteOptions),
    /// Bytes held in memory (standard input).
    Bytes(Vec<u8>),
}

/// Opens a source and returns its model: the one entry into the readers.
pub fn open(source: Source, options: &ReadOptions) -> Result<Model, OpenError> {
    match source {
        Source::Path(path) => open_path(path, options),
        Source::Url(url, remote) => open_url(url, options, remote),
        Source::Bytes(bytes) => open_bytes(bytes, options),
    }
}

/// Opens SOURCE (a path) and returns its model.
fn open_path(path: &Path, options: &ReadOptions) -> Result<Model, OpenError> {
    // A path that exists is mounted as what it is (docs/tree.md 1); a checkpoint prefix names no
    // file itself, so it is the reading of a path where nothing exists.
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && checkpoint::is_prefix(path) => {
            return opened_as(TF_CHECKPOINT, checkpoint::open_prefix(path));
        }
        Err(e) => return Err(OpenError::unreadable(io_reason(&e))),
    };
    if let Some(prefix) = checkpoint::prefix_of_index(path) {
        return opened_as(TF_CHECKPOINT, checkpoint::open_prefix(&prefix));
    }
    if meta.is_dir() {
        return open_dir(&Dir::Local(path.to_path_buf()), options);
    }
    let file = SourceFile::open(path).map_err(|e| OpenError::unreadable(io_reason(&e)))?;
    open_blob(&Blob::File(Arc::new(file)), path.parent().map(|p| Dir::Local(p.to_path_buf())).as_ref(), options)
}

/// Opens a remote SOURCE (`https://`, `s3://`, `hf://`): a model file, a checkpoint's
/// `.index` or its prefix, with the files that belong with it found beside it, or a directory
/// (SavedModel, checkpoints) on a store that lists them.
fn open_url(url: &str, options: &ReadOptions, remote: &RemoteOptions) -> Result<Model, OpenError> {
    let source = RemoteSource::parse(url, remote, options.cache.clone())?;
    let dir = Dir::Remote(source.dir.clone());
    if source.name.is_empty() {
        return open_dir(&dir, options);
    }
    if let Some(stem) = source.name.strip_suffix(".index") {
        return opened_as(TF_CHECKPOINT, checkpoint::open_prefix_in(&dir, stem));
    }
    match source.dir.open(&source.name) {
        Ok(object) => open_blob(&Blob::Remote(object), Some(&dir), options),
        // A directory or a checkpoint prefix names no object itself. As locally, where a path
        // that exists is mounted as what it is, a directory (a prefix with objects below it)
        // wins over a checkpoint `NAME.index` beside it.
        Err(missing) => {
            if let Ok((entries, sub)) = dir.sub(&source.name).and_then(|sub| Ok((sub.list()?, sub)))
                && !entries.is_empty()
            {
                return open_dir(&sub, options);
            }
            if source.dir.open(&format!("{}.index", source.name)).is_ok() {
                return opened_as(TF_CHECKPOINT, checkpoint::open_prefix_in(&dir, &source.name));
            }
            Err(missing)
        }
    }
}

/// Opens a model held in memory (standard input): every format a file may hold, except those
/// that need files beside it.
fn open_bytes(bytes: Vec<u8>, options: &ReadOptions) -> Result<Model, OpenError> {
    open_blob(&Blob::Memory(Arc::new(bytes)), None, options)
}

/// A model that is a directory: the first directory reader that finds its format there.
fn open_dir(dir: &Dir, options: &ReadOptions) -> Result<Model, OpenError> {
    for reader in DIR_READERS {
        if let Some(model) = (reader.open)(dir, options)? {
            log::debug!("directory read as {}", reader.name);
            return opened_as(reader.format, Ok(model));
        }
    }
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
            dir.open(&e.name).is_ok_and(|blob| {
                let head = head_of(&blob);
                match choose(FILE_READERS, &Probe { head: &head, blob: &blob, dir: Some(dir) }).map(|r| r.name) {
                    None | Some("git-lfs-pointer") => false,
                    // Configs and tokenizers are JSON too: only a sharded weights index is a model.
                    Some("json-index") => e.name.ends_with(".index.json"),
                    Some(_) => !blob.is_empty(),
                }
            })
        })
        .map(|e| e.name)
        .collect();
    let named = match files.len() {
        0 => String::new(),
        n if n <= 8 => format!("; name one of its files: {}", files.join(", ")),
        n => format!("; name one of its files: {}, ... ({n} in all)", files[..8].join(", ")),
    };
    Err(OpenError::UnknownFormat(format!("directory holds no model wfs can read (no SavedModel or checkpoint){named}")))
}

/// `dir` is where files that belong with the source lie (the shards of a sharded index).
fn open_blob(blob: &Blob, dir: Option<&Dir>, options: &ReadOptions) -> Result<Model, OpenError> {
    if blob.is_empty() {
        return Err(OpenError::UnknownFormat("file is empty".into()));
    }
    let head = head_of(blob);
    match choose(FILE_READERS, &Probe { head: &head, blob, dir }) {
        Some(reader) => {
            log::debug!("read as {}", reader.name);
            opened_as(reader.format, (reader.open)(blob, dir, options))
        }
        None if bundle::has_table_magic(blob) => Err(OpenError::UnknownFormat(
            "looks like a TensorFlow checkpoint index, but its name does not end in .index".into(),
        )),
        None => Err(OpenError::UnknownFormat(
            "not a model file wfs can read (no HDF5, zip, PyTorch, safetensors, NumPy, GGUF, ONNX, TFLite, sharded-index JSON or checkpoint signature)".into(),
        )),
    }
}

/// A zip archive: the first zip reader its members fit.
fn open_zip(blob: &Blob, _: Option<&Dir>, options: &ReadOptions) -> Result<Model, OpenError> {
    let mut zip = Archive::open(blob)?;
    let reader = ZIP_READERS.iter().find(|r| (r.sniff)(&mut zip)).expect("the last zip reader takes any archive");
    log::debug!("zip read as {}", reader.name);
    opened_as(reader.format, (reader.open)(zip, options))
}

/// A JSON file: the first JSON reader that takes it.
fn open_json(blob: &Blob, dir: Option<&Dir>, options: &ReadOptions) -> Result<Model, OpenError> {
    let head = head_of(blob);
    let reader = choose(JSON_READERS, &Probe { head: &head, blob, dir }).expect("the last JSON reader takes any JSON file");
    log::debug!("JSON read as {}", reader.name);
    opened_as(reader.format, (reader.open)(blob, dir, options))
}

/// An HDF5 file: the first HDF5 reader its root group fits.
fn open_hdf5(blob: &Blob, _: Option<&Dir>, options: &ReadOptions) -> Result<Model, OpenError> {
    let file = h5::open_blob(blob)?;
    let ctx = H5Context { blob: blob.clone(), cache: options.cache.clone() };
    let reader = HDF5_READERS.iter().find(|r| (r.sniff)(&file)).expect("the last HDF5 reader takes any HDF5 file");
    log::debug!("HDF5 read as {}", reader.name);
    opened_as(reader.format, (reader.open)(&file, &ctx))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A name finds one reader (`fuzzing::open_format`, the fuzz targets): none may repeat.
    #[test]
    fn reader_names_are_unique_over_all_tables() {
        let names: Vec<&str> = FILE_READERS
            .iter()
            .chain(JSON_READERS)
            .map(|r| r.name)
            .chain(ZIP_READERS.iter().map(|r| r.name))
            .chain(HDF5_READERS.iter().map(|r| r.name))
            .chain(DIR_READERS.iter().map(|r| r.name))
            .collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }

    /// Each container's last row takes anything: the dispatch in `open_zip`, `open_json` and
    /// `open_hdf5` relies on it.
    #[test]
    fn every_container_table_ends_in_a_catch_all() {
        let blob = Blob::Memory(Arc::new(b"{}".to_vec()));
        assert!((JSON_READERS[JSON_READERS.len() - 1].sniff)(&Probe { head: b"{}", blob: &blob, dir: None }));
        let zip = {
            let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            writer.start_file("x.txt", zip::write::SimpleFileOptions::default()).unwrap();
            Blob::Memory(Arc::new(writer.finish().unwrap().into_inner()))
        };
        let mut archive = Archive::open(&zip).unwrap();
        assert!(ZIP_READERS[..ZIP_READERS.len() - 1].iter().all(|r| !(r.sniff)(&mut archive)));
        assert!((ZIP_READERS[ZIP_READERS.len() - 1].sniff)(&mut archive));
    }

    /// A model's `info.json` `format` comes from the row that opened it: every row but the
    /// containers (whose inner rows say it) and the Git LFS refusal names one.
    #[test]
    fn every_format_row_names_its_format() {
        let containers = ["zip-archive", "git-lfs-pointer", "json-index", "hdf5-file"];
        for reader in FILE_READERS.iter().chain(JSON_READERS) {
            assert_eq!(reader.format.is_empty(), containers.contains(&reader.name), "{}", reader.name);
        }
        let rows = ZIP_READERS.iter().map(|r| (r.name, r.format));
        let rows = rows.chain(HDF5_READERS.iter().map(|r| (r.name, r.format))).chain(DIR_READERS.iter().map(|r| (r.name, r.format)));
        for (name, format) in rows {
            assert!(!format.is_empty(), "{name}");
        }
    }
}
