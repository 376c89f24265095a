//! One remote file, read in blocks through the cache: single-flight, fetched ahead of
//! sequential readers, pinned to the size and ETag it had at mount.

use super::failure::{head_error, read_error};
use super::readahead::{Ahead, BLOCK, PIECE, REQUEST_BLOCKS, Readahead};
use super::runtime::{Task, handle};
use super::store::Store;
use crate::error::{OpenError, ReadError};
use futures_util::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::Instant;


/// Bytes read at open: enough for the header of most formats (safetensors, GGUF, ONNX's
/// first fields) in the request that opens the object, little enough for a mount to read the
/// rest of its metadata in pieces.
const OPEN_READ: u64 = 64 << 10;

/// One remote file, pinned to its size and ETag at mount.
pub struct RemoteObject {
    store: Arc<Store>,
    path: StorePath,
    shown: String,
    size: u64,
    etag: Option<String>,
    /// The object's blocks in the cache are keyed `(id, block number)`.
    id: u64,
    /// Its pieces (see [`PIECE`]), `(piece_id, piece number)`.
    piece_id: u64,
    /// What its readers read so far, and so which blocks to fetch ahead of them.
    readahead: Mutex<Readahead>,
}

impl std::fmt::Debug for RemoteObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteObject").field("shown", &self.shown).field("size", &self.size).finish()
    }
}

impl RemoteObject {
    /// Reads the object's first bytes (up to [`OPEN_READ`]), which give its size and ETag and
    /// prove that the server answers ranged requests with ranges. No HEAD request: a presigned
    /// URL is signed for GET only.
    pub(super) fn open(store: &Arc<Store>, path: StorePath, shown: String) -> Result<Arc<RemoteObject>, OpenError> {
        let unreadable = |e: ReadError| {
            OpenError::unreadable(match e {
                ReadError::Io(e) => e.to_string(),
                other => other.to_string(),
            })
        };
        let first = store.block_on(async |c| {
            let options = GetOptions { range: Some((0..OPEN_READ).into()), ..GetOptions::default() };
            match c.get_opts(&path, options).await {
                Ok(answer) => {
                    let meta = answer.meta.clone();
                    let bytes = answer.bytes().await.map_err(|e| read_error(e, &store.peer))?;
                    Ok((meta, Some(bytes)))
                }
                Err(missing @ object_store::Error::NotFound { .. }) => Err(head_error(missing, &store.peer)),
                // An empty object has no first byte to ask for: its size comes from HEAD.
                Err(range_error) => match c.head(&path).await {
                    Ok(meta) if meta.size == 0 => Ok((meta, None)),
                    _ => Err(head_error(range_error, &store.peer)),
                },
            }
        });
        let (meta, first) = first.map_err(unreadable)?;
        let object = Arc::new(RemoteObject {
            store: store.clone(),
            path,
            shown,
            size: meta.size,
            etag: meta.e_tag,
            id: store.cache.new_id(),
            piece_id: store.cache.new_id(),
            readahead: Mutex::new(Readahead::new(meta.size, store.cache.capacity())),
        });
        if let Some(bytes) = first {
            if bytes.len() as u64 != object.size.min(OPEN_READ) {
                return Err(unreadable(ReadError::SourceChanged));
            }
            for (n, piece) in (0..).zip(bytes.chunks(PIECE as usize)) {
                object.store.cache.get_or_load((object.piece_id, n), || Ok(piece.to_vec())).map_err(unreadable)?;
            }
        }
        Ok(object)
    }

    pub fn len(&self) -> u64 {
        self.size
    }

    /// The object's name: the last part of its path.
    pub fn file_name(&self) -> Option<String> {
        self.path.filename().map(str::to_string)
    }

    /// Fills `buf` from `offset` (the caller checked the range against [`Self::len`]), within
    /// the store's read deadline however many requests and retries that takes.
    pub fn read_at(self: &Arc<Self>, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if buf.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.store.options.deadline;
        let end = offset + buf.len() as u64;
        let (small, ahead) = self.readahead.lock().unwrap().plan(offset, end);
        if let Some(ahead) = ahead {
            self.read_ahead(ahead)?;
        }
        let grain = match small {
            // Bytes already in cached blocks (the first one, fetched at open) are read from them.
            Some(until) if !self.in_cached_blocks(offset, end) => Grain { id: self.piece_id, size: PIECE, until },
            _ => Grain { id: self.id, size: BLOCK, until: end },
        };
        let (first, last) = (offset / grain.size, (end - 1) / grain.size);
        // A small read gets its pieces not cached, and those after them up to `until`, with one
        // request. A read of several blocks gets those not cached with one request per run of up
        // to REQUEST_BLOCKS of them, the runs at the same time. Whatever that did not bring
        // (cached, fetched by someone else, failed) comes from `unit`.
        let mut units: Vec<Option<Arc<[u8]>>> = vec![None; (last - first + 1) as usize];
        if grain.size == PIECE {
            let keep = |n: u64, piece: &Arc<[u8]>| {
                if n <= last {
                    units[(n - first) as usize] = Some(piece.clone());
                }
            };
            self.fetch_units(grain, first..grain.until.div_ceil(PIECE), deadline, keep);
        } else if last > first {
            std::thread::scope(|scope| {
                let mut parts = (first..).step_by(REQUEST_BLOCKS as usize).zip(units.chunks_mut(REQUEST_BLOCKS as usize));
                let own = parts.next().expect("at least one block");
                let fetch = |(part_first, part): (u64, &mut [Option<Arc<[u8]>>])| {
                    let units = part_first..part_first + part.len() as u64;
                    self.fetch_units(grain, units, deadline, |n, block| part[(n - part_first) as usize] = Some(block.clone()))
                };
                for part in parts {
                    scope.spawn(move || fetch(part));
                }
                fetch(own);
            });
        }
        let mut filled = 0usize;
        for (n, unit) in (first..).zip(units) {
            let unit = match unit {
                Some(unit) => unit,
                None => self.unit(grain, n, deadline)?,
            };
            let from = (offset + filled as u64 - n * grain.size) as usize;
            let take = (unit.len() - from).min(buf.len() - filled);
            buf[filled..filled + take].copy_from_slice(&unit[from..from + take]);
            filled += take;
        }
        Ok(())
    }

    /// Fetches the pieces of `ranges` (`(offset, len)`, within the object) into the cache, with
    /// PREFETCHERS requests in flight: metadata a reader will read next, one range at a time,
    /// such as the local headers of a zip's members. A range that fails is left to the read.
    pub fn prefetch(self: &Arc<Self>, ranges: &[(u64, u64)]) {
        const PREFETCHERS: usize = 16;
        if self.store.cache.capacity() == 0 {
            return; // nothing fetched ahead would be kept
        }
        let deadline = Instant::now() + self.store.options.deadline;
        let grain = Grain { id: self.piece_id, size: PIECE, until: self.size };
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..PREFETCHERS.min(ranges.len()) {
                scope.spawn(|| {
                    while let Some(&(offset, len)) = ranges.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                        let end = (offset + len).min(self.size);
                        if offset < end {
                            self.fetch_units(grain, offset / PIECE..end.div_ceil(PIECE), deadline, |_, _| {});
                        }
                    }
                });
            }
        });
    }

    /// `true` if every block `[offset, end)` touches is cached now.
    fn in_cached_blocks(&self, offset: u64, end: u64) -> bool {
        (offset / BLOCK..=(end - 1) / BLOCK).all(|n| self.store.cache.cached(&(self.id, n)).is_some())
    }

    /// Starts fetching `blocks` (those not yet cached or on their way), in requests of up to
    /// `request` blocks, all at once.
    fn read_ahead(self: &Arc<Self>, Ahead { blocks, request }: Ahead) -> Result<(), ReadError> {
        let handle = handle()?;
        let deadline = Instant::now() + self.store.options.deadline;
        let grain = Grain { id: self.id, size: BLOCK, until: self.size };
        let mut first = blocks.start;
        while first < blocks.end {
            let count = request.min(blocks.end - first);
            let object = self.clone();
            let counted = Task::start();
            handle.spawn_blocking(move || {
                let _counted = counted;
                object.fetch_units(grain, first..first + count, deadline, |_, _| {});
            });
            first += count;
        }
        Ok(())
    }

    /// Fetches `units` into the cache with as few requests as those already cached or being
    /// fetched allow, handing each unit fetched to `keep` too. Failures are not cached: the
    /// reader that needs the unit asks again.
    fn fetch_units(self: &Arc<Self>, grain: Grain, units: std::ops::Range<u64>, deadline: Instant, mut keep: impl FnMut(u64, &Arc<[u8]>)) {
        let keys: Vec<_> = units.clone().map(|n| (grain.id, n)).collect();
        let mut done = 0;
        while done < keys.len() {
            done += self.store.cache.load_run(&keys[done..], |from, count, put| {
                let mut n = units.start + (done + from) as u64;
                let first = n;
                let mut put_and_keep = |unit: Arc<[u8]>| {
                    keep(n, &unit);
                    n += 1;
                    put(unit);
                };
                self.fetch_here(grain, first, count as u64, deadline, &mut put_and_keep)
            });
        }
    }

    /// Unit `n`, from the cache or fetched (once, however many readers ask at the same time).
    fn unit(self: &Arc<Self>, grain: Grain, n: u64, deadline: Instant) -> Result<Arc<[u8]>, ReadError> {
        self.store.cache.get_or_load((grain.id, n), || {
            let mut unit = None;
            self.fetch_here(grain, n, 1, deadline, &mut |u| unit = Some(u))?;
            Ok(unit.expect("one unit fetched"))
        })
    }

    /// Fetches units `first..first + count` (all in the object) with [`Self::fetch`] on the
    /// runtime's threads, which read the socket without waking this thread for every piece of
    /// the body, and hands each unit to `put` on this thread as soon as it is complete. Gives
    /// up at `deadline`, whatever the request and its retries are doing then.
    fn fetch_here(self: &Arc<Self>, grain: Grain, first: u64, count: u64, deadline: Instant, put: &mut dyn FnMut(Arc<[u8]>)) -> Result<(), ReadError> {
        let client = self.store.client()?;
        let (sender, units) = std::sync::mpsc::channel();
        let object = self.clone();
        let request = handle()?.spawn(async move {
            let each = sender.clone();
            if let Err(e) = object.fetch(client, grain.size, first, count, move |unit| drop(each.send(Ok(unit)))).await {
                let _ = sender.send(Err(e));
            }
        });
        let mut received = 0;
        while received < count {
            match units.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(unit) => put(unit?),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    request.abort();
                    return Err(self.store.peer.past_deadline());
                }
            }
            received += 1;
        }
        if received < count {
            return Err(ReadError::Io(std::io::Error::other("the request was cut off")));
        }
        Ok(())
    }

    /// Fetches units `first..first + count` of `size` bytes with one ranged request, handing
    /// each to `put` as soon as its bytes are in.
    async fn fetch(&self, client: Arc<dyn ObjectStore>, size: u64, first: u64, count: u64, mut put: impl FnMut(Arc<[u8]>) + Send) -> Result<(), ReadError> {
        let start = first * size;
        let end = ((first + count) * size).min(self.size);
        // A weak ETag cannot be matched strongly; the ETag of the answer is compared anyway.
        let if_match = self.etag.clone().filter(|e| !e.starts_with("W/"));
        let options = GetOptions { range: Some((start..end).into()), if_match, ..GetOptions::default() };
        let answer = client.get_opts(&self.path, options).await.map_err(|e| read_error(e, &self.store.peer))?;
        if answer.meta.size != self.size || (self.etag.is_some() && answer.meta.e_tag != self.etag) {
            return Err(ReadError::SourceChanged);
        }
        let mut body = answer.into_stream();
        let (mut at, mut unit) = (start, Filling::new((end - start).min(size) as usize));
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| read_error(e, &self.store.peer))?;
            let mut piece = &piece[..];
            while !piece.is_empty() {
                if at == end {
                    return Err(ReadError::SourceChanged);
                }
                let take = piece.len().min(unit.room());
                unit.push(&piece[..take]);
                piece = &piece[take..];
                if unit.room() == 0 {
                    let done = std::mem::replace(&mut unit, Filling::new(0)).finish();
                    at += done.len() as u64;
                    put(done);
                    unit = Filling::new((end - at).min(size) as usize);
                }
            }
        }
        if at != end {
            return Err(ReadError::SourceChanged);
        }
        Ok(())
    }
}

/// How a read cuts the object: into cached units of `size` bytes keyed `(id, unit number)`,
/// fetched up to `until` (for a small read, past what it reads).
#[derive(Clone, Copy)]
struct Grain {
    id: u64,
    size: u64,
    until: u64,
}

/// A block being filled with a response's body: allocated once, at its final size, with its
/// pages made resident by one call rather than a page fault each (which cost more than the
/// copy itself on a VM: a third of the daemon's time in a sequential read).
struct Filling {
    block: Arc<[std::mem::MaybeUninit<u8>]>,
    filled: usize,
}

impl Filling {
    fn new(len: usize) -> Filling {
        let mut block = Arc::<[u8]>::new_uninit_slice(len);
        let data = Arc::get_mut(&mut block).expect("just made");
        let (start, page) = (data.as_mut_ptr() as usize, 4096);
        let (first_page, end_page) = (start.next_multiple_of(page), (start + len) / page * page);
        if end_page > first_page {
            // SAFETY: whole pages inside the block's own allocation. A kernel without
            // MADV_POPULATE_WRITE refuses it, and the pages fault in as they are written.
            unsafe { libc::madvise(first_page as *mut libc::c_void, end_page - first_page, libc::MADV_POPULATE_WRITE) };
        }
        Filling { block, filled: 0 }
    }

    fn room(&self) -> usize {
        self.block.len() - self.filled
    }

    fn push(&mut self, bytes: &[u8]) {
        let to = &mut Arc::get_mut(&mut self.block).expect("not shared before it is finished")[self.filled..self.filled + bytes.len()];
        for (to, from) in to.iter_mut().zip(bytes) {
            to.write(*from);
        }
        self.filled += bytes.len();
    }

    fn finish(self) -> Arc<[u8]> {
        assert_eq!(self.filled, self.block.len(), "a block is finished once full");
        // SAFETY: every byte was written by `push` (`filled` counts them, from the start).
        unsafe { self.block.assume_init() }
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::{RemoteOptions, Service};
    use super::*;
    use crate::cache::ChunkCache;
    use futures_util::stream::BoxStream;
    use object_store::memory::InMemory;
    use object_store::{CopyOptions, ListResult, MultipartUpload, ObjectMeta, PutMultipartOptions, PutOptions, PutPayload, PutResult};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::time::Duration;

    /// object_store's in-memory store, counting the GET requests it answers and the bytes of
    /// the ranges they ask for.
    #[derive(Debug, Default)]
    struct Counted {
        inner: InMemory,
        gets: AtomicUsize,
        bytes: AtomicU64,
    }

    impl std::fmt::Display for Counted {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Counted({})", self.inner)
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Counted {
        async fn put_opts(&self, location: &StorePath, payload: PutPayload, opts: PutOptions) -> object_store::Result<PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(&self, location: &StorePath, opts: PutMultipartOptions) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(&self, location: &StorePath, options: GetOptions) -> object_store::Result<object_store::GetResult> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            if let Some(object_store::GetRange::Bounded(range)) = &options.range {
                self.bytes.fetch_add(range.end - range.start, Ordering::SeqCst);
            }
            self.inner.get_opts(location, options).await
        }
        fn delete_stream(&self, locations: BoxStream<'static, object_store::Result<StorePath>>) -> BoxStream<'static, object_store::Result<StorePath>> {
            self.inner.delete_stream(locations)
        }
        fn list(&self, prefix: Option<&StorePath>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(&self, prefix: Option<&StorePath>) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(&self, from: &StorePath, to: &StorePath, options: CopyOptions) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    /// Bytes that differ at every offset of a block, so that a read from the wrong place shows.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ (i / 251 % 256) as u8 ^ seed).collect()
    }

    /// `bytes` as object `m.bin` of an in-memory store, opened with a cache of `cache` bytes.
    fn opened(bytes: &[u8], cache: u64) -> (Arc<Counted>, Arc<RemoteObject>) {
        let memory = Arc::new(Counted::default());
        let path = StorePath::from("m.bin");
        handle().unwrap().block_on(memory.put(&path, bytes.to_vec().into())).unwrap();
        let options = RemoteOptions { timeout: Duration::from_secs(5), retries: 0, deadline: Duration::from_secs(5), credentials: Default::default() };
        let store = Store::new(Service::Given(memory.clone()), &options, Arc::new(ChunkCache::new(cache)));
        let object = RemoteObject::open(&store, path, "memory/m.bin".into()).unwrap();
        (memory, object)
    }

    fn read(object: &Arc<RemoteObject>, offset: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        let mut buf = vec![0; len];
        object.read_at(offset, &mut buf).map(|()| buf)
    }

    #[test]
    fn reads_give_the_object_bytes_wherever_they_fall() {
        let bytes = pattern((3 * BLOCK + 12345) as usize, 0);
        let (memory, object) = opened(&bytes, 64 << 20);
        assert_eq!((object.len(), memory.gets.load(Ordering::SeqCst)), (bytes.len() as u64, 1), "one request at open");
        for (offset, len) in [(0, 10), (BLOCK - 3, 7), (BLOCK, BLOCK as usize), (5, 3 * BLOCK as usize), (3 * BLOCK, 12345), (bytes.len() as u64 - 1, 1)] {
            assert_eq!(read(&object, offset, len).unwrap(), &bytes[offset as usize..offset as usize + len], "{offset}+{len}");
        }
        // Every block was fetched once: the reads above came from the cache afterwards.
        let gets = memory.gets.load(Ordering::SeqCst);
        assert_eq!(read(&object, 0, bytes.len()).unwrap(), bytes);
        assert_eq!(memory.gets.load(Ordering::SeqCst), gets);
    }

    #[test]
    fn readers_of_one_block_share_one_request() {
        let bytes = pattern((2 * BLOCK) as usize, 7);
        let (memory, object) = opened(&bytes, 64 << 20);
        let before = memory.gets.load(Ordering::SeqCst);
        std::thread::scope(|scope| {
            for i in 0..8u64 {
                let (object, bytes) = (&object, &bytes);
                let at = BLOCK + i * 1000;
                scope.spawn(move || assert_eq!(read(object, at, 128 << 10).unwrap(), &bytes[at as usize..][..128 << 10]));
            }
        });
        assert_eq!(memory.gets.load(Ordering::SeqCst), before + 1);
    }

    #[test]
    fn small_reads_far_apart_fetch_small_ranges() {
        let bytes = pattern((8 * BLOCK) as usize, 5);
        let (memory, object) = opened(&bytes, 64 << 20);
        let before = memory.bytes.load(Ordering::SeqCst);
        // A parser striding over headers: 100 reads of 40 bytes, 64 KiB apart.
        for i in 0..100u64 {
            let at = OPEN_READ + i * (64 << 10) + 7;
            assert_eq!(read(&object, at, 40).unwrap(), &bytes[at as usize..][..40]);
        }
        let fetched = memory.bytes.load(Ordering::SeqCst) - before;
        assert!(fetched <= 100 * 2 * PIECE, "{fetched} bytes fetched");
        // What the first request at open brought is read from it.
        let gets = memory.gets.load(Ordering::SeqCst);
        assert_eq!(read(&object, 100, 3000).unwrap(), &bytes[100..3100]);
        assert_eq!(memory.gets.load(Ordering::SeqCst), gets);
    }

    #[test]
    fn a_sequential_reader_gets_blocks_fetched_ahead() {
        let bytes = pattern((40 * BLOCK) as usize, 3);
        let (memory, object) = opened(&bytes, 256 << 20);
        for at in (0..20 * BLOCK).step_by(128 << 10) {
            assert_eq!(read(&object, at, 128 << 10).unwrap(), &bytes[at as usize..][..128 << 10]);
        }
        super::super::runtime::wait_for_readahead();
        // The rest of the object was fetched ahead (the window reaches past its end), in fewer
        // requests than blocks; reading it costs none.
        let gets = memory.gets.load(Ordering::SeqCst);
        assert!(gets < 40, "{gets} requests");
        assert_eq!(read(&object, 20 * BLOCK, 20 * BLOCK as usize).unwrap(), &bytes[20 * BLOCK as usize..]);
        assert_eq!(memory.gets.load(Ordering::SeqCst), gets, "blocks 20 to 39 were fetched ahead");
    }

    #[test]
    fn a_changed_or_deleted_object_fails_reads_of_blocks_not_cached() {
        let bytes = pattern((3 * BLOCK) as usize, 1);
        let (memory, object) = opened(&bytes, 64 << 20);
        let path = StorePath::from("m.bin");
        handle().unwrap().block_on(memory.put(&path, pattern((3 * BLOCK) as usize, 2).into())).unwrap();
        assert!(matches!(read(&object, 2 * BLOCK, 10), Err(ReadError::SourceChanged)));
        // The first block was cached at open: it still reads as it was at mount.
        assert_eq!(read(&object, 0, 10).unwrap(), &bytes[..10]);
        handle().unwrap().block_on(memory.delete(&path)).unwrap();
        assert!(matches!(read(&object, BLOCK, 10), Err(ReadError::SourceChanged)));
    }
}
