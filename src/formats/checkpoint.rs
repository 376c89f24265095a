//! TensorFlow checkpoints (docs/formats/tensorflow.md#the-tensor-bundle): a prefix (`prefix.index` + `prefix.data-*`), its
//! `.index` file, or a directory of them (each under `<prefix>/`, with `latest` from the
//! `checkpoint` state file). The bundle itself is read by `tf_bundle`.

use super::bundle;
use super::tf_bundle::{self, Loaded, MAX_STRING_TOTAL};
use crate::error::OpenError;
use crate::model::{Model, ModelLink, Part};
use crate::source::{Blob, Dir, EntryKind, SourceFile};
use serde_json::{Map, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Most of a `checkpoint` state file read (real ones are a few hundred bytes).
const MAX_STATE_FILE: u64 = 1 << 20;

/// If `path` is a checkpoint's `.index` file, the checkpoint's prefix.
pub fn prefix_of_index(path: &Path) -> Option<PathBuf> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".index")?;
    is_index_file(path).then(|| path.with_file_name(stem))
}

/// True if `path` is a checkpoint prefix: `path.index` is a checkpoint index file.
pub fn is_prefix(path: &Path) -> bool {
    is_index_file(&index_path(path))
}

/// A regular file ending in the SSTable magic.
fn is_index_file(path: &Path) -> bool {
    path.is_file()
        && SourceFile::open(path).is_ok_and(|f| bundle::has_table_magic(&Blob::File(Arc::new(f))))
}

fn index_path(prefix: &Path) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".index");
    PathBuf::from(s)
}

/// One checkpoint, mounted at the top.
pub fn open_prefix(prefix: &Path) -> Result<Model, OpenError> {
    let (dir, stem) = split_prefix(prefix)?;
    open_prefix_in(&Dir::Local(dir), &stem)
}

/// The checkpoint `stem` (`stem.index` + `stem.data-*`) of `dir`, mounted at the top.
pub fn open_prefix_in(dir: &Dir, stem: &str) -> Result<Model, OpenError> {
    let mut model = Model::default();
    let mut budget = MAX_STRING_TOTAL;
    (model.info, model.skipped) = load(dir, stem, &[], &mut model, &mut budget)?;
    Ok(model)
}

fn split_prefix(prefix: &Path) -> Result<(PathBuf, String), OpenError> {
    let stem = prefix.file_name().and_then(|n| n.to_str()).ok_or_else(|| OpenError::unreadable("checkpoint prefix is not a UTF-8 file name"))?;
    Ok((prefix.parent().unwrap_or(Path::new(".")).to_path_buf(), stem.to_string()))
}

/// A directory's checkpoints: `None` if it holds none; one is mounted at the top, several each
/// under `<prefix>/` with their own `info.json`, plus `latest` naming the state file's choice.
pub fn open_dir(dir: &Dir) -> Result<Option<Model>, OpenError> {
    let mut prefixes: Vec<String> = dir
        .list()?
        .into_iter()
        .filter(|entry| entry.kind != EntryKind::Dir)
        .filter_map(|entry| entry.name.strip_suffix(".index").map(str::to_string))
        .filter(|stem| dir.open(&format!("{stem}.index")).is_ok_and(|index| bundle::has_table_magic(&index)))
        .collect();
    prefixes.sort();
    match prefixes.as_slice() {
        [] => Ok(None),
        [only] => open_prefix_in(dir, only).map(Some),
        _ => {
            let latest = latest_in_state_file(dir).filter(|l| prefixes.contains(l));
            let mut model = Model::default();
            let mut budget = MAX_STRING_TOTAL;
            for prefix in &prefixes {
                let mut info = Map::new();
                info.insert("format".into(), json!("tf-checkpoint"));
                info.insert("source".into(), json!(dir.shown(prefix)));
                let (fields, skipped) = load(dir, prefix, &[prefix], &mut model, &mut budget)?;
                info.extend(fields);
                model.parts.push(Part { path: vec![prefix.clone()], info, skipped });
            }
            model.info.insert("checkpoints".into(), json!(prefixes));
            if let Some(latest) = latest {
                model.info.insert("latest".into(), json!(latest));
                model.links.push(ModelLink { path: vec!["latest".into()], target: vec![latest] });
            }
            Ok(Some(model))
        }
    }
}

/// The file name of `model_checkpoint_path` in the directory's `checkpoint` state file
/// (protobuf text format; the path may be absolute, relative or from another OS).
fn latest_in_state_file(dir: &Dir) -> Option<String> {
    let state = dir.open("checkpoint").ok()?;
    let text = String::from_utf8(state.read_vec(0, state.len().min(MAX_STATE_FILE)).ok()?).ok()?;
    let line = text.lines().find_map(|l| l.trim().strip_prefix("model_checkpoint_path:"))?;
    let quoted = line.trim().strip_prefix('"')?.strip_suffix('"')?;
    let name = quoted.rsplit(['/', '\\']).next()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// Reads the checkpoint `stem` of `dir` into `model` below `under`; returns its info fields
/// and the entries it left out.
fn load(dir: &Dir, stem: &str, under: &[&str], model: &mut Model, budget: &mut u64) -> Result<Loaded, OpenError> {
    let mut beside = |suffix: &str| {
        let name = format!("{stem}{suffix}");
        dir.open(&name).map_err(|e| format!("{}: {e}", dir.shown(&name)))
    };
    tf_bundle::load_from(&mut beside, under, model, budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_names_latest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("checkpoint"), "model_checkpoint_path: \"C:\\\\runs\\\\ckpt-9\"\n").unwrap();
        assert_eq!(latest_in_state_file(&Dir::Local(dir.path().to_path_buf())).as_deref(), Some("ckpt-9"));
        std::fs::write(dir.path().join("checkpoint"), "model_checkpoint_path: \"/abs/model.ckpt\"\n").unwrap();
        assert_eq!(latest_in_state_file(&Dir::Local(dir.path().to_path_buf())).as_deref(), Some("model.ckpt"));
    }
}
