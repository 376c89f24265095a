//! MXNet `.params` files (`mx.nd.save`, Gluon's `save_parameters`, Module checkpoints;
//! docs/formats/mxnet.md): a list of NDArrays and their names, each array's bytes served in
//! place. Module checkpoints name arrays `arg:<name>` / `aux:<name>`: those go below `arg/`
//! and `aux/`. The graph beside it (`<stem>-symbol.json`) is `graph.json`.

use super::le_cursor::LeCursor;
use crate::dtype::DType;
use crate::error::OpenError;
use crate::model::{Extent, Model, Tensor, split_name};
use crate::source::{Blob, Dir};
use serde_json::{Value, json};
use std::sync::Arc;

/// `kMXAPINDArrayListMagic`, then a reserved u64 of 0.
pub const LIST_MAGIC: [u8; 16] = [0x12, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const V1_MAGIC: u32 = 0xF993_FAC8;
const V2_MAGIC: u32 = 0xF993_FAC9;
const V3_MAGIC: u32 = 0xF993_FACA;
/// More dimensions than any MXNet build accepts (`TShape` allows 32 when numpy-compatible).
const MAX_DIMS: u64 = 32;
/// Longest array name read.
const MAX_NAME: u64 = 1 << 16;
/// Largest graph file read.
const MAX_SYMBOL: u64 = 64 << 20;

/// mshadow's type flags (`include/mshadow/base.h`).
fn dtype_of(flag: i32) -> Option<DType> {
    Some(match flag {
        0 => DType::F32,
        1 => DType::F64,
        2 => DType::F16,
        3 => DType::U8,
        4 => DType::I32,
        5 => DType::I8,
        6 => DType::I64,
        7 => DType::Bool,
        8 => DType::I16,
        9 => DType::U16,
        10 => DType::U32,
        11 => DType::U64,
        12 => DType::BF16,
        _ => return None,
    })
}

/// One array as stored: its dtype and shape and where its bytes lie; `None` for an array
/// saved empty (no shape), which holds no bytes.
struct Array {
    dtype: DType,
    shape: Vec<u64>,
    offset: u64,
    len: u64,
}

/// `TShape::Load`: u32 ndim then i64 dims (`ndim` -1, or a dim -1, is an unknown shape).
fn shape(cur: &mut LeCursor, ndim: u64, wide: bool) -> Result<Option<Vec<u64>>, OpenError> {
    if ndim > MAX_DIMS {
        return Err(cur.corrupt(format!("an array has {ndim} dimensions (at most {MAX_DIMS})")));
    }
    let mut dims = Vec::with_capacity(ndim as usize);
    let mut known = true;
    for _ in 0..ndim {
        let dim = if wide { cur.i64("dimension")? } else { i64::from(cur.u32("dimension")?) };
        known &= dim >= 0;
        dims.push(dim.max(0) as u64);
    }
    Ok(known.then_some(dims))
}

fn array(cur: &mut LeCursor, index: u64) -> Result<Option<Array>, OpenError> {
    let magic = cur.u32("array magic")?;
    let dims = match magic {
        V2_MAGIC | V3_MAGIC => {
            let stype = cur.i32("storage type")?;
            if stype != 0 {
                return Err(cur.corrupt(format!("array {index} is sparse (storage type {stype}): only dense arrays are read")));
            }
            let ndim = cur.i32("ndim")?;
            // Before numpy semantics (V2) no dimensions meant an empty array; V3 says that
            // with -1, and 0 dimensions is a scalar.
            if ndim < 0 || (ndim == 0 && magic == V2_MAGIC) {
                return Ok(None);
            }
            shape(cur, ndim as u64, true)?
        }
        V1_MAGIC => {
            let ndim = cur.u32("ndim")?;
            if ndim == 0 {
                return Ok(None);
            }
            shape(cur, ndim.into(), true)?
        }
        // The oldest layout: the magic is the dimension count, dimensions are u32.
        ndim => {
            if ndim == 0 {
                return Ok(None);
            }
            shape(cur, ndim.into(), false)?
        }
    };
    let Some(dims) = dims else { return Ok(None) };
    let _device = (cur.i32("device type")?, cur.i32("device id")?);
    let flag = cur.i32("type flag")?;
    let dtype = dtype_of(flag).ok_or_else(|| cur.corrupt(format!("array {index} has type flag {flag}, which MXNet does not define")))?;
    let len = Tensor::raw_size(dtype, &dims).ok_or_else(|| cur.corrupt(format!("array {index}: shape {dims:?} overflows")))?;
    let offset = cur.pos;
    cur.skip(len, &format!("array {index}'s data"))?;
    Ok(Some(Array { dtype, shape: dims, offset, len }))
}

/// The tree path of a named array: `arg:`/`aux:` become directories, the rest splits like
/// any tensor name.
fn tensor_path(name: &str) -> Vec<String> {
    match name.split_once(':') {
        Some((kind @ ("arg" | "aux"), rest)) => split_name("tensors", &format!("{kind}/{rest}")),
        _ => split_name("tensors", name),
    }
}

/// The graph beside a `.params` file: `<stem>-symbol.json` as Module checkpoints and Gluon's
/// `export` write it (`<stem>-0000.params`), or `<stem>.json`.
fn symbol_beside(blob: &Blob, dir: Option<&Dir>) -> Option<(String, Vec<u8>)> {
    let dir = dir?;
    let name = blob.file_name()?;
    let stem = name.strip_suffix(".params")?;
    let epochless = stem.rsplit_once('-').filter(|(_, epoch)| epoch.len() == 4 && epoch.bytes().all(|b| b.is_ascii_digit())).map_or(stem, |(s, _)| s);
    [format!("{epochless}-symbol.json"), format!("{stem}.json")].into_iter().find_map(|candidate| {
        let file = dir.open(&candidate).ok().filter(|f| f.len() <= MAX_SYMBOL)?;
        let bytes = file.read_vec(0, file.len()).ok()?;
        serde_json::from_slice::<Value>(&bytes).ok().filter(|v| v.get("nodes").is_some())?;
        Some((candidate, bytes))
    })
}

pub fn read(blob: &Blob, dir: Option<&Dir>) -> Result<Model, OpenError> {
    let mut cur = LeCursor::new(blob, "mxnet");
    if cur.bytes(16, "list header")? != LIST_MAGIC {
        return Err(cur.corrupt("not an NDArray list (magic 0x112 and a reserved 0)"));
    }
    let count = cur.u64("array count")?;
    // The smallest array is its 4-byte magic.
    cur.check_count(count, 4, "arrays")?;
    // Grown as arrays parse: a count is only a claim until the file holds them.
    let mut arrays = Vec::new();
    for index in 0..count {
        arrays.push(array(&mut cur, index)?);
    }
    let name_count = cur.u64("name count")?;
    if name_count != 0 && name_count != count {
        return Err(cur.corrupt(format!("{name_count} names for {count} arrays")));
    }
    cur.check_count(name_count, 8, "names")?;
    let mut names = Vec::new();
    for _ in 0..name_count {
        let len = cur.u64("name length")?;
        if len > MAX_NAME {
            return Err(cur.corrupt(format!("a name of {len} bytes (at most {MAX_NAME})")));
        }
        let name = String::from_utf8(cur.bytes(len, "name")?.to_vec()).map_err(|_| cur.corrupt("an array name is not UTF-8"))?;
        names.push(name);
    }
    if cur.remaining() != 0 {
        return Err(cur.corrupt(format!("{} bytes follow the last name", cur.remaining())));
    }
    let mut model = Model::default();
    let mut empty = Vec::new();
    for (index, stored) in arrays.into_iter().enumerate() {
        // An unnamed list (`mx.nd.save` of a list) names its arrays by position.
        let name = names.get(index).cloned().unwrap_or_else(|| index.to_string());
        let Some(stored) = stored else {
            empty.push(Value::from(name));
            continue;
        };
        let bytes = Arc::new(Extent { blob: blob.clone(), offset: stored.offset, len: stored.len });
        model.tensors.push(Tensor { name: name.clone(), ..Tensor::new(tensor_path(&name), stored.dtype, stored.shape, bytes) });
    }
    model.info.insert("arrays".into(), json!(count));
    if !empty.is_empty() {
        model.info.insert("empty_arrays".into(), Value::Array(empty));
    }
    if let Some((name, graph)) = symbol_beside(blob, dir) {
        model.info.insert("symbol".into(), Value::from(name));
        model.add_file(vec!["graph.json".into()], graph);
    }
    Ok(model)
}
