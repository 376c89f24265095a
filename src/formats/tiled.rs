//! A tensor stored as rectangular tiles (TensorFlow's partitioned variables, the chunks of a
//! PyTorch distributed checkpoint): byte ranges of the full C-order tensor mapped onto the
//! tiles on read, nothing copied at mount.

use crate::error::ReadError;
use crate::model::{Tensor, TensorBytes};
use std::sync::Arc;

/// Most tiles of one tensor: the overlap check at mount compares every pair.
const MAX_TILES: usize = 1 << 12;

/// One tile: where it starts and how far it reaches in each dimension, and its bytes (C order).
pub(crate) struct Tile<B> {
    pub start: Vec<u64>,
    pub len: Vec<u64>,
    pub bytes: B,
}

impl<B> Tile<B> {
    fn contains(&self, index: &[u64]) -> bool {
        index.iter().zip(self.start.iter().zip(&self.len)).all(|(&i, (&s, &l))| i >= s && i < s + l)
    }

    fn overlaps(&self, other: &Tile<B>) -> bool {
        (0..self.start.len()).all(|d| {
            self.start[d] < other.start[d] + other.len[d] && other.start[d] < self.start[d] + self.len[d]
        })
    }
}

/// A tensor whose bytes are its tiles'.
pub(crate) struct Tiled<B> {
    shape: Vec<u64>,
    item: u64,
    total: u64,
    tiles: Vec<Tile<B>>,
    /// Whether a whole read first reads every tile whole (tiles that check a checksum only then).
    read_tiles_whole: bool,
}

impl<B: TensorBytes> Tiled<B> {
    /// The tensor of `shape` (elements of `item` bytes) made of `tiles`, which must lie inside
    /// it, hold their elements' bytes, not overlap and cover it; else why not.
    pub fn new(shape: &[u64], item: u64, tiles: Vec<Tile<B>>, read_tiles_whole: bool) -> Result<Self, String> {
        let total = Tensor::element_count(shape).ok_or_else(|| format!("absurd shape {shape:?}"))?;
        if shape.is_empty() {
            return Err("a scalar cannot be cut into tiles".into());
        }
        if tiles.len() > MAX_TILES {
            return Err(format!("{} tiles, over wfs's limit of {MAX_TILES}", tiles.len()));
        }
        let mut covered = 0u64;
        for tile in &tiles {
            let inside = tile.start.len() == shape.len()
                && tile.len.len() == shape.len()
                && tile.start.iter().zip(&tile.len).zip(shape).all(|((&s, &l), &d)| s.checked_add(l).is_some_and(|end| end <= d));
            if !inside {
                return Err(format!("tile {:?}+{:?} lies outside the tensor {shape:?}", tile.start, tile.len));
            }
            let count = Tensor::element_count(&tile.len).unwrap_or(u64::MAX);
            if count.checked_mul(item) != Some(tile.bytes.len()) {
                return Err(format!("tile {:?}+{:?} holds {} bytes, not {count} x {item}", tile.start, tile.len, tile.bytes.len()));
            }
            covered = covered.saturating_add(count);
        }
        for (i, a) in tiles.iter().enumerate() {
            if let Some(b) = tiles[i + 1..].iter().find(|b| a.overlaps(b) && Tensor::element_count(&a.len) != Some(0)) {
                return Err(format!("tiles {:?}+{:?} and {:?}+{:?} overlap", a.start, a.len, b.start, b.len));
            }
        }
        if covered != total {
            return Err(format!("tiles hold {covered} of {total} elements"));
        }
        Ok(Tiled { shape: shape.to_vec(), item, total: total * item, tiles, read_tiles_whole })
    }
}

impl<B: TensorBytes> TensorBytes for Tiled<B> {
    fn len(&self) -> u64 {
        self.total
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if self.read_tiles_whole && offset == 0 && buf.len() as u64 == self.total {
            for tile in &self.tiles {
                let mut whole = vec![0u8; tile.bytes.len() as usize];
                tile.bytes.read_at(0, &mut whole)?;
            }
        }
        let rank = self.shape.len();
        let mut index = vec![0u64; rank];
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (element, within) = (at / self.item, at % self.item);
            let mut rest = element;
            for d in (0..rank).rev() {
                index[d] = rest % self.shape[d];
                rest /= self.shape[d];
            }
            let tile = self
                .tiles
                .iter()
                .find(|s| s.contains(&index))
                .ok_or_else(|| ReadError::Corrupt("no tile holds this part of the tensor".into()))?;
            // Trailing dimensions the tile spans whole are contiguous in both layouts, so
            // the run reaches to the end of the tile's range in the dimension before them.
            let (mut d, mut inner, mut inner_pos) = (rank, 1u64, 0u64);
            while d > 0 && tile.len[d - 1] == self.shape[d - 1] {
                d -= 1;
                inner_pos += index[d] * inner;
                inner *= self.shape[d];
            }
            let run_elements = match d {
                0 => inner - inner_pos,
                _ => (tile.start[d - 1] + tile.len[d - 1] - index[d - 1]) * inner - inner_pos,
            };
            let run = (run_elements * self.item - within).min((buf.len() - done) as u64) as usize;
            let local = index.iter().zip(tile.start.iter().zip(&tile.len)).fold(0u64, |acc, (&i, (&s, &l))| acc * l + (i - s));
            tile.bytes.read_at(local * self.item + within, &mut buf[done..done + run])?;
            done += run;
        }
        Ok(())
    }
}

/// Tiles of any kind of bytes (a newtype: an impl on `Arc<dyn TensorBytes>` itself would shadow
/// the trait object's own methods wherever such an `Arc` is used).
pub(crate) struct Shared(pub Arc<dyn TensorBytes>);

impl TensorBytes for Shared {
    fn len(&self) -> u64 {
        self.0.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.0.read_at(offset, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Extent;
    use crate::source::Blob;

    fn part(full: &[u8], rows: (u64, u64), cols: (u64, u64)) -> Tile<Extent> {
        let mut data = Vec::new();
        for r in rows.0..rows.0 + rows.1 {
            for c in cols.0..cols.0 + cols.1 {
                let at = ((r * 4 + c) * 4) as usize;
                data.extend_from_slice(&full[at..at + 4]);
            }
        }
        let len = data.len() as u64;
        Tile { start: vec![rows.0, cols.0], len: vec![rows.1, cols.1], bytes: Extent { blob: Blob::Memory(data.into()), offset: 0, len } }
    }

    /// A 3x4 float tensor cut into rows 0..2 x cols 0..4 and row 2 split at col 1.
    #[test]
    fn tiles_map_byte_ranges() {
        let full: Vec<u8> = (0u8..48).collect();
        let tiles = vec![part(&full, (2, 1), (1, 3)), part(&full, (0, 2), (0, 4)), part(&full, (2, 1), (0, 1))];
        let tiled = Tiled::new(&[3, 4], 4, tiles, false).unwrap();
        for start in 0..48 {
            for end in start..=48 {
                let mut buf = vec![0u8; end - start];
                tiled.read_at(start as u64, &mut buf).unwrap();
                assert_eq!(buf, &full[start..end], "{start}..{end}");
            }
        }
    }

    fn refusal(shape: &[u64], tiles: Vec<Tile<Extent>>) -> String {
        Tiled::new(shape, 4, tiles, false).err().expect("refused")
    }

    #[test]
    fn overlapping_outside_and_short_tiles_are_refused() {
        let full: Vec<u8> = (0u8..48).collect();
        // Same element count as the tensor, but rows 1 overlap and row 2 is missing.
        let overlap = vec![part(&full, (0, 2), (0, 4)), part(&full, (1, 1), (0, 4))];
        assert!(refusal(&[3, 4], overlap).contains("overlap"));
        let outside = vec![part(&full, (0, 2), (0, 4)), part(&full, (2, 1), (0, 4))];
        assert!(refusal(&[2, 4], outside).contains("outside"));
        let gap = vec![part(&full, (0, 2), (0, 4))];
        assert!(refusal(&[3, 4], gap).contains("8 of 12"));
        let mut short = part(&full, (0, 3), (0, 4));
        short.bytes.len -= 4;
        assert!(refusal(&[3, 4], vec![short]).contains("holds 44 bytes"));
    }
}
