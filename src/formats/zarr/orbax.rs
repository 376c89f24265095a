//! Orbax checkpoints (docs/formats/jax.md#orbax): a checkpoint item directory (`_METADATA`,
//! one zarr array per leaf), a step directory (`_CHECKPOINT_METADATA` and its items), or a
//! directory of steps, each step a part. Leaves are named by their pytree path, read from
//! `_METADATA`'s key lists (a `.` inside a key makes the directory names ambiguous).

use crate::formats::ReadOptions;
use super::{DirStore, Store};
use crate::error::OpenError;
use crate::model::{Model, Part, SkippedTensor, TensorId};
use crate::source::{Dir, EntryKind};
use serde_json::{Map, Value as Json, json};
use std::sync::Arc;

/// Largest metadata file read (`_METADATA` of a checkpoint of many thousand leaves fits).
const MAX_METADATA: u64 = 256 << 20;

fn read_json(dir: &Dir, name: &str) -> Result<Option<Json>, OpenError> {
    if !dir.has_file(name) {
        return Ok(None);
    }
    let blob = dir.open(name)?;
    if blob.len() > MAX_METADATA {
        return Err(OpenError::corrupt(format!("{name} of {} bytes", blob.len())));
    }
    let text = blob.read_vec(0, blob.len()).map_err(|e| OpenError::unreadable(e.to_string()))?;
    serde_json::from_slice(&text).map(Some).map_err(|e| OpenError::corrupt(format!("{name} is not JSON: {e}")))
}

/// The subdirectories of `dir` holding `file`, in name order.
fn subdirs_with(dir: &Dir, file: &str) -> Result<Vec<String>, OpenError> {
    let mut found = Vec::new();
    for entry in dir.list()? {
        if entry.kind == EntryKind::Dir && dir.sub(&entry.name)?.has_file(file) {
            found.push(entry.name);
        }
    }
    Ok(found)
}

pub fn open_dir(dir: &Dir, options: &ReadOptions) -> Result<Option<Model>, OpenError> {
    let mut model = Model::default();
    if dir.has_file("_METADATA") {
        let skipped = load_item(dir, &[], None, &mut model, options)?;
        model.skipped = skipped;
        return Ok(Some(model));
    }
    if dir.has_file("_CHECKPOINT_METADATA") {
        model.skipped = load_step(dir, &[], &mut model, options)?;
        return Ok(Some(model));
    }
    let steps = subdirs_with(dir, "_CHECKPOINT_METADATA")?;
    if steps.is_empty() {
        return Ok(None);
    }
    for step in &steps {
        let under = [step.clone()];
        let skipped = load_step(&dir.sub(step)?, &under, &mut model, options)?;
        let mut info = Map::new();
        info.insert("source".into(), json!(dir.shown(step)));
        model.parts.push(Part { path: under.to_vec(), info, skipped });
    }
    model.info.insert("steps".into(), json!(steps));
    Ok(Some(model))
}

/// A step directory: `_CHECKPOINT_METADATA` and its items (one, or several named items).
fn load_step(dir: &Dir, under: &[String], model: &mut Model, options: &ReadOptions) -> Result<Vec<SkippedTensor>, OpenError> {
    let mut items = subdirs_with(dir, "_METADATA")?;
    if dir.has_file("_METADATA") {
        items.insert(0, String::new());
    }
    let mut path = under.to_vec();
    path.push("metadata.json".into());
    let checkpoint = read_json(dir, "_CHECKPOINT_METADATA")?.unwrap_or(Json::Null);
    let mut skipped = Vec::new();
    match items.as_slice() {
        [] => return Err(OpenError::corrupt("an Orbax step directory without an item (no _METADATA)")),
        [only] => {
            let item = if only.is_empty() { dir.clone() } else { dir.sub(only)? };
            skipped = load_item(&item, under, Some(checkpoint), model, options)?;
        }
        several => {
            model.add_json(path, &json!({ "_CHECKPOINT_METADATA": checkpoint, "items": several }));
            for item in several {
                let mut below = under.to_vec();
                below.push(item.clone());
                skipped.extend(load_item(&dir.sub(item)?, &below, None, model, options)?);
            }
        }
    }
    Ok(skipped)
}

/// One checkpoint item (`_METADATA` and its arrays): each leaf a tensor at
/// `under/tensors/<pytree path>`; `metadata.json` holds the item's metadata files.
fn load_item(dir: &Dir, under: &[String], checkpoint: Option<Json>, model: &mut Model, options: &ReadOptions) -> Result<Vec<SkippedTensor>, OpenError> {
    let metadata = read_json(dir, "_METADATA")?.ok_or_else(|| OpenError::corrupt("no _METADATA"))?;
    let tree = metadata["tree_metadata"].as_object().ok_or_else(|| OpenError::corrupt("_METADATA has no tree_metadata"))?;
    let mut files = Map::new();
    if let Some(checkpoint) = checkpoint {
        files.insert("_CHECKPOINT_METADATA".into(), checkpoint);
    }
    files.insert("_METADATA".into(), metadata.clone());
    for extra in ["_sharding", "_strings.json"] {
        if let Some(value) = read_json(dir, extra)? {
            files.insert(extra.into(), value);
        }
    }
    let mut path = under.to_vec();
    path.push("metadata.json".into());
    model.add_json(path, &Json::Object(files));

    let store: Arc<dyn Store> = Arc::new(DirStore(dir.clone()));
    let ocdbt = dir.has_file("manifest.ocdbt");
    let mut skipped = Vec::new();
    for entry in tree.values() {
        let keys: Option<Vec<String>> = entry["key_metadata"].as_array().and_then(|keys| {
            keys.iter().map(|k| k["key"].as_str().map(str::to_string).or_else(|| k["key"].as_i64().map(|i| i.to_string()))).collect()
        });
        let Some(keys) = keys.filter(|k| !k.is_empty()) else {
            skipped.push(SkippedTensor::new(TensorId::Name(String::new()), "a _METADATA entry without keys"));
            continue;
        };
        let name = keys.join("/");
        let value_type = entry["value_metadata"]["value_type"].as_str().unwrap_or("");
        if value_type == "string" {
            continue; // In _strings.json, shown in metadata.json.
        }
        if ocdbt {
            skipped.push(SkippedTensor::new(TensorId::Name(name), "stored in OCDBT, which wfs does not read yet"));
            continue;
        }
        let param = keys.join(".");
        let tree_path: Vec<String> = under.iter().cloned().chain(std::iter::once("tensors".to_string())).chain(keys.iter().cloned()).collect();
        if let Err(reason) = super::add_array(model, &store, &format!("{param}/"), &name, tree_path, &options.cache) {
            skipped.push(SkippedTensor::new(TensorId::Name(name), format!("{value_type}: {reason}")));
        }
    }
    Ok(skipped)
}
