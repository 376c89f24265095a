//! ggml's tensor types (the element types of GGUF files): their sizes and names, and the
//! dequantization of every quantized block type to float32.
//!
//! The block functions are ports of ggml's `dequantize_row_*` (ggml-org/ggml
//! `src/ggml-quants.c`, MIT licence, Copyright (c) 2023-2026 The ggml authors), kept in ggml's
//! arithmetic order: each product of an f16 scale with small integers is exact in f32, so the
//! values are bit-identical to ggml's (docs/formats/gguf.md#bit-exactness). Block layouts: docs/formats/gguf.md#block-layouts-and-dequantization.

mod grids;

use crate::dtype::{DType, f16_to_f32};
use grids::*;

/// A ggml type as GGUF stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    /// Plain elements, one per `DType` element.
    Plain(DType),
    Quantized(Quant),
}

/// Why a type id cannot be mounted as a known type.
pub fn type_of(id: u32) -> Result<GgmlType, String> {
    let plain = |d| Ok(GgmlType::Plain(d));
    match id {
        0 => plain(DType::F32),
        1 => plain(DType::F16),
        24 => plain(DType::I8),
        25 => plain(DType::I16),
        26 => plain(DType::I32),
        27 => plain(DType::I64),
        28 => plain(DType::F64),
        30 => plain(DType::BF16),
        4 | 5 | 31..=33 | 36..=38 => Err(format!("ggml type {id} was removed from ggml and has no defined layout")),
        _ => Quant::ALL
            .into_iter()
            .find(|q| q.id() == id)
            .map(GgmlType::Quantized)
            .ok_or_else(|| format!("ggml type {id} is unknown to wfs (newer than ggml's type 42)")),
    }
}

/// Every quantized block type ggml defines.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quant {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    IQ1_M,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
    Q2_0,
}

impl Quant {
    pub const ALL: [Quant; 27] = [
        Quant::Q4_0,
        Quant::Q4_1,
        Quant::Q5_0,
        Quant::Q5_1,
        Quant::Q8_0,
        Quant::Q8_1,
        Quant::Q2_K,
        Quant::Q3_K,
        Quant::Q4_K,
        Quant::Q5_K,
        Quant::Q6_K,
        Quant::Q8_K,
        Quant::IQ2_XXS,
        Quant::IQ2_XS,
        Quant::IQ3_XXS,
        Quant::IQ1_S,
        Quant::IQ4_NL,
        Quant::IQ3_S,
        Quant::IQ2_S,
        Quant::IQ4_XS,
        Quant::IQ1_M,
        Quant::TQ1_0,
        Quant::TQ2_0,
        Quant::MXFP4,
        Quant::NVFP4,
        Quant::Q1_0,
        Quant::Q2_0,
    ];

    /// (ggml type id, name in lower case, elements per block, bytes per block).
    fn traits(self) -> (u32, &'static str, u32, u32) {
        match self {
            Quant::Q4_0 => (2, "q4_0", 32, 18),
            Quant::Q4_1 => (3, "q4_1", 32, 20),
            Quant::Q5_0 => (6, "q5_0", 32, 22),
            Quant::Q5_1 => (7, "q5_1", 32, 24),
            Quant::Q8_0 => (8, "q8_0", 32, 34),
            Quant::Q8_1 => (9, "q8_1", 32, 36),
            Quant::Q2_K => (10, "q2_k", 256, 84),
            Quant::Q3_K => (11, "q3_k", 256, 110),
            Quant::Q4_K => (12, "q4_k", 256, 144),
            Quant::Q5_K => (13, "q5_k", 256, 176),
            Quant::Q6_K => (14, "q6_k", 256, 210),
            Quant::Q8_K => (15, "q8_k", 256, 292),
            Quant::IQ2_XXS => (16, "iq2_xxs", 256, 66),
            Quant::IQ2_XS => (17, "iq2_xs", 256, 74),
            Quant::IQ3_XXS => (18, "iq3_xxs", 256, 98),
            Quant::IQ1_S => (19, "iq1_s", 256, 50),
            Quant::IQ4_NL => (20, "iq4_nl", 32, 18),
            Quant::IQ3_S => (21, "iq3_s", 256, 110),
            Quant::IQ2_S => (22, "iq2_s", 256, 82),
            Quant::IQ4_XS => (23, "iq4_xs", 256, 136),
            Quant::IQ1_M => (29, "iq1_m", 256, 56),
            Quant::TQ1_0 => (34, "tq1_0", 256, 54),
            Quant::TQ2_0 => (35, "tq2_0", 256, 66),
            Quant::MXFP4 => (39, "mxfp4", 32, 17),
            Quant::NVFP4 => (40, "nvfp4", 64, 36),
            Quant::Q1_0 => (41, "q1_0", 128, 18),
            Quant::Q2_0 => (42, "q2_0", 64, 18),
        }
    }

    pub fn id(self) -> u32 {
        self.traits().0
    }

    pub fn name(self) -> &'static str {
        self.traits().1
    }

    pub fn elems(self) -> u32 {
        self.traits().2
    }

    pub fn bytes(self) -> u32 {
        self.traits().3
    }

    /// The dtype of a tensor of these blocks.
    pub fn dtype(self) -> DType {
        DType::Block { name: self.name(), elems: self.elems(), bytes: self.bytes() }
    }

    /// Decodes the whole blocks of `raw` into `out`, `elems()` values per block, as far as both
    /// reach (callers pass matching lengths; extra bytes or values are left alone).
    pub fn dequantize(self, raw: &[u8], out: &mut [f32]) {
        match self {
            Quant::Q4_0 => each(raw, out, q4_0),
            Quant::Q4_1 => each(raw, out, q4_1),
            Quant::Q5_0 => each(raw, out, q5_0),
            Quant::Q5_1 => each(raw, out, q5_1),
            Quant::Q8_0 => each(raw, out, q8_0),
            Quant::Q8_1 => each(raw, out, q8_1),
            Quant::Q2_K => each(raw, out, q2_k),
            Quant::Q3_K => each(raw, out, q3_k),
            Quant::Q4_K => each(raw, out, q4_k),
            Quant::Q5_K => each(raw, out, q5_k),
            Quant::Q6_K => each(raw, out, q6_k),
            Quant::Q8_K => each(raw, out, q8_k),
            Quant::IQ2_XXS => each(raw, out, iq2_xxs),
            Quant::IQ2_XS => each(raw, out, iq2_xs),
            Quant::IQ3_XXS => each(raw, out, iq3_xxs),
            Quant::IQ1_S => each(raw, out, iq1_s),
            Quant::IQ4_NL => each(raw, out, iq4_nl),
            Quant::IQ3_S => each(raw, out, iq3_s),
            Quant::IQ2_S => each(raw, out, iq2_s),
            Quant::IQ4_XS => each(raw, out, iq4_xs),
            Quant::IQ1_M => each(raw, out, iq1_m),
            Quant::TQ1_0 => each(raw, out, tq1_0),
            Quant::TQ2_0 => each(raw, out, tq2_0),
            Quant::MXFP4 => each(raw, out, mxfp4),
            Quant::NVFP4 => each(raw, out, nvfp4),
            Quant::Q1_0 => each(raw, out, q1_0),
            Quant::Q2_0 => each(raw, out, q2_0),
        }
    }
}

/// Runs a block function over whole blocks; fixed-size arrays let the compiler drop bounds
/// checks and vectorise.
fn each<const B: usize, const N: usize>(raw: &[u8], out: &mut [f32], block: fn(&[u8; B], &mut [f32; N])) {
    for (b, y) in raw.chunks_exact(B).zip(out.chunks_exact_mut(N)) {
        if let (Ok(b), Ok(y)) = (b.try_into(), y.try_into()) {
            block(b, y);
        }
    }
}

/// The f16 at byte `at`, little-endian, as f32 (exact).
fn f16(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// `-1.0` where bit `j` of `signs` is set, else `1.0` (the IQ types' sign bits).
fn sign(signs: u8, j: usize) -> f32 {
    if signs & (1 << j) != 0 { -1.0 } else { 1.0 }
}

fn q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16(b, 0);
    for j in 0..16 {
        y[j] = ((b[2 + j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
    }
}

fn q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let (d, m) = (f16(b, 0), f16(b, 2));
    for j in 0..16 {
        y[j] = (b[4 + j] & 0x0F) as f32 * d + m;
        y[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
    }
}

fn q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = f16(b, 0);
    let qh = u32_at(b, 2);
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = ((u32::from(b[6 + j] & 0x0F) | h0) as i32 - 16) as f32 * d;
        y[j + 16] = ((u32::from(b[6 + j] >> 4) | h1) as i32 - 16) as f32 * d;
    }
}

fn q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let (d, m) = (f16(b, 0), f16(b, 2));
    let qh = u32_at(b, 4);
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = (u32::from(b[8 + j] & 0x0F) | h0) as f32 * d + m;
        y[j + 16] = (u32::from(b[8 + j] >> 4) | h1) as f32 * d + m;
    }
}

fn q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = f16(b, 0);
    for (v, &q) in y.iter_mut().zip(&b[2..]) {
        *v = f32::from(q as i8) * d;
    }
}

/// ggml has no `dequantize_row_q8_1` (Q8_1 is an intermediate type of its dot products); its
/// values are `qs·d` as for Q8_0, the stored sum `s` being derived data.
fn q8_1(b: &[u8; 36], y: &mut [f32; 32]) {
    let d = f16(b, 0);
    for (v, &q) in y.iter_mut().zip(&b[4..]) {
        *v = f32::from(q as i8) * d;
    }
}

fn q2_k(b: &[u8; 84], y: &mut [f32; 256]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, min) = (f16(b, 80), f16(b, 82));
    let mut is = 0;
    for half in 0..2 {
        let q = &qs[32 * half..32 * half + 32];
        for j in 0..4 {
            let shift = 2 * j;
            let out = &mut y[128 * half + 32 * j..128 * half + 32 * j + 32];
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * (sc & 0x0F) as f32, min * (sc >> 4) as f32);
                for l in 0..16 {
                    out[16 * part + l] = dl * ((q[16 * part + l] >> shift) & 3) as f32 - ml;
                }
            }
        }
    }
}

fn q3_k(b: &[u8; 110], y: &mut [f32; 256]) {
    let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
    let d_all = f16(b, 108);
    // Sixteen 6-bit scales: low 4 bits from sc[0..8], high 2 bits from sc[8..12].
    let mut scales = [0i32; 16];
    for (t, s) in scales.iter_mut().enumerate() {
        let lo = if t < 8 { sc[t] & 0x0F } else { sc[t - 8] >> 4 };
        let hi = (sc[8 + t % 4] >> (2 * (t / 4))) & 3;
        *s = i32::from(lo | (hi << 4)) - 32;
    }
    let mut is = 0;
    let mut m = 1u8;
    for half in 0..2 {
        let q = &qs[32 * half..32 * half + 32];
        for j in 0..4 {
            let shift = 2 * j;
            let out = &mut y[128 * half + 32 * j..128 * half + 32 * j + 32];
            for part in 0..2 {
                let dl = d_all * scales[is] as f32;
                is += 1;
                for l in 16 * part..16 * part + 16 {
                    let high = if hmask[l] & m != 0 { 0 } else { 4 };
                    out[l] = dl * (((q[l] >> shift) & 3) as i32 - high) as f32;
                }
            }
            m <<= 1;
        }
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K block.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    };
    (sc as f32, m as f32)
}

fn q4_k(b: &[u8; 144], y: &mut [f32; 256]) {
    let (d, min) = (f16(b, 0), f16(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, min * m1, d * sc2, min * m2);
        let q = &qs[32 * c..32 * c + 32];
        let out = &mut y[64 * c..64 * c + 64];
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            out[32 + l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

fn q5_k(b: &[u8; 176], y: &mut [f32; 256]) {
    let (d, min) = (f16(b, 0), f16(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, min * m1, d * sc2, min * m2);
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        let q = &qs[32 * c..32 * c + 32];
        let out = &mut y[64 * c..64 * c + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d1 * ((q[l] & 0x0F) + h1) as f32 - m1;
            out[32 + l] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

fn q6_k(b: &[u8; 210], y: &mut [f32; 256]) {
    let d = f16(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let out = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| f32::from(sc[is + k] as i8);
            out[l] = d * s(0) * q1 as f32;
            out[l + 32] = d * s(2) * q2 as f32;
            out[l + 64] = d * s(4) * q3 as f32;
            out[l + 96] = d * s(6) * q4 as f32;
        }
    }
}

/// Q8_K's scale is a plain f32 (it is an intermediate type of ggml's dot products).
fn q8_k(b: &[u8; 292], y: &mut [f32; 256]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (v, &q) in y.iter_mut().zip(&b[4..260]) {
        *v = d * f32::from(q as i8);
    }
}

fn iq2_xxs(b: &[u8; 66], y: &mut [f32; 256]) {
    let d = f16(b, 0);
    for g in 0..8 {
        let at = 2 + 8 * g;
        let a1 = u32_at(b, at + 4);
        let db = d * (0.5 + (a1 >> 28) as f32) * 0.25;
        for l in 0..4 {
            let grid = IQ2XXS_GRID[usize::from(b[at + l])].to_le_bytes();
            let signs = KSIGNS_IQ2XS[((a1 >> (7 * l)) & 127) as usize];
            for j in 0..8 {
                y[32 * g + 8 * l + j] = db * f32::from(grid[j]) * sign(signs, j);
            }
        }
    }
}

fn iq2_xs(b: &[u8; 74], y: &mut [f32; 256]) {
    let d = f16(b, 0);
    for g in 0..8 {
        let sc = b[66 + g];
        let db = [d * (0.5 + (sc & 0x0F) as f32) * 0.25, d * (0.5 + (sc >> 4) as f32) * 0.25];
        for l in 0..4 {
            let q = u16_at(b, 2 + 2 * (4 * g + l));
            let grid = IQ2XS_GRID[usize::from(q & 511)].to_le_bytes();
            let signs = KSIGNS_IQ2XS[usize::from(q >> 9)];
            for j in 0..8 {
                y[32 * g + 8 * l + j] = db[l / 2] * f32::from(grid[j]) * sign(signs, j);
            }
        }
    }
}

fn iq2_s(b: &[u8; 82], y: &mut [f32; 256]) {
    let d = f16(b, 0);
    let (qs, signs, qh, scales) = (&b[2..34], &b[34..66], &b[66..74], &b[74..82]);
    for g in 0..8 {
        let db = [d * (0.5 + (scales[g] & 0x0F) as f32) * 0.25, d * (0.5 + (scales[g] >> 4) as f32) * 0.25];
        for l in 0..4 {
            let index = usize::from(qs[4 * g + l]) | ((usize::from(qh[g]) << (8 - 2 * l)) & 0x300);
            let grid = IQ2S_GRID[index].to_le_bytes();
            for j in 0..8 {
                y[32 * g + 8 * l + j] = db[l / 2] * f32::from(grid[j]) * sign(signs[4 * g + l], j);
            }
        }
    }
}

fn iq3_xxs(b: &[u8; 98], y: &mut [f32; 256]) {
    let d = f16(b, 0);
    let qs = &b[2..66];
    for g in 0..8 {
        let aux = u32_at(b, 66 + 4 * g);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        for l in 0..4 {
            let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
            let grid1 = IQ3XXS_GRID[usize::from(qs[8 * g + 2 * l])].to_le_bytes();
            let grid2 = IQ3XXS_GRID[usize::from(qs[8 * g + 2 * l + 1])].to_le_bytes();
            let out = &mut y[32 * g + 8 * l..32 * g + 8 * l + 8];
            for j in 0..4 {
                out[j] = db * f32::from(grid1[j]) * sign(signs, j);
                out[j + 4] = db * f32::from(grid2[j]) * sign(signs, j + 4);
            }
        }
    }
}

fn iq3_s(b: &[u8; 110], y: &mut [f32; 256]) {
    let d = f16(b, 0);
    let (qs, qh, signs, scales) = (&b[2..66], &b[66..74], &b[74..106], &b[106..110]);
    for g in 0..8 {
        let sc = scales[g / 2];
        let scale = if g % 2 == 0 { sc & 0x0F } else { sc >> 4 };
        let db = d * (1 + 2 * i32::from(scale)) as f32;
        let (q, s, h) = (&qs[8 * g..8 * g + 8], &signs[4 * g..4 * g + 4], usize::from(qh[g]));
        for l in 0..4 {
            let grid1 = IQ3S_GRID[usize::from(q[2 * l]) | ((h << (8 - 2 * l)) & 256)].to_le_bytes();
            let grid2 = IQ3S_GRID[usize::from(q[2 * l + 1]) | ((h << (7 - 2 * l)) & 256)].to_le_bytes();
            let out = &mut y[32 * g + 8 * l..32 * g + 8 * l + 8];
            for j in 0..4 {
                out[j] = db * f32::from(grid1[j]) * sign(s[l], j);
                out[j + 4] = db * f32::from(grid2[j]) * sign(s[l], j + 4);
            }
        }
    }
}

/// IQ1_S and IQ1_M shift every grid value by ±1/8.
const IQ1_DELTA: f32 = 0.125;

fn iq1_s(b: &[u8; 50], y: &mut [f32; 256]) {
    let d = f16(b, 0);
    let qs = &b[2..34];
    for g in 0..8 {
        let qh = u16_at(b, 34 + 2 * g);
        let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
        let delta = if qh & 0x8000 != 0 { -IQ1_DELTA } else { IQ1_DELTA };
        for l in 0..4 {
            let index = usize::from(qs[4 * g + l]) | (usize::from((qh >> (3 * l)) & 7) << 8);
            let grid = IQ1S_GRID[index].to_le_bytes();
            for j in 0..8 {
                y[32 * g + 8 * l + j] = dl * (f32::from(grid[j] as i8) + delta);
            }
        }
    }
}

fn iq1_m(b: &[u8; 56], y: &mut [f32; 256]) {
    let (qs, qh) = (&b[0..32], &b[32..48]);
    let sc = [u16_at(b, 48), u16_at(b, 50), u16_at(b, 52), u16_at(b, 54)];
    // The f16 scale is spread over the top 4 bits of the four scale words.
    let d = f16_to_f32((sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000));
    for g in 0..8 {
        let shift = 6 * (g % 2);
        let dl1 = d * (2 * ((sc[g / 2] >> shift) & 7) + 1) as f32;
        let dl2 = d * (2 * ((sc[g / 2] >> (shift + 3)) & 7) + 1) as f32;
        let (h0, h1) = (usize::from(qh[2 * g]), usize::from(qh[2 * g + 1]));
        let index = [
            usize::from(qs[4 * g]) | ((h0 << 8) & 0x700),
            usize::from(qs[4 * g + 1]) | ((h0 << 4) & 0x700),
            usize::from(qs[4 * g + 2]) | ((h1 << 8) & 0x700),
            usize::from(qs[4 * g + 3]) | ((h1 << 4) & 0x700),
        ];
        let delta_bit = [h0 & 0x08, h0 & 0x80, h1 & 0x08, h1 & 0x80];
        for l in 0..4 {
            let dl = if l < 2 { dl1 } else { dl2 };
            let delta = if delta_bit[l] != 0 { -IQ1_DELTA } else { IQ1_DELTA };
            let grid = IQ1S_GRID[index[l]].to_le_bytes();
            for j in 0..8 {
                y[32 * g + 8 * l + j] = dl * (f32::from(grid[j] as i8) + delta);
            }
        }
    }
}

fn iq4_nl(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16(b, 0);
    for j in 0..16 {
        y[j] = d * f32::from(KVALUES_IQ4NL[usize::from(b[2 + j] & 0x0F)]);
        y[j + 16] = d * f32::from(KVALUES_IQ4NL[usize::from(b[2 + j] >> 4)]);
    }
}

fn iq4_xs(b: &[u8; 136], y: &mut [f32; 256]) {
    let d = f16(b, 0);
    let scales_h = u16_at(b, 2);
    let (scales_l, qs) = (&b[4..8], &b[8..136]);
    for g in 0..8 {
        let ls = ((scales_l[g / 2] >> (4 * (g % 2))) & 0x0F) as i32 | (((scales_h >> (2 * g)) & 3) << 4) as i32;
        let dl = d * (ls - 32) as f32;
        for j in 0..16 {
            let q = qs[16 * g + j];
            y[32 * g + j] = dl * f32::from(KVALUES_IQ4NL[usize::from(q & 0x0F)]);
            y[32 * g + 16 + j] = dl * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
        }
    }
}

/// Trit `n` of a TQ1_0 byte: the byte times 3^n (wrapping, as u8), then its top "digit" in base 3.
fn trit(byte: u8, n: usize) -> f32 {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    let q = byte.wrapping_mul(POW3[n]);
    (((u16::from(q) * 3) >> 8) as i32 - 1) as f32
}

fn tq1_0(b: &[u8; 54], y: &mut [f32; 256]) {
    let d = f16(b, 52);
    let mut out = y.iter_mut();
    // Five trits per byte of qs[0..32] and of qs[32..48], then four per byte of qh.
    for (bytes, trits) in [(&b[0..32], 5), (&b[32..48], 5), (&b[48..52], 4)] {
        for n in 0..trits {
            for (&byte, v) in bytes.iter().zip(out.by_ref()) {
                *v = trit(byte, n) * d;
            }
        }
    }
}

fn tq2_0(b: &[u8; 66], y: &mut [f32; 256]) {
    let d = f16(b, 64);
    for c in 0..2 {
        for l in 0..4 {
            for m in 0..32 {
                y[128 * c + 32 * l + m] = (((b[32 * c + m] >> (2 * l)) & 3) as i32 - 1) as f32 * d;
            }
        }
    }
}

/// ggml's `ggml_e8m0_to_fp32_half`: 2^(e-128), subnormal for e < 2 (half of the E8M0 value,
/// because the FP4 table holds doubled values).
fn e8m0_half(e: u8) -> f32 {
    f32::from_bits(if e < 2 { 0x0020_0000 << e } else { u32::from(e - 1) << 23 })
}

/// ggml's `ggml_ue4m3_to_fp32`: an unsigned E4M3 scale, halved like `e8m0_half`; 0x7F is 0.
fn ue4m3_half(x: u8) -> f32 {
    if x == 0 || x == 0x7F {
        return 0.0;
    }
    let exp = i32::from((x >> 3) & 0x0F);
    let man = f32::from(x & 7);
    let raw = if exp == 0 { man * 2f32.powi(-9) } else { (1.0 + man / 8.0) * 2f32.powi(exp - 7) };
    raw * 0.5
}

fn mxfp4(b: &[u8; 17], y: &mut [f32; 32]) {
    let d = e8m0_half(b[0]);
    for j in 0..16 {
        y[j] = f32::from(KVALUES_FP4[usize::from(b[1 + j] & 0x0F)]) * d;
        y[j + 16] = f32::from(KVALUES_FP4[usize::from(b[1 + j] >> 4)]) * d;
    }
}

fn nvfp4(b: &[u8; 36], y: &mut [f32; 64]) {
    for s in 0..4 {
        let d = ue4m3_half(b[s]);
        let q = &b[4 + 8 * s..4 + 8 * s + 8];
        for j in 0..8 {
            y[16 * s + j] = f32::from(KVALUES_FP4[usize::from(q[j] & 0x0F)]) * d;
            y[16 * s + 8 + j] = f32::from(KVALUES_FP4[usize::from(q[j] >> 4)]) * d;
        }
    }
}

fn q1_0(b: &[u8; 18], y: &mut [f32; 128]) {
    let d = f16(b, 0);
    for (j, v) in y.iter_mut().enumerate() {
        *v = if (b[2 + j / 8] >> (j % 8)) & 1 != 0 { d } else { -d };
    }
}

fn q2_0(b: &[u8; 18], y: &mut [f32; 64]) {
    let d = f16(b, 0);
    for (j, v) in y.iter_mut().enumerate() {
        let q = (b[2 + j / 4] >> (2 * (j % 4))) & 3;
        *v = (q as i32 - 1) as f32 * d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(q: Quant, block: &[u8]) -> Vec<f32> {
        let mut out = vec![f32::NAN; q.elems() as usize];
        q.dequantize(block, &mut out);
        out
    }

    #[test]
    fn every_type_id_is_known_removed_or_unknown() {
        for id in 0..64 {
            match type_of(id) {
                Ok(GgmlType::Quantized(q)) => assert_eq!(q.id(), id),
                Ok(GgmlType::Plain(_)) => assert!(matches!(id, 0 | 1 | 24..=28 | 30)),
                Err(why) => assert!(matches!(id, 4 | 5 | 31..=33 | 36..=38 | 43..), "{id}: {why}"),
            }
        }
    }

    #[test]
    fn short_input_decodes_only_whole_blocks() {
        for q in Quant::ALL {
            let raw = vec![0x11u8; q.bytes() as usize * 2 - 1];
            let mut out = vec![f32::NAN; q.elems() as usize * 2];
            q.dequantize(&raw, &mut out);
            assert!(out[..q.elems() as usize].iter().all(|v| !v.is_nan()), "{q:?}");
            assert!(out[q.elems() as usize..].iter().all(|v| v.is_nan()), "{q:?}");
        }
    }

    #[test]
    fn q4_0_by_hand() {
        // d = 2.0 (f16 0x4000); nibbles 0 and 15 give -8·d and 7·d.
        let mut block = [0u8; 18];
        block[..2].copy_from_slice(&0x4000u16.to_le_bytes());
        block[2] = 0xF0;
        let y = decode(Quant::Q4_0, &block);
        assert_eq!((y[0], y[16], y[1], y[17]), (-16.0, 14.0, -16.0, -16.0));
    }

    #[test]
    fn infinite_and_nan_scales_propagate() {
        // Q8_0 with d = +inf: inf·q for q != 0, NaN for q = 0 (inf·0), as in C.
        let mut block = [0u8; 34];
        block[..2].copy_from_slice(&0x7C00u16.to_le_bytes());
        block[2] = 1;
        block[3] = 0xFF; // -1
        let y = decode(Quant::Q8_0, &block);
        assert_eq!((y[0], y[1]), (f32::INFINITY, f32::NEG_INFINITY));
        assert!(y[2].is_nan());
        block[..2].copy_from_slice(&0x7E00u16.to_le_bytes());
        assert!(decode(Quant::Q8_0, &block).iter().all(|v| v.is_nan()));
    }

    #[test]
    fn scales_of_the_fp4_types() {
        assert_eq!(e8m0_half(127), 0.5);
        assert_eq!(e8m0_half(0), 2f32.powi(-128));
        assert_eq!(e8m0_half(1), 2f32.powi(-127));
        assert_eq!(e8m0_half(255), 2f32.powi(127));
        assert_eq!(ue4m3_half(0x38), 0.5); // 1.0 halved
        assert_eq!(ue4m3_half(0x7F), 0.0);
        assert_eq!(ue4m3_half(0x01), 2f32.powi(-10));
    }

    #[test]
    fn ternary_types() {
        // TQ2_0 codes 0..3 are -1, 0, 1, 2 times d.
        let mut block = [0u8; 66];
        block[0] = 0b11_10_01_00;
        block[64..].copy_from_slice(&0x3C00u16.to_le_bytes());
        let y = decode(Quant::TQ2_0, &block);
        assert_eq!((y[0], y[32], y[64], y[96]), (-1.0, 0.0, 1.0, 2.0));
        // TQ1_0: 243 / 3^5 rounds up to the trits 2,2,2,2,2 (the encoder stores ceil(v·256/243)).
        let mut block = [0u8; 54];
        block[0] = 255;
        block[52..].copy_from_slice(&0x3C00u16.to_le_bytes());
        let y = decode(Quant::TQ1_0, &block);
        assert_eq!([y[0], y[32], y[64], y[96], y[128]], [1.0; 5]);
    }

    #[test]
    fn grids_have_the_documented_value_sets() {
        let bytes = |g: &[u64]| g.iter().flat_map(|v| v.to_le_bytes()).collect::<std::collections::BTreeSet<u8>>();
        assert_eq!(bytes(&IQ2XXS_GRID), [8, 25, 43].into());
        assert_eq!(bytes(&IQ2XS_GRID), [8, 25, 43].into());
        assert_eq!(bytes(&IQ2S_GRID), [8, 25, 43].into());
        assert_eq!(bytes(&IQ1S_GRID), [0x00, 0x01, 0xFF].into());
        let bytes32 = |g: &[u32]| g.iter().flat_map(|v| v.to_le_bytes()).collect::<std::collections::BTreeSet<u8>>();
        assert_eq!(bytes32(&IQ3XXS_GRID), [4, 12, 20, 28, 36, 44, 52, 62].into());
        assert_eq!(bytes32(&IQ3S_GRID), [1, 3, 5, 7, 9, 11, 13, 15].into());
        for (i, &s) in KSIGNS_IQ2XS.iter().enumerate() {
            assert_eq!(s, i as u8 | (((i as u8).count_ones() as u8 & 1) << 7));
        }
    }
}
