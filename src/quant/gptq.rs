//! GPTQ (AutoGPTQ, GPTQModel) and AWQ (AutoAWQ GEMM) layers (docs/formats/quantized.md#gptq,
//! #awq): `qweight` and `qzeros` packed in int32 words, `scales`, and GPTQ's `g_idx`. Both store
//! the weight transposed (`[in, out]`), so a run of output rows is a band of columns of every
//! packed row.

use super::{Found, Layer, Part, Stored, Unfit, Unpack, Whole, config_u64, f32_at, field, is_float, read_columns, shape_str, u32_at};
use crate::dtype::DType;
use crate::error::ReadError;
use crate::model::Tensor;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Output rows decoded together at least: each run reads a band of every packed row.
const MIN_ROWS: u64 = 64;

/// The parts every GPTQ and AWQ layer has, checked for type and rank.
struct Packed {
    qweight: Part,
    qzeros: Part,
    scales: Part,
}

fn packed(stored: &Stored, module: &str, weight: &str) -> Result<Packed, Unfit> {
    let qweight = stored.require(weight, &format!("{module}.qweight"))?;
    let qzeros = stored.require(weight, &format!("{module}.qzeros"))?;
    let scales = stored.require(weight, &format!("{module}.scales"))?;
    for part in [&qweight, &qzeros] {
        if !matches!(part.dtype, DType::I32 | DType::U32) || part.shape.len() != 2 {
            return Err(Unfit::new(weight, format!("{} is {} {}, not a 2-d int32 tensor", part.name, part.dtype.name(), shape_str(&part.shape))));
        }
    }
    if !is_float(scales.dtype) || scales.shape.len() != 2 {
        return Err(Unfit::new(weight, format!("{} is {} {}, not a 2-d float tensor", scales.name, scales.dtype.name(), shape_str(&scales.shape))));
    }
    Ok(Packed { qweight, qzeros, scales })
}

/// GPTQ layers: every module with a `qweight`, read as `config` says (bits, group size,
/// checkpoint format).
pub(crate) fn find_gptq(stored: &Stored, tensors: &[Tensor], config: &Value) -> Found {
    let bits = config_u64(config, "bits").unwrap_or(4);
    let group_size = config.get("group_size").and_then(Value::as_i64).unwrap_or(-1);
    let format = ["checkpoint_format", "format"].iter().find_map(|k| config.get(*k).and_then(Value::as_str)).unwrap_or("gptq");
    let format = if config.get("is_marlin_format").and_then(Value::as_bool) == Some(true) { "marlin" } else { format };
    let mut info = Map::new();
    info.insert("method".into(), json!("gptq"));
    info.insert("bits".into(), json!(bits));
    info.insert("group_size".into(), json!(group_size));
    info.insert("desc_act".into(), config.get("desc_act").cloned().unwrap_or(json!(false)));
    info.insert("sym".into(), config.get("sym").cloned().unwrap_or(json!(true)));
    info.insert("checkpoint_format".into(), json!(format));
    let refusal = match format {
        "gptq" | "gptq_v2" if matches!(bits, 2 | 3 | 4 | 8) => None,
        "gptq" | "gptq_v2" => Some(format!("{bits}-bit GPTQ is not a GPTQ width (2, 3, 4, 8)")),
        // Marlin permutes 16x64 tiles for its kernel; no reference unpacks them to read.
        "marlin" => Some("the Marlin layout (tiles permuted for its kernel) is not dequantized".into()),
        other => Some(format!("checkpoint format {other:?} is not one wfs dequantizes")),
    };
    let layers = stored
        .modules_with(tensors, ".qweight")
        .into_iter()
        .map(|module| {
            let weight = format!("{module}.weight");
            if let Some(why) = &refusal {
                return Err(Unfit::new(&weight, why.clone()));
            }
            gptq_layer(stored, module, &weight, bits as u32, group_size, format == "gptq")
        })
        .collect();
    Found { info, layers }
}

fn gptq_layer(stored: &Stored, module: &str, weight: &str, bits: u32, group_size: i64, v1: bool) -> Result<Layer, Unfit> {
    let Packed { qweight, qzeros, scales } = packed(stored, module, weight)?;
    let unfit = |why: String| Unfit::new(weight, why);
    let (packed_rows, out) = (qweight.shape[0], qweight.shape[1]);
    if packed_rows * 32 % u64::from(bits) != 0 {
        return Err(unfit(format!("{} has {packed_rows} rows, which hold no whole number of {bits}-bit values", qweight.name)));
    }
    let inn = packed_rows * 32 / u64::from(bits);
    let groups = scales.shape[0];
    if scales.shape[1] != out || groups == 0 {
        return Err(unfit(format!("{} is {}, where [groups, {out}] was due", scales.name, shape_str(&scales.shape))));
    }
    if out * u64::from(bits) % 32 != 0 || qzeros.shape != [groups, out * u64::from(bits) / 32] {
        return Err(unfit(format!("{} is {}, where [{groups}, {out} x {bits} / 32] was due", qzeros.name, shape_str(&qzeros.shape))));
    }
    let group = if group_size <= 0 { inn } else { group_size as u64 };
    let g_idx = match stored.part(&format!("{module}.g_idx")) {
        Some(g) if g.shape == [inn] && matches!(g.dtype, DType::I32 | DType::U32) => Some(Whole::raw(g, stored.cache)),
        Some(g) => return Err(unfit(format!("{} is {} {}, where int32 [{inn}] was due", g.name, g.dtype.name(), shape_str(&g.shape)))),
        None if inn.div_ceil(group) != groups => {
            return Err(unfit(format!("{} has {groups} groups, where {inn} inputs in groups of {group} make {}", scales.name, inn.div_ceil(group))));
        }
        None => None,
    };
    let mut parts = vec![qweight.name.clone(), qzeros.name.clone(), scales.name.clone()];
    parts.extend(g_idx.as_ref().map(|g| g.part_name().to_string()));
    let unpack = Gptq {
        qweight,
        out,
        inn,
        bits,
        groups,
        group,
        v1,
        scales: Whole::floats(scales, stored.cache),
        zeros: Whole::raw(qzeros, stored.cache),
        g_idx,
    };
    Ok(Layer { name: weight.to_string(), shape: vec![out, inn], parts, unpack: Arc::new(unpack) })
}

/// A GPTQ layer: input `k` of output `n` is the `bits`-bit field at bit `bits * k` of column
/// `n` of `qweight` read as one stream; its zero is the field at bit `bits * n` of row `group`
/// of `qzeros`, plus one in the v1 format (masked, as AutoGPTQ's torch path does).
struct Gptq {
    qweight: Part,
    out: u64,
    inn: u64,
    bits: u32,
    groups: u64,
    /// Inputs per group when there is no `g_idx`.
    group: u64,
    v1: bool,
    scales: Whole,
    zeros: Whole,
    g_idx: Option<Whole>,
}

impl Unpack for Gptq {
    fn min_rows(&self) -> u64 {
        MIN_ROWS
    }

    fn rows(&self, first: u64, out: &mut [f32]) -> Result<(), ReadError> {
        let n = out.len() / self.inn as usize;
        let band = read_columns(&self.qweight, self.out * 4, first * 4, n as u64 * 4)?;
        let (scales, zeros) = (self.scales.get()?, self.zeros.get()?);
        let g_idx = self.g_idx.as_ref().map(Whole::get).transpose()?;
        let group_of: Vec<usize> = match &g_idx {
            Some(g) => (0..self.inn as usize)
                .map(|k| match u32_at(g, k) as u64 {
                    gr if gr < self.groups => Ok(gr as usize),
                    gr => Err(ReadError::Corrupt(format!("g_idx[{k}] = {gr}, past the {} groups", self.groups))),
                })
                .collect::<Result<_, _>>()?,
            None => (0..self.inn).map(|k| (k / self.group) as usize).collect(),
        };
        let mask = (1u32 << self.bits) - 1;
        let zero_words = (self.out * u64::from(self.bits) / 32) as usize;
        let (mut scale, mut zero) = (vec![0f32; self.groups as usize], vec![0f32; self.groups as usize]);
        let mut column = vec![0u32; band.len() / 4 / n.max(1)];
        for (j, row) in out.chunks_exact_mut(self.inn as usize).enumerate() {
            let col = first + j as u64;
            for gr in 0..self.groups as usize {
                scale[gr] = f32_at(&scales, gr * self.out as usize + col as usize);
                let z = field(|w| u32_at(&zeros, gr * zero_words + w), col * u64::from(self.bits), self.bits);
                zero[gr] = (if self.v1 { (z + 1) & mask } else { z }) as f32;
            }
            // This output's column of packed words, gathered once.
            for (w, word) in column.iter_mut().enumerate() {
                *word = u32_at(&band, w * n + j);
            }
            for (k, value) in row.iter_mut().enumerate() {
                let q = field(|w| column[w], k as u64 * u64::from(self.bits), self.bits);
                let gr = group_of[k];
                *value = scale[gr] * (q as f32 - zero[gr]);
            }
        }
        Ok(())
    }
}

/// AWQ layers (GEMM layout, 4 bits): every module with a `qweight`.
pub(crate) fn find_awq(stored: &Stored, tensors: &[Tensor], config: &Value) -> Found {
    let bits = config_u64(config, "bits").or_else(|| config_u64(config, "w_bit")).unwrap_or(4);
    let group_size = ["group_size", "q_group_size"].iter().find_map(|k| config.get(*k).and_then(Value::as_i64)).unwrap_or(128);
    let version = config.get("version").and_then(Value::as_str).unwrap_or("gemm").to_ascii_lowercase();
    let mut info = Map::new();
    info.insert("method".into(), json!("awq"));
    info.insert("bits".into(), json!(bits));
    info.insert("group_size".into(), json!(group_size));
    info.insert("version".into(), json!(version));
    info.insert("zero_point".into(), config.get("zero_point").cloned().unwrap_or(json!(true)));
    let refusal = match (version.as_str(), bits) {
        ("gemm", 4) => None,
        ("gemm", _) => Some(format!("{bits}-bit AWQ: the GEMM layout is 4-bit only")),
        // Packed for the llm-awq kernels; their order is not verified against a reference.
        (other, _) => Some(format!("the AWQ {other} layout is not dequantized (only gemm)")),
    };
    let layers = stored
        .modules_with(tensors, ".qweight")
        .into_iter()
        .map(|module| {
            let weight = format!("{module}.weight");
            match &refusal {
                Some(why) => Err(Unfit::new(&weight, why.clone())),
                None => awq_layer(stored, module, &weight, group_size),
            }
        })
        .collect();
    Found { info, layers }
}

fn awq_layer(stored: &Stored, module: &str, weight: &str, group_size: i64) -> Result<Layer, Unfit> {
    let Packed { qweight, qzeros, scales } = packed(stored, module, weight)?;
    let unfit = |why: String| Unfit::new(weight, why);
    let (inn, out) = (qweight.shape[0], qweight.shape[1] * 8);
    let group = if group_size <= 0 { inn } else { group_size as u64 };
    let groups = inn.div_ceil(group);
    if scales.shape != [groups, out] {
        return Err(unfit(format!("{} is {}, where [{groups}, {out}] was due", scales.name, shape_str(&scales.shape))));
    }
    if qzeros.shape != [groups, out / 8] {
        return Err(unfit(format!("{} is {}, where [{groups}, {}] was due", qzeros.name, shape_str(&qzeros.shape), out / 8)));
    }
    let parts = vec![qweight.name.clone(), qzeros.name.clone(), scales.name.clone()];
    let unpack = Awq { qweight, out, inn, group, scales: Whole::floats(scales, stored.cache), zeros: Whole::raw(qzeros, stored.cache) };
    Ok(Layer { name: weight.to_string(), shape: vec![out, inn], parts, unpack: Arc::new(unpack) })
}

/// Which nibble of a word holds output column `8c + j`: AutoAWQ's `AWQ_REVERSE_ORDER`
/// (its packing puts column `8c + [0, 2, 4, 6, 1, 3, 5, 7][i]` in nibble `i`).
const AWQ_NIBBLE: [u32; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// An AWQ GEMM layer: input `k` of output `n` is nibble `AWQ_NIBBLE[n % 8]` of
/// `qweight[k][n / 8]`; zeros likewise in `qzeros[k / group]`, stored as they are.
struct Awq {
    qweight: Part,
    out: u64,
    inn: u64,
    group: u64,
    scales: Whole,
    zeros: Whole,
}

impl Unpack for Awq {
    fn row_align(&self) -> u64 {
        8
    }

    fn min_rows(&self) -> u64 {
        MIN_ROWS
    }

    fn rows(&self, first: u64, out: &mut [f32]) -> Result<(), ReadError> {
        let n = out.len() / self.inn as usize;
        let words = n.div_ceil(8);
        let band = read_columns(&self.qweight, self.out / 8 * 4, first / 8 * 4, words as u64 * 4)?;
        let (scales, zeros) = (self.scales.get()?, self.zeros.get()?);
        let groups = self.inn.div_ceil(self.group) as usize;
        let (mut scale, mut zero) = (vec![0f32; groups], vec![0f32; groups]);
        for (j, row) in out.chunks_exact_mut(self.inn as usize).enumerate() {
            let col = (first as usize) + j;
            let shift = 4 * AWQ_NIBBLE[col % 8];
            for gr in 0..groups {
                scale[gr] = f32_at(&scales, gr * self.out as usize + col);
                zero[gr] = ((u32_at(&zeros, gr * (self.out / 8) as usize + col / 8) >> shift) & 15) as f32;
            }
            for (k, value) in row.iter_mut().enumerate() {
                let q = (u32_at(&band, k * words + j / 8) >> shift) & 15;
                let gr = k / self.group as usize;
                *value = (q as f32 - zero[gr]) * scale[gr];
            }
        }
        Ok(())
    }
}
