//! Pre-GGUF ggml files (docs/formats/ggml-legacy.md): llama.cpp's `ggml`, `ggmf` v1 and `ggjt`
//! v1-v3, whisper.cpp's `ggml` and rwkv.cpp's `ggmf` v100/v101. A magic, hyperparameters, a
//! vocabulary (and whisper's mel filters), then tensors until the end of the file, each with
//! its own small header (dims innermost first, as GGUF). The family is told from the header:
//! rwkv.cpp's version numbers, whisper's mel filter count repeating its hyperparameter. Tensors
//! are served exactly as GGUF's (`ggml_tensors::tensor`); quantized blocks only where they are today's
//! layout (ggjt v3, ggml files whose ftype says quantization version 2), the older block
//! layouts are listed in `skipped`. Hyperparameters and vocabulary go into `metadata.json`.

use super::ggml_tensors::{TensorInfo, tensor};
use super::le_cursor::LeCursor;
use super::options::ReadOptions;
use crate::dtype::DType;
use crate::error::OpenError;
use crate::ggml::{GgmlType, type_of};
use crate::model::{Extent, Model, SkippedTensor, Tensor, TensorId};
use crate::source::Blob;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// The magics as they lie on disk (the u32 `0x67676d6c` "ggml" written little-endian).
pub const MAGICS: [&[u8; 4]; 3] = [b"lmgg", b"fmgg", b"tjgg"];
/// Tokens a vocabulary may hold (real ones hold up to about 256k).
const MAX_VOCAB: u64 = 1 << 22;
/// Longest token or tensor name read.
const MAX_NAME: u64 = 1 << 16;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: i32 = 4;
/// whisper.cpp's ftype carries the quantization version times this.
const QNT_VERSION_FACTOR: i32 = 1000;

#[derive(Clone, Copy, PartialEq)]
enum Family {
    Llama,
    Whisper,
    Rwkv,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama.cpp",
            Family::Whisper => "whisper.cpp",
            Family::Rwkv => "rwkv.cpp",
        }
    }
    fn hparams(self) -> &'static [&'static str] {
        match self {
            Family::Llama => &["n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype"],
            Family::Whisper => &[
                "n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer", "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer",
                "n_mels", "ftype",
            ],
            Family::Rwkv => &["n_vocab", "n_embed", "n_layer", "data_type"],
        }
    }
}

/// rwkv.cpp's own type ids, as ggml type ids (`None`: removed formats).
fn rwkv_type(id: u32) -> Option<u32> {
    match id {
        0 => Some(0),
        1 => Some(1),
        2 => Some(2),
        3 => Some(3),
        7 => Some(6),
        8 => Some(7),
        9 => Some(8),
        _ => None,
    }
}

/// (elements, bytes) of a quantized block before ggml's May 2023 changes (ggjt v1/v2, ggmf,
/// whisper's quantization versions 0 and 1): Q4_0/Q4_1/Q8_0 scales were f32 then; the removed
/// Q4_2 and Q4_3 were blocks of 16. Only used to step over such tensors.
fn old_block(id: u32) -> Option<(u64, u64)> {
    Some(match id {
        2 => (32, 20),
        3 => (32, 24),
        4 => (16, 10),
        5 => (16, 12),
        6 => (32, 22),
        7 => (32, 24),
        8 => (32, 36),
        _ => return None,
    })
}

/// A vocabulary: (token, score) in order.
type Vocab = Vec<(Vec<u8>, Option<f32>)>;

fn vocab(cur: &mut LeCursor, count: u64, scores: bool) -> Result<Vocab, OpenError> {
    if count > MAX_VOCAB {
        return Err(cur.corrupt(format!("a vocabulary of {count} tokens (at most {MAX_VOCAB})")));
    }
    cur.check_count(count, 4, "tokens")?;
    let mut tokens = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = u64::from(cur.u32("token length")?);
        if len > MAX_NAME {
            return Err(cur.corrupt(format!("a token of {len} bytes")));
        }
        let token = cur.bytes(len, "token")?.to_vec();
        let score = if scores { Some(cur.f32("token score")?) } else { None };
        tokens.push((token, score));
    }
    Ok(tokens)
}

fn vocab_json(tokens: &[(Vec<u8>, Option<f32>)]) -> Value {
    let mut out = Map::new();
    out.insert("n_vocab".into(), json!(tokens.len()));
    out.insert("tokens".into(), tokens.iter().map(|(t, _)| Value::from(String::from_utf8_lossy(t))).collect());
    if tokens.iter().all(|(_, s)| s.is_some()) && !tokens.is_empty() {
        out.insert("scores".into(), tokens.iter().map(|(_, s)| json!(s.unwrap_or(0.0))).collect());
    }
    Value::Object(out)
}

pub fn read(blob: &Blob, options: &ReadOptions) -> Result<Model, OpenError> {
    let mut cur = LeCursor::new(blob, "ggml");
    let magic_bytes: [u8; 4] = cur.bytes(4, "magic")?.try_into().expect("4 bytes");
    let magic = match &magic_bytes {
        b"lmgg" => "ggml",
        b"fmgg" => "ggmf",
        b"tjgg" => "ggjt",
        _ => return Err(OpenError::UnknownFormat("not a legacy ggml file".into())),
    };
    let version = if magic == "ggml" { None } else { Some(cur.u32("version")?) };
    let family = match (magic, version) {
        ("ggmf", Some(100 | 101)) => Family::Rwkv,
        ("ggmf", Some(1)) | ("ggjt", Some(1..=3)) => Family::Llama,
        ("ggml", None) => {
            // whisper.cpp: eleven hyperparameters, then the mel filter count again (n_mels).
            let head = blob.read_vec(4, 48.min(blob.len().saturating_sub(4))).map_err(|e| OpenError::unreadable(e.to_string()))?;
            let word = |i: usize| head.get(i * 4..i * 4 + 4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")));
            if word(9).is_some() && word(9) == word(11) { Family::Whisper } else { Family::Llama }
        }
        (magic, version) => return Err(OpenError::corrupt(format!("ggml: {magic} version {version:?} is not one wfs knows (ggmf 1, 100, 101; ggjt 1-3)"))),
    };
    let mut hparams = Map::new();
    let mut values = Vec::new();
    for name in family.hparams() {
        let value = cur.i32(name)?;
        hparams.insert(name.to_string(), json!(value));
        values.push(value);
    }
    let n_vocab = u64::try_from(values[0]).map_err(|_| cur.corrupt(format!("n_vocab is {}", values[0])))?;
    let mut metadata = Map::new();
    metadata.insert("magic".into(), json!(magic));
    metadata.insert("version".into(), json!(version));
    metadata.insert("family".into(), json!(family.name()));
    metadata.insert("hparams".into(), Value::Object(hparams.clone()));
    let mut model = Model::default();
    match family {
        Family::Llama => {
            let tokens = vocab(&mut cur, n_vocab, magic != "ggml")?;
            metadata.insert("vocab".into(), vocab_json(&tokens));
        }
        Family::Whisper => {
            let (n_mel, n_fft) = (cur.i32("n_mel")?, cur.i32("n_fft")?);
            let shape = [n_mel, n_fft].map(|d| u64::try_from(d).unwrap_or(u64::MAX)).to_vec();
            let len = Tensor::raw_size(DType::F32, &shape).ok_or_else(|| cur.corrupt(format!("mel filters of {n_mel} x {n_fft}")))?;
            let offset = cur.pos;
            cur.skip(len, "mel filters")?;
            model.tensors.push(Tensor::named("mel_filters", DType::F32, shape, Arc::new(Extent { blob: blob.clone(), offset, len })));
            let count = cur.i32("vocabulary size")?;
            let count = u64::try_from(count).map_err(|_| cur.corrupt(format!("vocabulary of {count} tokens")))?;
            let tokens = vocab(&mut cur, count, false)?;
            metadata.insert("vocab".into(), vocab_json(&tokens));
        }
        // rwkv.cpp files hold no vocabulary.
        Family::Rwkv => {}
    }
    let ftype = *values.last().expect("every family has hyperparameters");
    // Today's block layouts: ggjt v3, and ggml/whisper files quantized at version 2 or later.
    let current_blocks = match family {
        Family::Rwkv => version == Some(101),
        _ => (magic == "ggjt" && version == Some(3)) || (magic == "ggml" && ftype / QNT_VERSION_FACTOR >= 2),
    };
    let mut infos = Vec::new();
    while cur.remaining() > 0 {
        let index = infos.len();
        let n_dims = cur.i32("tensor dims")?;
        let name_len = cur.i32("tensor name length")?;
        let stored_type = cur.i32("tensor type")?;
        if !(0..=MAX_DIMS).contains(&n_dims) || !(0..=MAX_NAME as i32).contains(&name_len) || stored_type < 0 {
            return Err(cur.corrupt(format!("tensor {index}: {n_dims} dimensions, a name of {name_len} bytes, type {stored_type}")));
        }
        let dims: Vec<u64> = (0..n_dims).map(|_| cur.i32("tensor dimension").map(|d| u64::try_from(d).unwrap_or(u64::MAX))).collect::<Result<_, _>>()?;
        let name = String::from_utf8_lossy(cur.bytes(name_len as u64, "tensor name")?).into_owned();
        if magic == "ggjt" {
            let pad = cur.pos.next_multiple_of(32) - cur.pos;
            cur.skip(pad, "alignment padding")?;
        }
        let stored_type = stored_type as u32;
        let kind = if family == Family::Rwkv { rwkv_type(stored_type) } else { Some(stored_type) };
        let shape: Vec<u64> = dims.iter().rev().copied().collect();
        let count = Tensor::element_count(&shape);
        let (len, skip) = match kind.map(type_of) {
            Some(Ok(GgmlType::Plain(dtype))) => (Tensor::raw_size(dtype, &shape), false),
            Some(Ok(GgmlType::Quantized(quant))) if current_blocks => (count.and_then(|n| (n / u64::from(quant.elems())).checked_mul(quant.bytes().into())), false),
            _ => (old_block(kind.unwrap_or(u32::MAX)).and_then(|(elems, bytes)| count.and_then(|n| (n / elems).checked_mul(bytes))), true),
        };
        let Some(len) = len else {
            return Err(cur.corrupt(format!("tensor '{name}': type {stored_type} has no size wfs knows, so the tensors after it cannot be found")));
        };
        cur.skip(len, &format!("tensor '{name}' data"))?;
        let offset = cur.pos - len;
        if skip {
            let reason = format!("{magic}{} quantized blocks (type {stored_type}) predate ggml's current layouts (May 2023)", version.map_or(String::new(), |v| format!(" v{v}")));
            model.skipped.push(SkippedTensor::new(TensorId::Name(name), reason));
            continue;
        }
        infos.push(TensorInfo { name, dims, kind: kind.expect("sized above"), offset });
    }
    let starts: Vec<u64> = infos.iter().map(|t| t.offset).collect();
    for info in &infos {
        let (tensor, _) = tensor(blob, info, 0, &starts, false, options)?;
        model.tensors.push(tensor);
    }
    model.info.insert("magic".into(), json!(magic));
    model.info.insert("version".into(), json!(version));
    model.info.insert("family".into(), json!(family.name()));
    model.info.insert("hparams".into(), Value::Object(hparams));
    model.add_json(vec!["metadata.json".into()], &Value::Object(metadata));
    Ok(model)
}
