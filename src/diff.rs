//! `wfs diff`: two models compared tensor by tensor, whatever their formats. Tensors are paired
//! (by name, tree path, order or unique shape, plus a map of name pairs), then each pair's
//! values are read as their `.npy` holds them, in bounded chunks, and compared in float64.

use crate::dtype::{DType, f16_to_f32};
use crate::error::ReadError;
use crate::model::Tensor;
use crate::tree::Tree;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};

/// Elements compared per chunk: with both sides' bytes and their float64 values, a few MiB.
const CHUNK_ELEMENTS: u64 = 1 << 17;
/// Side of the square tiles in which a transposed pair is compared.
const TILE: u64 = 256;

/// How the tensors of A and B are paired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchBy {
    /// The tensor's own name (`tensors.tsv`'s `name` column).
    Name,
    /// The tensor's path in the tree.
    Path,
    /// The n-th tensor of A with the n-th of B, in source order.
    Order,
    /// Tensors whose shape (or, for matrices, transposed shape) is unique on both sides.
    Shape,
}

impl MatchBy {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchBy::Name => "name",
            MatchBy::Path => "path",
            MatchBy::Order => "order",
            MatchBy::Shape => "shape",
        }
    }
}

pub struct Options {
    pub match_by: MatchBy,
    /// (A name, B name) pairs taken before matching; a name is a tensor's name or tree path.
    pub map: Vec<(String, String)>,
    /// Only the tensors whose name or path this glob (`*`, `?`) matches.
    pub only: Option<String>,
    pub rtol: f64,
    pub atol: f64,
    pub nan_equal: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("--map line {line}: {name:?} names no tensor of {side} (or one already paired)")]
    MapName { line: usize, name: String, side: char },
    #[error("--map line {line}: expected two names, A's and B's, separated by a tab or spaces")]
    MapLine { line: usize },
    /// The report could not be written.
    #[error(transparent)]
    Write(#[from] std::io::Error),
    #[error("{name}: {source}")]
    Read {
        name: String,
        #[source]
        source: ReadError,
    },
}

/// One model to compare: its tree and each tensor's path in it.
pub struct Side<'a> {
    pub tree: &'a Tree,
    paths: Vec<String>,
}

impl<'a> Side<'a> {
    pub fn new(tree: &'a Tree) -> Side<'a> {
        Side { tree, paths: tree.tensor_paths() }
    }

    fn tensor(&self, id: usize) -> &Tensor {
        &self.tree.tensors[id]
    }

    fn name(&self, id: usize) -> &str {
        &self.tree.tensors[id].name
    }

    fn key(&self, id: usize, by: MatchBy) -> &str {
        if by == MatchBy::Path { &self.paths[id] } else { self.name(id) }
    }

    fn selected(&self, id: usize, only: Option<&str>) -> bool {
        only.is_none_or(|glob| glob_match(glob.as_bytes(), self.name(id).as_bytes()) || glob_match(glob.as_bytes(), self.paths[id].as_bytes()))
    }

    /// The first tensor named or placed at `name` that `free` allows.
    fn find(&self, name: &str, free: impl Fn(usize) -> bool) -> Option<usize> {
        (0..self.paths.len()).find(|&id| free(id) && (self.name(id) == name || self.paths[id] == name))
    }
}

/// A map file: one `A_NAME B_NAME` pair a line (tab-separated when a name holds spaces);
/// blank lines and `#` comments skipped.
pub fn parse_map(text: &str) -> Result<Vec<(String, String)>, DiffError> {
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = if line.contains('\t') { line.split('\t').collect() } else { line.split_whitespace().collect() };
        match fields[..] {
            [a, b] if !a.is_empty() && !b.is_empty() => pairs.push((a.to_string(), b.to_string())),
            _ => return Err(DiffError::MapLine { line: i + 1 }),
        }
    }
    Ok(pairs)
}

/// A tensor of A and its partner in B (tensor ids); `None` on the side that has none.
pub type Pair = (Option<usize>, Option<usize>);

/// The pairs to compare, as (tensor of A, tensor of B): A's tensors in source order, each with
/// its partner if any, then B's tensors that have none.
pub fn pair(a: &Side, b: &Side, options: &Options) -> Result<Vec<Pair>, DiffError> {
    let only = options.only.as_deref();
    let a_ids: Vec<usize> = (0..a.paths.len()).filter(|&i| a.selected(i, only)).collect();
    let b_ids: Vec<usize> = (0..b.paths.len()).filter(|&i| b.selected(i, only)).collect();
    let mut partner: Vec<Option<usize>> = vec![None; a.paths.len()];
    let mut taken = vec![false; b.paths.len()];
    let (a_in, b_in): (Vec<bool>, Vec<bool>) = ((0..a.paths.len()).map(|i| a.selected(i, only)).collect(), (0..b.paths.len()).map(|i| b.selected(i, only)).collect());
    for (line, (name_a, name_b)) in options.map.iter().enumerate() {
        let missing = |name: &str, side| DiffError::MapName { line: line + 1, name: name.to_string(), side };
        let ia = a.find(name_a, |i| a_in[i] && partner[i].is_none()).ok_or_else(|| missing(name_a, 'A'))?;
        let ib = b.find(name_b, |i| b_in[i] && !taken[i]).ok_or_else(|| missing(name_b, 'B'))?;
        partner[ia] = Some(ib);
        taken[ib] = true;
    }
    let free_a: Vec<usize> = a_ids.iter().copied().filter(|&i| partner[i].is_none()).collect();
    let free_b: Vec<usize> = b_ids.iter().copied().filter(|&i| !taken[i]).collect();
    let found: Vec<(usize, usize)> = match options.match_by {
        MatchBy::Name | MatchBy::Path => {
            let mut by_key: HashMap<&str, VecDeque<usize>> = HashMap::new();
            for &ib in &free_b {
                by_key.entry(b.key(ib, options.match_by)).or_default().push_back(ib);
            }
            free_a.iter().filter_map(|&ia| Some((ia, by_key.get_mut(a.key(ia, options.match_by))?.pop_front()?))).collect()
        }
        MatchBy::Order => free_a.iter().copied().zip(free_b.iter().copied()).collect(),
        MatchBy::Shape => {
            // Shapes unique on both sides first, then, among the matrices left, a shape
            // unique in A whose transpose is unique in B.
            let first: Vec<(usize, usize)> = pair_unique(&free_a, &free_b, |i| a.tensor(i).shape.clone(), |i| b.tensor(i).shape.clone());
            let left_a: Vec<usize> = free_a.iter().copied().filter(|i| a.tensor(*i).shape.len() == 2 && !first.iter().any(|p| p.0 == *i)).collect();
            let left_b: Vec<usize> = free_b.iter().copied().filter(|i| !first.iter().any(|p| p.1 == *i)).collect();
            let transposed = pair_unique(&left_a, &left_b, |i| a.tensor(i).shape.iter().rev().copied().collect(), |i| b.tensor(i).shape.clone());
            first.into_iter().chain(transposed).collect()
        }
    };
    for (ia, ib) in found {
        partner[ia] = Some(ib);
        taken[ib] = true;
    }
    let mut pairs: Vec<Pair> = a_ids.iter().map(|&ia| (Some(ia), partner[ia])).collect();
    pairs.extend(b_ids.iter().filter(|&&ib| !taken[ib]).map(|&ib| (None, Some(ib))));
    Ok(pairs)
}

/// Pairs of a tensor of `a` and one of `b` whose keys are the same and held by no other of
/// their side.
fn pair_unique(a: &[usize], b: &[usize], key_a: impl Fn(usize) -> Vec<u64>, key_b: impl Fn(usize) -> Vec<u64>) -> Vec<(usize, usize)> {
    let unique = |ids: &[usize], key: &dyn Fn(usize) -> Vec<u64>| {
        let mut seen: HashMap<Vec<u64>, Option<usize>> = HashMap::new();
        for &i in ids {
            seen.entry(key(i)).and_modify(|one| *one = None).or_insert(Some(i));
        }
        seen
    };
    let unique_b = unique(b, &key_b);
    let mut pairs: Vec<(usize, usize)> = unique(a, &key_a).into_iter().filter_map(|(key, one)| Some((one?, (*unique_b.get(&key)?)?))).collect();
    pairs.sort_unstable();
    pairs
}

/// `*` any run of characters (`/` included), `?` any one; everything else itself.
fn glob_match(glob: &[u8], text: &[u8]) -> bool {
    let (mut g, mut t) = (0, 0);
    // Where the last `*` was, and the text position it now stands for up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match glob.get(g) {
            Some(b'*') => {
                star = Some((g, t));
                g += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                g += 1;
                t += 1;
            }
            _ => match star {
                Some((sg, st)) => {
                    star = Some((sg, st + 1));
                    g = sg + 1;
                    t = st + 1;
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == b'*')
}

/// What a pair (or an unpaired tensor) turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Same dtype, every value equal (NaN to NaN only with `--nan-equal`).
    Equal,
    /// Every value within the tolerance.
    Close,
    Different,
    OnlyA,
    OnlyB,
    /// Shapes differ (and are not each other's transpose).
    Shape,
    /// Values of these dtypes cannot be compared (a string and a number, real and complex).
    Dtype,
}

impl Status {
    pub const ALL: [Status; 7] = [Status::Equal, Status::Close, Status::Different, Status::OnlyA, Status::OnlyB, Status::Shape, Status::Dtype];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Equal => "equal",
            Status::Close => "close",
            Status::Different => "different",
            Status::OnlyA => "only-a",
            Status::OnlyB => "only-b",
            Status::Shape => "shape",
            Status::Dtype => "dtype",
        }
    }

    /// Whether the pair counts as a difference (exit status 1).
    pub fn differs(self) -> bool {
        !matches!(self, Status::Equal | Status::Close)
    }

    fn summary(self) -> &'static str {
        match self {
            Status::OnlyA => "only in A",
            Status::OnlyB => "only in B",
            Status::Shape => "shapes differ",
            Status::Dtype => "dtypes incomparable",
            other => other.as_str(),
        }
    }
}

/// Statistics of a numeric pair. Differences are over the pairs of finite values; NaN and
/// infinities count only in `differing` (and in the status).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub elements: u64,
    /// Elements whose values are not equal (NaN never equals NaN without `--nan-equal`).
    pub differing: u64,
    pub max_abs: f64,
    /// Largest |a - b| / |b| where b is not zero.
    pub max_rel: f64,
    /// Root mean square of a - b.
    pub rms: f64,
    /// a . b / (|a| |b|); `None` where a norm is zero.
    pub cosine: Option<f64>,
}

/// One row of the report.
pub struct Row {
    pub a: Option<usize>,
    pub b: Option<usize>,
    pub status: Status,
    /// B's matrix is A's transposed, and was compared as such.
    pub transposed: bool,
    pub stats: Option<Stats>,
}

/// Compares one pair; `progress` gets the bytes read after each chunk.
pub fn compare(a: &Tensor, b: &Tensor, options: &Options, progress: &mut dyn FnMut(u64)) -> Result<(Status, bool, Option<Stats>), ReadError> {
    let transposed = a.shape.len() == 2 && a.shape[0] != a.shape[1] && a.shape.iter().rev().eq(&b.shape);
    if a.shape != b.shape && !transposed {
        return Ok((Status::Shape, false, None));
    }
    match (values_per_element(a), values_per_element(b)) {
        (Some(va), Some(vb)) if va == vb => {
            let mut sums = Sums::default();
            if transposed {
                compare_transposed(a, b, va, options, &mut sums, progress)?;
            } else {
                compare_in_order(a, b, options, &mut sums, progress)?;
            }
            let status = match sums.differing == 0 && a.dtype == b.dtype {
                true => Status::Equal,
                false if sums.outside == 0 => Status::Close,
                false => Status::Different,
            };
            Ok((status, transposed, Some(sums.stats())))
        }
        _ if a.dtype == b.dtype && !transposed => {
            let same = same_raw_bytes(a, b, progress)?;
            Ok((if same { Status::Equal } else { Status::Different }, false, None))
        }
        _ => Ok((Status::Dtype, transposed, None)),
    }
}

/// Float64 values per element of a tensor with numeric `.npy` data (two for complex numbers),
/// or `None` (strings, quantized blocks no reader decodes).
fn values_per_element(t: &Tensor) -> Option<usize> {
    t.npy_data_len()?;
    match t.dtype {
        DType::Str(_) => None,
        DType::C64 | DType::C128 => Some(2),
        _ => Some(1),
    }
}

/// Appends the float64 values of `.npy` data bytes of `dtype` to `out`.
fn push_values(dtype: DType, bytes: &[u8], out: &mut Vec<f64>) {
    fn each<const N: usize>(bytes: &[u8], out: &mut Vec<f64>, f: impl Fn([u8; N]) -> f64) {
        out.extend(bytes.chunks_exact(N).map(|c| f(c.try_into().expect("chunks of N bytes"))));
    }
    match dtype {
        d if d.widens() => each(bytes, out, |b| f64::from(f32::from_le_bytes(b))),
        DType::Bool | DType::U8 => out.extend(bytes.iter().map(|&b| f64::from(b))),
        DType::I8 => out.extend(bytes.iter().map(|&b| f64::from(b as i8))),
        DType::I16 => each(bytes, out, |b| f64::from(i16::from_le_bytes(b))),
        DType::U16 => each(bytes, out, |b| f64::from(u16::from_le_bytes(b))),
        DType::I32 => each(bytes, out, |b| f64::from(i32::from_le_bytes(b))),
        DType::U32 => each(bytes, out, |b| f64::from(u32::from_le_bytes(b))),
        DType::I64 => each(bytes, out, |b| i64::from_le_bytes(b) as f64),
        DType::U64 => each(bytes, out, |b| u64::from_le_bytes(b) as f64),
        DType::F16 => each(bytes, out, |b| f64::from(f16_to_f32(u16::from_le_bytes(b)))),
        DType::F32 | DType::C64 => each(bytes, out, |b| f64::from(f32::from_le_bytes(b))),
        DType::F64 | DType::C128 => each(bytes, out, f64::from_le_bytes),
        // Strings never reach here (values_per_element); the other types widen.
        _ => {}
    }
}

/// Running sums over the value pairs of one tensor pair.
#[derive(Default)]
struct Sums {
    elements: u64,
    differing: u64,
    /// Values outside the tolerance.
    outside: u64,
    finite: u64,
    max_abs: f64,
    max_rel: f64,
    squared_differences: f64,
    dot: f64,
    norm_a: f64,
    norm_b: f64,
    /// Squares of the values `add_same` saw: in the dot product and in both norms.
    same_squares: f64,
}

impl Sums {
    fn add(&mut self, a: &[f64], b: &[f64], options: &Options) {
        self.elements += a.len() as u64;
        for (&x, &y) in a.iter().zip(b) {
            if x.is_finite() && y.is_finite() {
                let d = (x - y).abs();
                self.finite += 1;
                self.squared_differences += d * d;
                self.dot += x * y;
                self.norm_a += x * x;
                self.norm_b += y * y;
                if d > 0.0 {
                    self.differing += 1;
                    self.max_abs = self.max_abs.max(d);
                    if y != 0.0 {
                        self.max_rel = self.max_rel.max(d / y.abs());
                    }
                    // numpy.isclose, B the reference.
                    self.outside += u64::from(d > options.atol + options.rtol * y.abs());
                }
            } else if !(x == y || (options.nan_equal && x.is_nan() && y.is_nan())) {
                self.differing += 1;
                self.outside += 1;
            }
        }
    }

    /// Values compared with themselves (both sides hold the same bytes): only NaN can differ,
    /// and the dot product and both norms are one sum of squares. Float32 data (the common
    /// case) is summed straight from its bytes; other types are widened into `scratch` first.
    fn add_same(&mut self, dtype: DType, bytes: &[u8], scratch: &mut Vec<f64>, options: &Options) {
        if dtype == DType::F32 {
            self.add_same_values(bytes.chunks_exact(4).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))), options);
        } else {
            scratch.clear();
            push_values(dtype, bytes, scratch);
            self.add_same_values(scratch.iter().copied(), options);
        }
    }

    /// Branch-free in four lanes, so that it keeps up with reading.
    fn add_same_values(&mut self, values: impl Iterator<Item = f64>, options: &Options) {
        let (mut lanes, mut finite, mut nan, mut count) = ([0f64; 4], 0u64, 0u64, 0u64);
        for x in values {
            let is_finite = x.is_finite();
            lanes[(count & 3) as usize] += if is_finite { x * x } else { 0.0 };
            finite += u64::from(is_finite);
            nan += u64::from(x.is_nan());
            count += 1;
        }
        self.elements += count;
        self.finite += finite;
        self.same_squares += lanes.iter().sum::<f64>();
        if !options.nan_equal {
            self.differing += nan;
            self.outside += nan;
        }
    }

    fn stats(&self) -> Stats {
        let rms = if self.finite == 0 { 0.0 } else { (self.squared_differences / self.finite as f64).sqrt() };
        let (norm_a, norm_b) = (self.norm_a + self.same_squares, self.norm_b + self.same_squares);
        let cosine = (norm_a > 0.0 && norm_b > 0.0).then(|| (self.dot + self.same_squares) / (norm_a * norm_b).sqrt());
        Stats { elements: self.elements, differing: self.differing, max_abs: self.max_abs, max_rel: self.max_rel, rms, cosine }
    }
}

/// A pair of the same shape, chunk by chunk in C order. Where both sides hold the same bytes
/// (the same extent of one file, or chunks that compare equal) one side's values serve both.
fn compare_in_order(a: &Tensor, b: &Tensor, options: &Options, sums: &mut Sums, progress: &mut dyn FnMut(u64)) -> Result<(), ReadError> {
    let same_extent = a.dtype == b.dtype && a.decoded.is_none() && b.decoded.is_none() && a.bytes.location().is_some_and(|l| Some(l) == b.bytes.location());
    let (size_a, size_b) = (a.dtype.npy_size() as u64, b.dtype.npy_size() as u64);
    let elements = a.npy_data_len().unwrap_or(0) / size_a;
    let (mut bytes_a, mut bytes_b) = (Vec::new(), Vec::new());
    let (mut values_a, mut values_b) = (Vec::new(), Vec::new());
    let mut at = 0;
    while at < elements {
        let n = CHUNK_ELEMENTS.min(elements - at);
        bytes_a.resize((n * size_a) as usize, 0);
        a.read_npy_data(at * size_a, &mut bytes_a)?;
        if same_extent {
            sums.add_same(a.dtype, &bytes_a, &mut values_a, options);
            progress(bytes_a.len() as u64 * 2);
        } else {
            bytes_b.resize((n * size_b) as usize, 0);
            b.read_npy_data(at * size_b, &mut bytes_b)?;
            if a.dtype == b.dtype && bytes_a == bytes_b {
                sums.add_same(a.dtype, &bytes_a, &mut values_a, options);
            } else {
                values_a.clear();
                push_values(a.dtype, &bytes_a, &mut values_a);
                values_b.clear();
                push_values(b.dtype, &bytes_b, &mut values_b);
                sums.add(&values_a, &values_b, options);
            }
            progress((bytes_a.len() + bytes_b.len()) as u64);
        }
        at += n;
    }
    Ok(())
}

/// A matrix A `[m, n]` against B `[n, m]` as A against B's transpose, in square tiles: each
/// tile reads rows of A and the matching rows of B, so memory stays bounded.
fn compare_transposed(a: &Tensor, b: &Tensor, per_element: usize, options: &Options, sums: &mut Sums, progress: &mut dyn FnMut(u64)) -> Result<(), ReadError> {
    let (m, n) = (a.shape[0], a.shape[1]);
    let (size_a, size_b) = (a.dtype.npy_size() as u64, b.dtype.npy_size() as u64);
    let (mut bytes, mut values_a, mut values_b, mut tile_b) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r0 in (0..m).step_by(TILE as usize) {
        let r1 = (r0 + TILE).min(m);
        for c0 in (0..n).step_by(TILE as usize) {
            let c1 = (c0 + TILE).min(n);
            values_a.clear();
            bytes.resize(((c1 - c0) * size_a) as usize, 0);
            for r in r0..r1 {
                a.read_npy_data((r * n + c0) * size_a, &mut bytes)?;
                push_values(a.dtype, &bytes, &mut values_a);
            }
            tile_b.clear();
            bytes.resize(((r1 - r0) * size_b) as usize, 0);
            for c in c0..c1 {
                b.read_npy_data((c * m + r0) * size_b, &mut bytes)?;
                push_values(b.dtype, &bytes, &mut tile_b);
            }
            // tile_b holds B's rows c0..c1; A's order wants them column by column.
            let (h, w) = ((r1 - r0) as usize, (c1 - c0) as usize);
            values_b.clear();
            for r in 0..h {
                for c in 0..w {
                    let at = (c * h + r) * per_element;
                    values_b.extend_from_slice(&tile_b[at..at + per_element]);
                }
            }
            sums.add(&values_a, &values_b, options);
            progress((h * w) as u64 * (size_a + size_b));
        }
    }
    Ok(())
}

/// Whether two tensors of one non-numeric dtype hold the same `.raw` bytes.
fn same_raw_bytes(a: &Tensor, b: &Tensor, progress: &mut dyn FnMut(u64)) -> Result<bool, ReadError> {
    let len = a.bytes.len();
    if len != b.bytes.len() {
        return Ok(false);
    }
    let (mut bytes_a, mut bytes_b) = (Vec::new(), Vec::new());
    let mut at = 0;
    while at < len {
        let n = (CHUNK_ELEMENTS * 8).min(len - at);
        bytes_a.resize(n as usize, 0);
        bytes_b.resize(n as usize, 0);
        a.bytes.read_at(at, &mut bytes_a)?;
        b.bytes.read_at(at, &mut bytes_b)?;
        progress(2 * n);
        if bytes_a != bytes_b {
            return Ok(false);
        }
        at += n;
    }
    Ok(true)
}

/// Compares `pairs` (from `pair`) in order, handing each row to `row` as soon as it is known.
pub fn run(a: &Side, b: &Side, pairs: &[Pair], options: &Options, progress: &mut dyn FnMut(u64), row: &mut dyn FnMut(Row) -> std::io::Result<()>) -> Result<(), DiffError> {
    for &(ia, ib) in pairs {
        row(match (ia, ib) {
            (Some(ia), Some(ib)) => {
                let (status, transposed, stats) = compare(a.tensor(ia), b.tensor(ib), options, progress).map_err(|source| DiffError::Read { name: a.name(ia).to_string(), source })?;
                Row { a: Some(ia), b: Some(ib), status, transposed, stats }
            }
            (Some(_), None) => Row { a: ia, b: None, status: Status::OnlyA, transposed: false, stats: None },
            _ => Row { a: None, b: ib, status: Status::OnlyB, transposed: false, stats: None },
        })?;
    }
    Ok(())
}

/// Bytes the comparison of `pairs` reads at most (for a progress bar): both `.npy` data sections.
pub fn total_bytes(a: &Side, b: &Side, pairs: &[Pair]) -> u64 {
    let data = |t: &Tensor| t.npy_data_len().unwrap_or(t.bytes.len());
    pairs.iter().filter_map(|&(ia, ib)| Some(data(a.tensor(ia?)) + data(b.tensor(ib?)))).sum()
}

fn shape_text(shape: &[u64]) -> String {
    format!("[{}]", shape.iter().map(u64::to_string).collect::<Vec<_>>().join(","))
}

impl Row {
    /// The row as one line: status, name (`A = B` where the names differ), dtype and shape
    /// (`A -> B` where they differ), and for pairs that are not equal, the statistics.
    pub fn text(&self, a: &Side, b: &Side) -> String {
        let described = |side: &Side, id: usize| format!("{} {}", side.tensor(id).dtype.name(), shape_text(&side.tensor(id).shape));
        let (name, types) = match (self.a, self.b) {
            (Some(ia), Some(ib)) => {
                let name = if a.name(ia) == b.name(ib) { a.name(ia).to_string() } else { format!("{} = {}", a.name(ia), b.name(ib)) };
                let (ta, tb) = (described(a, ia), described(b, ib));
                (name, if ta == tb { ta } else { format!("{ta} -> {tb}") })
            }
            (Some(ia), None) => (a.name(ia).to_string(), described(a, ia)),
            (_, Some(ib)) => (b.name(ib).to_string(), described(b, ib)),
            (None, None) => unreachable!("a row has a tensor"),
        };
        let mut line = format!("{:<9}  {name}  {types}", self.status.as_str());
        if self.transposed {
            line.push_str(" (transposed)");
        }
        if let Some(s) = self.stats.as_ref().filter(|_| self.status != Status::Equal) {
            line.push_str(&format!("  differing {}/{}  max_abs {:.3e}  max_rel {:.3e}  rms {:.3e}", s.differing, s.elements, s.max_abs, s.max_rel, s.rms));
            line.push_str(&match s.cosine {
                Some(c) => format!("  cosine {c:.9}"),
                None => "  cosine -".to_string(),
            });
        }
        line
    }

    /// The row as JSON: `status`, `a` and `b` (each `null` or `{name, path, dtype, shape}`),
    /// `transposed`, and for numeric pairs the statistics.
    pub fn json(&self, a: &Side, b: &Side) -> Value {
        let side = |side: &Side, id: Option<usize>| match id {
            Some(id) => json!({"name": side.name(id), "path": side.paths[id], "dtype": side.tensor(id).dtype.name(), "shape": side.tensor(id).shape}),
            None => Value::Null,
        };
        let mut row = json!({"status": self.status.as_str(), "a": side(a, self.a), "b": side(b, self.b), "transposed": self.transposed});
        if let Some(s) = &self.stats {
            let fields = json!({"elements": s.elements, "differing": s.differing, "max_abs": s.max_abs, "max_rel": s.max_rel, "rms": s.rms, "cosine": s.cosine});
            row.as_object_mut().expect("an object").extend(fields.as_object().expect("an object").clone());
        }
        row
    }
}

/// Counts of each status, for the summary line.
#[derive(Default)]
pub struct Summary {
    counts: [u64; Status::ALL.len()],
}

impl Summary {
    pub fn add(&mut self, status: Status) {
        self.counts[status as usize] += 1;
    }

    /// Whether anything differs (exit status 1).
    pub fn differs(&self) -> bool {
        Status::ALL.iter().any(|s| s.differs() && self.counts[*s as usize] > 0)
    }

    pub fn text(&self) -> String {
        let counts: Vec<String> = Status::ALL.iter().map(|s| format!("{} {}", self.counts[*s as usize], s.summary())).collect();
        format!("{} tensors: {}", self.counts.iter().sum::<u64>(), counts.join(", "))
    }

    pub fn json(&self) -> Value {
        let mut map = serde_json::Map::new();
        map.insert("tensors".into(), json!(self.counts.iter().sum::<u64>()));
        for s in Status::ALL {
            map.insert(s.as_str().replace('-', "_"), json!(self.counts[s as usize]));
        }
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_fnmatch_without_pathname() {
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"layers/*/kernel", b"layers/dense/sub/kernel"));
        assert!(glob_match(b"blk.?.attn*", b"blk.0.attn_q.weight"));
        assert!(glob_match(b"*.bias", b"fc1.bias"));
        assert!(!glob_match(b"*.bias", b"fc1.bias2"));
        assert!(!glob_match(b"a?c", b"ac"));
        assert!(glob_match(b"a*b*c", b"aXbYbZc"));
    }

    #[test]
    fn map_lines_split_on_tabs_else_spaces() {
        let pairs = parse_map("# comment\n\na b\nx y\tz w\n").unwrap();
        assert_eq!(pairs, [("a".to_string(), "b".to_string()), ("x y".to_string(), "z w".to_string())]);
        assert!(matches!(parse_map("a b c\n"), Err(DiffError::MapLine { line: 1 })));
    }

    fn matrix(rows: u64, cols: u64, value: impl Fn(u64, u64) -> f32) -> Tensor {
        let bytes: Vec<u8> = (0..rows).flat_map(|r| (0..cols).map(move |c| (r, c))).flat_map(|(r, c)| value(r, c).to_le_bytes()).collect();
        Tensor::new(vec!["m".into()], DType::F32, vec![rows, cols], std::sync::Arc::new(crate::model::InMemory(bytes.into())))
    }

    /// Larger than a chunk and than a tile in both directions, with one value changed far
    /// from the start: the same counts in order and transposed.
    #[test]
    fn chunks_and_tiles_cover_every_element_once() {
        let (rows, cols) = (300u64, 520u64);
        let value = |r: u64, c: u64| (r * cols + c) as f32 * 0.5 - 1000.0;
        let moved = |r: u64, c: u64| if (r, c) == (290, 517) { 7.0 } else { value(r, c) };
        let a = matrix(rows, cols, value);
        let mut read = 0;
        let same = compare(&a, &matrix(rows, cols, value), &options(false), &mut |n| read += n).unwrap();
        assert_eq!((same.0, same.2.unwrap().elements), (Status::Equal, rows * cols));
        assert_eq!(read, rows * cols * 8);
        let (status, transposed, stats) = compare(&a, &matrix(rows, cols, moved), &options(false), &mut |_| {}).unwrap();
        let stats = stats.unwrap();
        assert_eq!((status, transposed, stats.differing, stats.max_abs), (Status::Different, false, 1, f64::from(value(290, 517) - 7.0)));
        let (status, transposed, stats) = compare(&a, &matrix(cols, rows, |c, r| moved(r, c)), &options(false), &mut |_| {}).unwrap();
        let stats = stats.unwrap();
        assert_eq!((status, transposed, stats.elements, stats.differing, stats.max_abs), (Status::Different, true, rows * cols, 1, f64::from(value(290, 517) - 7.0)));
    }

    fn options(nan_equal: bool) -> Options {
        Options { match_by: MatchBy::Name, map: Vec::new(), only: None, rtol: 1e-5, atol: 1e-8, nan_equal }
    }

    /// add_same agrees with add over the same values, NaN and infinities included.
    #[test]
    fn same_bytes_shortcut_agrees_with_the_full_comparison() {
        let values = [1.0, -2.5, f64::NAN, f64::INFINITY, 0.0, f64::NEG_INFINITY, 3.0];
        let f32_bytes: Vec<u8> = values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect();
        let f64_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        for nan_equal in [false, true] {
            for (dtype, bytes) in [(DType::F32, &f32_bytes), (DType::F64, &f64_bytes)] {
                let (mut full, mut same) = (Sums::default(), Sums::default());
                full.add(&values, &values, &options(nan_equal));
                same.add_same(dtype, bytes, &mut Vec::new(), &options(nan_equal));
                assert_eq!(full.stats(), same.stats());
                assert_eq!((full.differing, full.outside), (same.differing, same.outside));
                assert_eq!(full.differing, u64::from(!nan_equal));
            }
        }
    }
}
