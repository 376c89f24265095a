//! Row-major quantized weights with a grid of scales: compressed-tensors (pack-quantized,
//! int-quantized, float-quantized), FP8 with block scales (DeepSeek-V3 `weight_scale_inv`) and
//! MLX (docs/formats/quantized.md#compressed-tensors, #fp8-block-scales, #mlx). A run of rows
//! reads the same rows of the packed weight.

use super::{Found, Layer, Part, Stored, Unfit, Unpack, Whole, config_u64, f32_at, field, is_float, read_rows, shape_str, u32_at};
use crate::dtype::DType;
use crate::error::ReadError;
use crate::model::Tensor;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// How the integer or float codes of a row are stored.
enum Codes {
    /// `bits`-bit fields of one least-significant-bit-first stream of `words` int32 words a
    /// row, stored offset to unsigned by `offset` (compressed-tensors `pack_to_int32`).
    Packed { part: Part, words: u64, bits: u32, offset: i32 },
    /// One signed byte a value.
    Int8(Part),
    /// One 8-bit float a value.
    Float8(Part),
}

impl Codes {
    /// The codes of rows `[first, first + rows)`, `cols` a row, as float32 values.
    fn rows(&self, first: u64, rows: u64, cols: u64, out: &mut [f32]) -> Result<(), ReadError> {
        match self {
            Codes::Packed { part, words, bits, offset } => {
                let data = read_rows(part, first, rows, words * 4)?;
                for (j, row) in out.chunks_exact_mut(cols as usize).enumerate() {
                    let base = j * *words as usize;
                    for (k, value) in row.iter_mut().enumerate() {
                        *value = (field(|w| u32_at(&data, base + w), k as u64 * u64::from(*bits), *bits) as i32 - offset) as f32;
                    }
                }
            }
            Codes::Int8(part) => {
                let data = read_rows(part, first, rows, cols)?;
                for (value, &b) in out.iter_mut().zip(&data) {
                    *value = f32::from(b as i8);
                }
            }
            Codes::Float8(part) => {
                let data = read_rows(part, first, rows, cols)?;
                part.dtype.widen(&data, out);
            }
        }
        Ok(())
    }
}

/// Which scale (and zero point) a weight element uses: element `(n, k)` takes cell
/// `(n / rows_per, k / cols_per)` (or `g_idx[k]` for the column) of a grid `cols` cells wide.
#[derive(Clone, Copy)]
struct Grid {
    rows_per: u64,
    cols_per: u64,
    cols: u64,
}

/// Zero points on the scales' grid.
enum Zeros {
    /// compressed-tensors' packing along dim 0: cell `(r, c)` is the field at bit `bits * r`
    /// of column `c` read as one stream, offset to unsigned.
    PackedColumns { whole: Whole, bits: u32 },
    /// One signed byte a cell.
    Int8(Whole),
}

/// `W[n][k] = (code − zero) × scale` over a grid of scales: compressed-tensors and FP8 layers.
struct Scaled {
    codes: Codes,
    cols: u64,
    grid: Grid,
    scales: Whole,
    zeros: Option<Zeros>,
    g_idx: Option<Whole>,
}

impl Unpack for Scaled {
    fn rows(&self, first: u64, out: &mut [f32]) -> Result<(), ReadError> {
        let n = out.len() as u64 / self.cols;
        self.codes.rows(first, n, self.cols, out)?;
        let scales = self.scales.get()?;
        let zeros = match &self.zeros {
            Some(Zeros::PackedColumns { whole, .. } | Zeros::Int8(whole)) => Some(whole.get()?),
            None => None,
        };
        let cell_cols: Vec<usize> = match self.g_idx.as_ref().map(Whole::get).transpose()? {
            Some(g) => (0..self.cols as usize)
                .map(|k| match u32_at(&g, k) as u64 {
                    c if c < self.grid.cols => Ok(c as usize),
                    c => Err(ReadError::Corrupt(format!("g_idx[{k}] = {c}, past the {} groups", self.grid.cols))),
                })
                .collect::<Result<_, _>>()?,
            None => (0..self.cols).map(|k| (k / self.grid.cols_per) as usize).collect(),
        };
        let grid_cols = self.grid.cols as usize;
        let (mut scale, mut zero) = (vec![0f32; grid_cols], vec![0f32; grid_cols]);
        for (j, row) in out.chunks_exact_mut(self.cols as usize).enumerate() {
            let r = ((first + j as u64) / self.grid.rows_per) as usize;
            for c in 0..grid_cols {
                scale[c] = f32_at(&scales, r * grid_cols + c);
                zero[c] = match (&self.zeros, &zeros) {
                    (Some(Zeros::PackedColumns { bits, .. }), Some(z)) => {
                        (field(|w| u32_at(z, w * grid_cols + c), r as u64 * u64::from(*bits), *bits) as i32 - (1 << (bits - 1))) as f32
                    }
                    (Some(Zeros::Int8(_)), Some(z)) => f32::from(z[r * grid_cols + c] as i8),
                    _ => 0.0,
                };
            }
            for (value, &c) in row.iter_mut().zip(&cell_cols) {
                *value = (*value - zero[c]) * scale[c];
            }
        }
        Ok(())
    }
}

/// The grid a scale of `shape` spans over a `[rows, cols]` weight, for compressed-tensors'
/// strategies; `None` if the shape does not fit.
fn grid_of(strategy: &str, shape: &[u64], rows: u64, cols: u64, group: Option<u64>, block: Option<[u64; 2]>) -> Option<Grid> {
    let whole = Grid { rows_per: rows.max(1), cols_per: cols.max(1), cols: 1 };
    let grid = match strategy {
        "tensor" => whole,
        "channel" => Grid { rows_per: 1, ..whole },
        "group" => {
            let g = group.filter(|&g| g > 0)?;
            Grid { rows_per: 1, cols_per: g, cols: cols.div_ceil(g) }
        }
        "block" => {
            let [bh, bw] = block.filter(|b| b[0] > 0 && b[1] > 0)?;
            Grid { rows_per: bh, cols_per: bw, cols: cols.div_ceil(bw) }
        }
        _ => return None,
    };
    let cells = rows.div_ceil(grid.rows_per) * grid.cols;
    let fits = match strategy {
        "tensor" => shape.iter().product::<u64>() == 1,
        _ => shape == [rows.div_ceil(grid.rows_per), grid.cols] || (grid.cols == 1 && shape == [cells]),
    };
    fits.then_some(grid)
}

/// The `[rows, cols]` block sizes of a config value such as `[128, 128]`.
fn block_size(value: Option<&Value>) -> Option<[u64; 2]> {
    let b = value?.as_array()?;
    Some([b.first()?.as_u64()?, b.get(1)?.as_u64()?])
}

/// compressed-tensors layers: modules with `weight_packed` (pack-quantized) or with `weight`
/// and `weight_scale` (int- and float-quantized), each read with the first config group whose
/// weight arguments fit its tensors.
pub(crate) fn find_compressed(stored: &Stored, tensors: &[Tensor], config: &Value) -> Found {
    let global_format = config.get("format").and_then(Value::as_str).unwrap_or("pack-quantized");
    let groups: Vec<(&str, &Value)> = config
        .get("config_groups")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(_, g)| Some((g.get("format").and_then(Value::as_str).unwrap_or(global_format), g.get("weights")?)))
        .collect();
    let mut info = Map::new();
    info.insert("method".into(), json!("compressed-tensors"));
    info.insert("format".into(), json!(global_format));
    info.insert("config_groups".into(), Value::Array(groups.iter().map(|(_, w)| (*w).clone()).collect()));
    let mut modules: Vec<&str> = stored.modules_with(tensors, ".weight_packed");
    modules.extend(stored.modules_with(tensors, ".weight_scale").into_iter().filter(|m| stored.part(&format!("{m}.weight")).is_some()));
    let layers = modules
        .into_iter()
        .map(|module| {
            let weight = format!("{module}.weight");
            let mut why = format!("no config group fits {weight}");
            for (format, args) in &groups {
                match compressed_layer(stored, module, &weight, format, args) {
                    Ok(layer) => return Ok(layer),
                    Err(unfit) => why = unfit.why,
                }
            }
            Err(Unfit::new(&weight, why))
        })
        .collect();
    Found { info, layers }
}

fn compressed_layer(stored: &Stored, module: &str, weight: &str, format: &str, args: &Value) -> Result<Layer, Unfit> {
    let unfit = |why: String| Unfit::new(weight, why);
    let bits = config_u64(args, "num_bits").unwrap_or(8);
    let kind = args.get("type").and_then(Value::as_str).unwrap_or("int");
    let strategy = args.get("strategy").and_then(Value::as_str).unwrap_or("tensor");
    let scale = stored.require(weight, &format!("{module}.weight_scale"))?;
    let mut parts = vec![scale.name.clone()];
    let (codes, rows, cols) = match format {
        "pack-quantized" if kind == "int" && (1..=8).contains(&bits) => {
            let packed = stored.require(weight, &format!("{module}.weight_packed"))?;
            let shape_part = stored.require(weight, &format!("{module}.weight_shape"))?;
            let shape = shape_values(&shape_part).ok_or_else(|| unfit(format!("{} is not two integers", shape_part.name)))?;
            let [rows, cols] = shape;
            let words = (cols * bits).div_ceil(32);
            if packed.dtype != DType::I32 || packed.shape != [rows, words] {
                return Err(unfit(format!("{} is {} {}, where int32 [{rows}, {words}] holds {bits}-bit [{rows}, {cols}]", packed.name, packed.dtype.name(), shape_str(&packed.shape))));
            }
            parts.extend([packed.name.clone(), shape_part.name.clone()]);
            (Codes::Packed { part: packed, words, bits: bits as u32, offset: 1 << (bits - 1) }, rows, cols)
        }
        "int-quantized" | "naive-quantized" | "float-quantized" => {
            let w = stored.require(weight, weight)?;
            let [rows, cols] = w.shape[..] else { return Err(unfit(format!("{weight} is {}, not 2-d", shape_str(&w.shape)))) };
            let codes = match (kind, w.dtype) {
                ("int", DType::I8) => Codes::Int8(w.clone()),
                ("float", DType::F8E4M3FN | DType::F8E5M2) => Codes::Float8(w.clone()),
                _ => return Err(unfit(format!("{weight} is {}, not {kind} {bits}-bit", w.dtype.name()))),
            };
            parts.push(w.name.clone());
            (codes, rows, cols)
        }
        other => return Err(unfit(format!("compressed-tensors format {other:?} ({kind} {bits}-bit) is not dequantized"))),
    };
    let group = config_u64(args, "group_size");
    let block = block_size(args.get("block_structure"));
    let grid = grid_of(strategy, &scale.shape, rows, cols, group, block)
        .filter(|_| is_float(scale.dtype))
        .ok_or_else(|| unfit(format!("{} is {} {}, which fits no {strategy} scale of [{rows}, {cols}]", scale.name, scale.dtype.name(), shape_str(&scale.shape))))?;
    let grid_rows = rows.div_ceil(grid.rows_per);
    let zeros = match stored.part(&format!("{module}.weight_zero_point")) {
        None => None,
        Some(z) if z.dtype == DType::I32 && z.shape == [(grid_rows * bits).div_ceil(32), grid.cols] => {
            parts.push(z.name.clone());
            Some(Zeros::PackedColumns { whole: Whole::raw(z, stored.cache), bits: bits as u32 })
        }
        Some(z) if z.dtype == DType::I8 && z.shape.iter().product::<u64>() == grid_rows * grid.cols => {
            parts.push(z.name.clone());
            Some(Zeros::Int8(Whole::raw(z, stored.cache)))
        }
        Some(z) => return Err(unfit(format!("{} is {} {}, which fits no zero point of scale {}", z.name, z.dtype.name(), shape_str(&z.shape), shape_str(&scale.shape)))),
    };
    let g_idx = match stored.part(&format!("{module}.weight_g_idx")) {
        None => None,
        Some(g) if g.dtype == DType::I32 && g.shape == [cols] => {
            parts.push(g.name.clone());
            Some(Whole::raw(g, stored.cache))
        }
        Some(g) => return Err(unfit(format!("{} is {} {}, where int32 [{cols}] was due", g.name, g.dtype.name(), shape_str(&g.shape)))),
    };
    let unpack = Scaled { codes, cols, grid, scales: Whole::floats(scale, stored.cache), zeros, g_idx };
    Ok(Layer { name: weight.to_string(), shape: vec![rows, cols], parts, unpack: Arc::new(unpack) })
}

/// The two values of a `weight_shape` tensor (int64 or int32).
fn shape_values(part: &Part) -> Option<[u64; 2]> {
    let bytes = part.read_all().ok()?;
    let values: Vec<u64> = match part.dtype {
        DType::I64 => bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()) as u64).collect(),
        DType::I32 => bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap_or_default()) as u64).collect(),
        _ => return None,
    };
    match values[..] {
        [rows, cols] if rows < 1 << 40 && cols < 1 << 40 => Some([rows, cols]),
        _ => None,
    }
}

/// FP8 layers with block scales: every 8-bit float `X.weight` with an `X.weight_scale_inv`
/// (which, despite its name, multiplies), in blocks of `weight_block_size` (128 x 128).
pub(crate) fn find_fp8(stored: &Stored, tensors: &[Tensor], config: &Value) -> Found {
    let block = block_size(config.get("weight_block_size")).unwrap_or([128, 128]);
    let mut info = Map::new();
    info.insert("method".into(), json!("fp8"));
    info.insert("fmt".into(), config.get("fmt").cloned().unwrap_or(json!("e4m3")));
    info.insert("weight_block_size".into(), json!(block));
    let layers = stored
        .modules_with(tensors, ".weight_scale_inv")
        .into_iter()
        .map(|module| {
            let weight = format!("{module}.weight");
            let unfit = |why: String| Unfit::new(&weight, why);
            let w = stored.require(&weight, &weight)?;
            let scale = stored.require(&weight, &format!("{weight}_scale_inv"))?;
            let [rows, cols] = w.shape[..] else { return Err(unfit(format!("{weight} is {}, not 2-d", shape_str(&w.shape)))) };
            if !matches!(w.dtype, DType::F8E4M3FN | DType::F8E5M2) {
                return Err(unfit(format!("{weight} is {}, not an 8-bit float", w.dtype.name())));
            }
            let grid = grid_of("block", &scale.shape, rows, cols, None, Some(block))
                .filter(|_| is_float(scale.dtype))
                .ok_or_else(|| unfit(format!("{} is {} {}, where [{}, {}] was due", scale.name, scale.dtype.name(), shape_str(&scale.shape), rows.div_ceil(block[0]), cols.div_ceil(block[1]))))?;
            let parts = vec![w.name.clone(), scale.name.clone()];
            let unpack = Scaled { codes: Codes::Float8(w), cols, grid, scales: Whole::floats(scale, stored.cache), zeros: None, g_idx: None };
            Ok(Layer { name: weight.clone(), shape: vec![rows, cols], parts, unpack: Arc::new(unpack) })
        })
        .collect();
    Found { info, layers }
}

/// MLX layers (affine mode): every module with `weight` (uint32), `scales` and `biases`, read
/// with the config's `bits` and `group_size` or the module's own entry.
pub(crate) fn find_mlx(stored: &Stored, tensors: &[Tensor], config: &Value) -> Found {
    let mode = config.get("mode").and_then(Value::as_str).unwrap_or("affine");
    let mut info = Map::new();
    info.insert("method".into(), json!("mlx"));
    info.insert("mode".into(), json!(mode));
    info.insert("bits".into(), config.get("bits").cloned().unwrap_or(Value::Null));
    info.insert("group_size".into(), config.get("group_size").cloned().unwrap_or(Value::Null));
    let layers = stored
        .modules_with(tensors, ".biases")
        .into_iter()
        .filter(|m| config.get(*m) != Some(&Value::Bool(false)))
        .map(|module| {
            let weight = format!("{module}.weight");
            // A module's own entry overrides the global bits and group size.
            let own = config.get(module).filter(|v| v.is_object()).unwrap_or(config);
            let (bits, group) = (config_u64(own, "bits").unwrap_or(4), config_u64(own, "group_size").unwrap_or(64));
            if mode != "affine" {
                return Err(Unfit::new(&weight, format!("MLX {mode} mode is not dequantized (only affine)")));
            }
            mlx_layer(stored, module, &weight, bits, group)
        })
        .collect();
    Found { info, layers }
}

fn mlx_layer(stored: &Stored, module: &str, weight: &str, bits: u64, group: u64) -> Result<Layer, Unfit> {
    let unfit = |why: String| Unfit::new(weight, why);
    let w = stored.require(weight, weight)?;
    let scales = stored.require(weight, &format!("{module}.scales"))?;
    let biases = stored.require(weight, &format!("{module}.biases"))?;
    if !matches!(bits, 2..=8) || group == 0 {
        return Err(unfit(format!("{bits}-bit groups of {group} are not an MLX affine quantization")));
    }
    let Some((&words, outer)) = w.shape.split_last().filter(|_| w.dtype == DType::U32) else {
        return Err(unfit(format!("{weight} is {} {}, not uint32 [..., out, packed]", w.dtype.name(), shape_str(&w.shape))));
    };
    if !(words * 32).is_multiple_of(bits) || !(words * 32 / bits).is_multiple_of(group) {
        return Err(unfit(format!("{weight}'s {words} words a row hold no whole number of {bits}-bit groups of {group}")));
    }
    let cols = words * 32 / bits;
    let grid_shape: Vec<u64> = outer.iter().copied().chain([cols / group]).collect();
    for part in [&scales, &biases] {
        if part.shape != grid_shape || !is_float(part.dtype) {
            return Err(unfit(format!("{} is {} {}, where float {} was due", part.name, part.dtype.name(), shape_str(&part.shape), shape_str(&grid_shape))));
        }
    }
    let shape = outer.iter().copied().chain([cols]).collect();
    let parts = vec![w.name.clone(), scales.name.clone(), biases.name.clone()];
    let unpack = Mlx { weight: w, words, cols, bits: bits as u32, group, scales: Whole::floats(scales, stored.cache), biases: Whole::floats(biases, stored.cache) };
    Ok(Layer { name: weight.to_string(), shape, parts, unpack: Arc::new(unpack) })
}

/// An MLX affine layer: each row one least-significant-bit-first stream of unsigned
/// `bits`-bit values; `W = scale × q + bias` per group of `group` values.
struct Mlx {
    weight: Part,
    words: u64,
    cols: u64,
    bits: u32,
    group: u64,
    scales: Whole,
    biases: Whole,
}

impl Unpack for Mlx {
    fn rows(&self, first: u64, out: &mut [f32]) -> Result<(), ReadError> {
        let n = out.len() as u64 / self.cols;
        let data = read_rows(&self.weight, first, n, self.words * 4)?;
        let (scales, biases) = (self.scales.get()?, self.biases.get()?);
        let groups = (self.cols / self.group) as usize;
        for (j, row) in out.chunks_exact_mut(self.cols as usize).enumerate() {
            let base = j * self.words as usize;
            let cell = (first as usize + j) * groups;
            for (k, value) in row.iter_mut().enumerate() {
                let q = field(|w| u32_at(&data, base + w), k as u64 * u64::from(self.bits), self.bits);
                let c = cell + k / self.group as usize;
                *value = f32_at(&scales, c) * q as f32 + f32_at(&biases, c);
            }
        }
        Ok(())
    }
}
