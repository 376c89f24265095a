//! What to fetch for a read of an object, and which blocks to fetch ahead of its readers: a
//! policy without I/O, given the reads seen so far.
//!
//! Small reads that are not part of a long sequential run (metadata: a zip member's header, an
//! HDF5 object header, a protobuf field before a tensor) fetch only the [`PIECE`]s they cover,
//! plus as much again as the run they continue has read (so a parser walking a table doubles
//! its request each time). Everything else is fetched in [`BLOCK`]s, with readahead. See
//! docs/remote.md for the measurements behind the numbers.

use std::ops::Range;

/// Bytes cached per entry, and fetched by a request for a read that is not sequential.
pub(super) const BLOCK: u64 = 1 << 20;

/// Bytes cached per piece: what a small read is rounded to. Metadata of a tensor in the formats
/// measured (a zip local header and `.npy` header, an HDF5 object header, an ONNX TensorProto's
/// fields) is a few hundred bytes, and a file of 64 KiB tensors may spend 2% of its size on it.
pub(super) const PIECE: u64 = 1 << 10;
/// Reads shorter than this (the kernel's own reads are 128 KiB) are small, unless they
/// continue a sequential run of READAHEAD_AFTER bytes.
const SMALL_READ: u64 = 128 << 10;

/// A sequential run starts readahead once it has read this much: two of the kernel's 128 KiB
/// reads. One read (metadata; a random 4 KiB read, which the kernel rounds up) fetches nothing
/// ahead. The window then grows with the run (four times what the run has read: fivefold per
/// round trip), so that a long read soon keeps enough requests in flight for the link's
/// bandwidth-delay product, while a short one (a small tensor) fetches little it will not read.
const READAHEAD_AFTER: u64 = 256 << 10;
/// The largest readahead window, in blocks (it is also at most half the cache, so that what
/// readahead fetched is not evicted before it is read).
pub(super) const READAHEAD_MAX: u64 = 64;
/// The most blocks one readahead request asks for; a window is split into requests of up to
/// this many blocks, fetched at the same time (each streamed into the cache block by block).
pub(super) const REQUEST_BLOCKS: u64 = 8;
/// Sequential runs followed at once in one object: readers streaming different tensors of
/// one file each get their readahead.
const RUNS: usize = 4;

/// The readahead of one object: the latest runs of sequential reads, least recent first.
#[derive(Debug)]
pub(super) struct Readahead {
    runs: Vec<Run>,
    /// Blocks in the object.
    blocks: u64,
    /// The largest window, in blocks.
    limit: u64,
    /// The object's size.
    size: u64,
}

/// Reads of one object close to each other, spanning `[start, end)`, of `read` bytes in all;
/// the latest ended at `last_end` and continued `streak` bytes read back to back. Blocks below
/// `ahead` were already handed to readahead for them.
#[derive(Debug)]
struct Run {
    start: u64,
    end: u64,
    read: u64,
    last_end: u64,
    streak: u64,
    ahead: u64,
}

impl Run {
    /// The bytes the run read if it is a stream: at least half the bytes it spans (the daemon
    /// serves the kernel's reads a little out of order), and 0 for reads far apart (a parser
    /// striding over a file's headers).
    fn sequential(&self) -> u64 {
        if 2 * self.read >= self.end - self.start { self.read } else { 0 }
    }
}

/// Blocks to fetch ahead, in requests of up to `request` blocks each, all at once.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Ahead {
    pub blocks: Range<u64>,
    pub request: u64,
}

impl Readahead {
    /// The readahead of an object of `size` bytes whose blocks go to a cache of `cache` bytes.
    pub(super) fn new(size: u64, cache: u64) -> Readahead {
        Readahead { runs: Vec::new(), blocks: size.div_ceil(BLOCK), limit: READAHEAD_MAX.min(cache / BLOCK / 2), size }
    }

    /// Takes note of a read of `[offset, end)` and returns what to fetch for it: `Some(until)`
    /// for a small read, which fetches the pieces of `[offset, until)`; `None` for one read in
    /// blocks, and the blocks to fetch ahead of it, if enough are due for full requests.
    pub(super) fn plan(&mut self, offset: u64, end: u64) -> (Option<u64>, Option<Ahead>) {
        let ahead = self.after_read(offset, end);
        let run = self.runs.last().expect("the run just read");
        if end - offset < SMALL_READ && run.sequential() < READAHEAD_AFTER {
            return (Some((end + run.streak - (end - offset)).min(self.size)), ahead);
        }
        (None, ahead)
    }

    /// Takes note of a read of `[offset, end)` and returns the blocks to fetch ahead of it, if
    /// enough are due for full requests.
    fn after_read(&mut self, offset: u64, end: u64) -> Option<Ahead> {
        // A read within a block of a run's end continues it (the daemon's threads may serve
        // the kernel's sequential reads a little out of order); any other read starts a new
        // run, in place of the least recent one when there are RUNS.
        let continued = self.runs.iter().position(|r| (r.end.saturating_sub(BLOCK)..=r.end + BLOCK).contains(&offset));
        let mut run = match continued {
            Some(i) => {
                let run = self.runs.remove(i);
                let back_to_back = offset <= run.last_end + PIECE && end > run.last_end;
                let streak = if back_to_back { run.streak + (end - offset) } else { end - offset };
                Run { start: run.start.min(offset), end: run.end.max(end), read: run.read + (end - offset), last_end: end, streak, ..run }
            }
            None => {
                if self.runs.len() == RUNS {
                    self.runs.remove(0);
                }
                Run { start: offset, end, read: end - offset, last_end: end, streak: end - offset, ahead: 0 }
            }
        };
        let run_length = run.sequential();
        let ahead = if run_length >= READAHEAD_AFTER { self.ahead_of(&mut run, (end - 1) / BLOCK + 1, run_length) } else { None };
        self.runs.push(run);
        ahead
    }

    /// The blocks to fetch ahead of a sequential reader whose `run` has read `run_length` and
    /// whose next block is `next`, if enough are due for full requests.
    fn ahead_of(&self, run: &mut Run, next: u64, run_length: u64) -> Option<Ahead> {
        let window = (4 * run_length).div_ceil(BLOCK).min(self.limit);
        let until = (next + window).min(self.blocks);
        let start = run.ahead.clamp(next, until);
        // Requests of a quarter of the window (several in flight), none issued before it can
        // be full, except at the end of the object.
        let request = (window / 4).clamp(1, REQUEST_BLOCKS);
        if start == until || (until - start < request && until < self.blocks) {
            return None;
        }
        run.ahead = until;
        Some(Ahead { blocks: start..until, request })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;

    /// The kernel's sequential 128 KiB reads of `[from, to)`, and what each one started.
    fn stream(readahead: &mut Readahead, from: u64, to: u64) -> Vec<(u64, Ahead)> {
        (from..to).step_by(128 * KIB as usize).filter_map(|at| readahead.after_read(at, (at + 128 * KIB).min(to)).map(|a| (at, a))).collect()
    }

    #[test]
    fn one_read_fetches_nothing_ahead() {
        let mut readahead = Readahead::new(100 * MIB, 256 * MIB);
        assert_eq!(readahead.after_read(0, 4 * KIB), None);
        assert_eq!(readahead.after_read(50 * MIB, 50 * MIB + 128 * KIB), None);
        // Random reads far apart never start any.
        for i in 0..20 {
            assert_eq!(readahead.after_read((i * 37 % 97) * MIB, (i * 37 % 97) * MIB + 128 * KIB), None, "read {i}");
        }
    }

    #[test]
    fn a_sequential_reader_gets_a_growing_window_up_to_the_limit() {
        let mut readahead = Readahead::new(200 * MIB, 256 * MIB);
        let started = stream(&mut readahead, 0, 200 * MIB);
        // The second 128 KiB read starts it: a window of 4 x 256 KiB = 1 block, one request.
        assert_eq!(started[0], (128 * KIB, Ahead { blocks: 1..2, request: 1 }));
        // Each block is asked for once, in order, and the whole object is covered.
        let mut next = 1;
        for (_, ahead) in &started {
            assert_eq!(ahead.blocks.start, next, "{started:?}");
            assert!(ahead.request <= REQUEST_BLOCKS);
            next = ahead.blocks.end;
        }
        assert_eq!(next, 200);
        // Once the run is long, the window is READAHEAD_MAX blocks ahead of the reader.
        let (at, last_full) = started.iter().rev().find(|(_, a)| a.blocks.end < 200).unwrap();
        assert_eq!(last_full.blocks.end, at / MIB + 1 + READAHEAD_MAX);
        assert_eq!(last_full.request, REQUEST_BLOCKS);
    }

    #[test]
    fn the_window_is_at_most_half_the_cache() {
        let mut readahead = Readahead::new(200 * MIB, 16 * MIB);
        let started = stream(&mut readahead, 0, 100 * MIB);
        assert!(started.iter().all(|(at, a)| a.blocks.end <= at / MIB + 1 + 8), "{started:?}");
        // Without a cache, nothing is fetched ahead (it would be evicted before it is read).
        let mut readahead = Readahead::new(200 * MIB, 0);
        assert_eq!(stream(&mut readahead, 0, 100 * MIB), []);
    }

    #[test]
    fn reads_a_little_out_of_order_continue_their_run() {
        let mut readahead = Readahead::new(100 * MIB, 256 * MIB);
        assert_eq!(readahead.after_read(128 * KIB, 256 * KIB), None);
        assert_eq!(readahead.after_read(0, 128 * KIB), Some(Ahead { blocks: 1..2, request: 1 }));
    }

    #[test]
    fn interleaved_readers_each_keep_their_run() {
        let mut readahead = Readahead::new(100 * MIB, 256 * MIB);
        let starts = [0, 20 * MIB, 40 * MIB, 60 * MIB];
        let mut fetched = [0u64; 4];
        for step in 0..64 {
            for (reader, start) in starts.iter().enumerate() {
                let at = start + step * 128 * KIB;
                if let Some(ahead) = readahead.after_read(at, at + 128 * KIB) {
                    assert!(ahead.blocks.start >= at / MIB, "reader {reader} fetched behind itself: {ahead:?}");
                    fetched[reader] += ahead.blocks.end - ahead.blocks.start;
                }
            }
        }
        assert!(fetched.iter().all(|&n| n >= 8), "{fetched:?}");
        // A fifth reader displaces the least recent run: its reader starts over.
        let mut readahead = Readahead::new(100 * MIB, 256 * MIB);
        for start in [0, 20 * MIB, 40 * MIB, 60 * MIB, 80 * MIB] {
            readahead.after_read(start, start + 128 * KIB);
        }
        assert_eq!(readahead.after_read(128 * KIB, 256 * KIB), None);
    }

    #[test]
    fn small_reads_fetch_their_pieces_and_double_a_run() {
        let mut readahead = Readahead::new(100 * MIB, 256 * MIB);
        // A lone small read fetches what it reads; one continuing it, as much again.
        assert_eq!(readahead.plan(50 * MIB, 50 * MIB + 300), (Some(50 * MIB + 300), None));
        assert_eq!(readahead.plan(50 * MIB + 300, 50 * MIB + 400), (Some(50 * MIB + 700), None));
        // The kernel's 128 KiB reads are large; so is a small read once its run is long.
        assert_eq!(readahead.plan(0, 128 * KIB).0, None);
        let mut at = 10 * MIB;
        while readahead.plan(at, at + 8 * KIB).0.is_some() {
            at += 8 * KIB;
        }
        assert_eq!(at - 10 * MIB, READAHEAD_AFTER - 8 * KIB);
        // Reads with gaps between them are no run, however close.
        for at in (20 * MIB..30 * MIB).step_by(64 * KIB as usize) {
            assert_eq!(readahead.plan(at, at + 30), (Some(at + 30), None));
        }
        // Never past the end.
        assert_eq!(readahead.plan(100 * MIB - 10, 100 * MIB).0, Some(100 * MIB));
    }

    #[test]
    fn the_end_of_the_object_is_fetched_in_a_short_request() {
        let mut readahead = Readahead::new(3 * MIB + 5, 256 * MIB);
        let started = stream(&mut readahead, 0, 3 * MIB + 5);
        assert_eq!(started.last().unwrap().1.blocks.end, 4, "{started:?}");
    }
}
