//! A byte-bounded LRU cache of decoded chunks. Concurrent readers of one chunk decode it once:
//! the first takes the slot's lock and decodes, the others wait on that lock and share the result.

use crate::error::ReadError;
use lru::LruCache;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// (cache user id, chunk number within it).
pub type Key = (u64, u64);

#[derive(Default)]
struct Slot {
    data: Mutex<Option<Arc<[u8]>>>,
}

struct Inner {
    lru: LruCache<Key, Arc<Slot>>,
    /// Bytes of decoded chunks currently held by `lru`.
    bytes: u64,
}

pub struct ChunkCache {
    capacity: u64,
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    decodes: AtomicU64,
}

impl ChunkCache {
    pub fn new(capacity: u64) -> Self {
        ChunkCache {
            capacity,
            inner: Mutex::new(Inner { lru: LruCache::unbounded(), bytes: 0 }),
            next_id: AtomicU64::new(1),
            decodes: AtomicU64::new(0),
        }
    }

    /// A fresh id for one user of the cache (a chunked tensor).
    pub fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// How many chunks were decoded since the cache was made.
    pub fn decodes(&self) -> u64 {
        self.decodes.load(Ordering::Relaxed)
    }

    /// The byte budget.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn held_bytes(&self) -> u64 {
        self.inner.lock().unwrap().bytes
    }

    /// The chunk for `key` if it is cached now (never waiting for one being loaded).
    pub fn cached(&self, key: &Key) -> Option<Arc<[u8]>> {
        let slot = self.inner.lock().unwrap().lru.get(key)?.clone();
        slot.data.try_lock().ok()?.clone()
    }

    /// Returns the chunk for `key`, decoding it with `load` if it is not cached. `load` may
    /// return an `Arc<[u8]>` to spare the copy that turning a `Vec<u8>` into one costs.
    pub fn get_or_load<T: Into<Arc<[u8]>>>(
        &self,
        key: Key,
        load: impl FnOnce() -> Result<T, ReadError>,
    ) -> Result<Arc<[u8]>, ReadError> {
        let slot = {
            let mut inner = self.inner.lock().unwrap();
            inner.lru.get_or_insert(key, || Arc::new(Slot::default())).clone()
        };
        let mut data = slot.data.lock().unwrap();
        if let Some(chunk) = data.as_ref() {
            return Ok(chunk.clone());
        }
        let result = load();
        self.decodes.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.inner.lock().unwrap();
        let still_cached = inner.lru.peek(&key).is_some_and(|s| Arc::ptr_eq(s, &slot));
        match result {
            Ok(bytes) => {
                let chunk: Arc<[u8]> = bytes.into();
                if still_cached {
                    *data = Some(chunk.clone());
                    inner.bytes += chunk.len() as u64;
                    drop(data);
                    self.evict(&mut inner, &key);
                }
                Ok(chunk)
            }
            Err(e) => {
                if still_cached {
                    inner.lru.pop(&key);
                }
                Err(e)
            }
        }
    }

    /// Fills `buf` with the bytes at `offset` of a value decoded in units of `unit_len` bytes
    /// (the last may be shorter), unit `n` decoded by `decode(n)` once and cached under `(id, n)`.
    pub fn read_units<T: Into<Arc<[u8]>>>(
        &self,
        id: u64,
        unit_len: u64,
        offset: u64,
        buf: &mut [u8],
        decode: impl Fn(u64) -> Result<T, ReadError>,
    ) -> Result<(), ReadError> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let unit = pos / unit_len;
            let data = self.get_or_load((id, unit), || decode(unit))?;
            let within = (pos - unit * unit_len) as usize;
            if within >= data.len() {
                return Err(ReadError::OutOfBounds);
            }
            let n = (data.len() - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&data[within..within + n]);
            done += n;
        }
        Ok(())
    }

    /// Loads several consecutive chunks with one `load`, as one ranged request does: from `keys`,
    /// the first run of those neither cached nor being loaded (skipping any before it). They
    /// are claimed like `get_or_load` claims one: a reader of any of them waits for it.
    /// `load(i, n, put)` loads `keys[i..i + n]`, handing each chunk to `put` in order as soon as
    /// it is complete, which lets its readers go on at once. Chunks not put (a failed load) are
    /// left uncached. Returns the index in `keys` after the run, where a next call may go on.
    pub fn load_run(
        &self,
        keys: &[Key],
        load: impl FnOnce(usize, usize, &mut dyn FnMut(Arc<[u8]>)) -> Result<(), ReadError>,
    ) -> usize {
        let slots: Vec<Arc<Slot>> = {
            let mut inner = self.inner.lock().unwrap();
            keys.iter().map(|key| inner.lru.get_or_insert(*key, || Arc::new(Slot::default())).clone()).collect()
        };
        // A slot that cannot be locked at once is being loaded (or looked at) by someone else.
        let claimable = |slot: &Arc<Slot>| slot.data.try_lock().is_ok_and(|data| data.is_none());
        let first = slots.iter().position(claimable).unwrap_or(slots.len());
        let mut claimed = std::collections::VecDeque::new();
        for (key, slot) in keys[first..].iter().zip(&slots[first..]) {
            match slot.data.try_lock() {
                Ok(data) if data.is_none() => claimed.push_back((*key, slot, data)),
                _ => break,
            }
        }
        let end = first + claimed.len();
        if claimed.is_empty() {
            return end;
        }
        let mut put = |chunk: Arc<[u8]>| {
            let Some((key, slot, mut data)) = claimed.pop_front() else { return };
            self.decodes.fetch_add(1, Ordering::Relaxed);
            let mut inner = self.inner.lock().unwrap();
            if inner.lru.peek(&key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                inner.bytes += chunk.len() as u64;
                *data = Some(chunk);
                drop(data);
                self.evict(&mut inner, &key);
            }
        };
        // Errors reach no reader here: whoever needs an unloaded chunk loads it again.
        let _ = load(first, end - first, &mut put);
        let mut inner = self.inner.lock().unwrap();
        for (key, slot, _) in claimed {
            if inner.lru.peek(&key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                inner.lru.pop(&key);
            }
        }
        end
    }

    /// Drops least recently used chunks until the budget holds, sparing `keep` (just loaded).
    fn evict(&self, inner: &mut Inner, keep: &Key) {
        while inner.bytes > self.capacity {
            let Some((key, slot)) = inner.lru.pop_lru() else { break };
            if &key == keep {
                // The newest chunk alone exceeds the budget: do not hold it.
                let len = slot.data.lock().unwrap().as_ref().map_or(0, |c| c.len() as u64);
                inner.bytes -= len;
                continue;
            }
            // A slot still being decoded holds no accounted bytes; its loader sees it gone.
            if let Ok(data) = slot.data.try_lock() {
                inner.bytes -= data.as_ref().map_or(0, |c| c.len() as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn budget_is_held_and_lru_order_respected() {
        let cache = ChunkCache::new(250);
        for i in 0..10u64 {
            cache.get_or_load((1, i), || Ok(vec![i as u8; 100])).unwrap();
            assert!(cache.held_bytes() <= 250);
        }
        // chunk 9 and 8 are cached; 0 is not
        let loads = AtomicUsize::new(0);
        let c = cache
            .get_or_load((1, 9), || {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok(vec![])
            })
            .unwrap();
        assert_eq!(c[0], 9);
        cache
            .get_or_load((1, 0), || {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok(vec![0; 100])
            })
            .unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn oversized_chunk_is_served_not_held() {
        let cache = ChunkCache::new(10);
        let c = cache.get_or_load((1, 0), || Ok(vec![1; 100])).unwrap();
        assert_eq!(c.len(), 100);
        assert_eq!(cache.held_bytes(), 0);
    }

    #[test]
    fn concurrent_readers_decode_once() {
        let cache = Arc::new(ChunkCache::new(1 << 20));
        let loads = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (cache, loads) = (cache.clone(), loads.clone());
                std::thread::spawn(move || {
                    cache
                        .get_or_load((7, 7), || {
                            loads.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            Ok(vec![3; 1000])
                        })
                        .unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().len(), 1000);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_run_skips_what_is_cached_and_readers_wait_for_it() {
        let cache = Arc::new(ChunkCache::new(1 << 20));
        cache.get_or_load((1, 0), || Ok(vec![0; 10])).unwrap();
        let keys = [(1, 0), (1, 1), (1, 2)];
        let loader = {
            let cache = cache.clone();
            std::thread::spawn(move || {
                cache.load_run(&keys, |from, count, put| {
                    assert_eq!((from, count), (1, 2));
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    put(Arc::from(vec![1; 10]));
                    put(Arc::from(vec![2; 10]));
                    Ok(())
                })
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(30));
        // Claimed by the run: this reader waits for it rather than loading.
        let waited = cache.get_or_load((1, 2), || Ok(vec![9; 10])).unwrap();
        assert_eq!((waited[0], loader.join().unwrap()), (2, 3));
        assert_eq!(cache.get_or_load((1, 1), || Ok(vec![9; 10])).unwrap()[0], 1);
        assert_eq!(cache.held_bytes(), 30);
    }

    #[test]
    fn what_a_failed_run_did_not_put_is_not_cached() {
        let cache = ChunkCache::new(1 << 20);
        let end = cache.load_run(&[(1, 0), (1, 1)], |_, _, put| {
            put(Arc::from(vec![1; 10]));
            Err(ReadError::OutOfBounds)
        });
        assert_eq!(end, 2);
        assert_eq!(cache.get_or_load((1, 0), || Ok(vec![9])).unwrap()[0], 1);
        assert_eq!(cache.get_or_load((1, 1), || Ok(vec![9])).unwrap()[0], 9);
    }

    #[test]
    fn errors_are_not_cached() {
        let cache = ChunkCache::new(1000);
        assert!(cache.get_or_load((1, 1), || Err::<Vec<u8>, _>(ReadError::OutOfBounds)).is_err());
        assert_eq!(cache.get_or_load((1, 1), || Ok(vec![5])).unwrap()[0], 5);
    }
}
