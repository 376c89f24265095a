//! Models on web servers, S3 and the Hugging Face Hub (TREE.md 9), read in byte ranges.
//!
//! Requests go through `object_store` (HTTP, S3 signing, retries with backoff, timeouts,
//! redirects). Fetched ranges are 1 MiB blocks in the shared [`ChunkCache`] (`--cache-size`),
//! loaded once however many readers want them; a sequential reader gets the next blocks
//! fetched ahead, several requests at once. Every object is pinned at mount to the size and
//! ETag it had then: a response for anything else fails the read rather than mixing versions.
//!
//! The runtime that drives the requests is owned here and started on first use; [`quiesce`]
//! stops it (and drops every connection) so that the mount daemon can fork single-threaded.

use crate::cache::ChunkCache;
use crate::error::{OpenError, ReadError};
use crate::source::{Entry, EntryKind};
use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::http::HttpBuilder;
use object_store::path::Path as StorePath;
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::{BackoffConfig, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use std::sync::atomic::{AtomicU64, Ordering};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// Bytes cached per entry, and fetched by a request for a read that is not sequential.
const BLOCK: u64 = 1 << 20;
/// Largest directory listing read from the Hub's API (all its pages together).
const MAX_LISTING: u64 = 16 << 20;
/// Most pages of one Hub listing followed (the Hub pages 1000 entries at a time).
const MAX_LISTING_PAGES: usize = 1000;
/// The first wait before a failed request is retried; it doubles with each retry.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// A sequential run starts readahead once it has read this much: two of the kernel's 128 KiB
/// reads. One read (metadata; a random 4 KiB read, which the kernel rounds up) fetches nothing
/// ahead. The window then grows with the run (four times what the run has read: fivefold per
/// round trip), so that a long read soon keeps enough requests in flight for the link's
/// bandwidth-delay product, while a short one (a small tensor) fetches little it will not read.
const READAHEAD_AFTER: u64 = 256 << 10;
/// The largest readahead window, in blocks (it is also at most half the cache, so that what
/// readahead fetched is not evicted before it is read).
const READAHEAD_MAX: u64 = 64;
/// The most blocks one readahead request asks for; a window is split into requests of up to
/// this many blocks, fetched at the same time (each streamed into the cache block by block).
const REQUEST_BLOCKS: u64 = 8;
/// Sequential runs followed at once in one object: readers streaming different tensors of
/// one file each get their readahead.
const RUNS: usize = 4;

/// How requests behave.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// Longest a request may take before it is retried (and the read fails once retries run out).
    pub timeout: Duration,
    /// Retries of a failed request, with exponential backoff.
    pub retries: usize,
}

/// `true` for a source that names a remote object rather than a local path.
pub fn is_url(source: &str) -> bool {
    ["http://", "https://", "s3://", "hf://"].iter().any(|scheme| source.starts_with(scheme))
}

/// The URL as it may be shown (messages, `info.json`, the mount table): without user info and
/// query string, where credentials and signed tokens live.
pub fn redact(source: &str) -> String {
    // What a request would use is what the URL parser reads (it also takes `https:/user@host`).
    if let Ok(mut url) = url::Url::parse(source)
        && url.has_host()
    {
        let _ = (url.set_username(""), url.set_password(None));
        url.set_query(None);
        url.set_fragment(None);
        return url.to_string();
    }
    // Not a URL a request could use: cut by hand, and again if what is left parses.
    let (without_query, _) = source.split_once(['?', '#']).unwrap_or((source, ""));
    let cut = match without_query.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => without_query.to_string(),
    };
    if cut == source { cut } else { redact(&cut) }
}

// ---- runtime -------------------------------------------------------------------------------

static RUNTIME: Mutex<Option<tokio::runtime::Runtime>> = Mutex::new(None);
/// Bumped by [`quiesce`]: clients made before it belong to a stopped runtime.
static GENERATION: AtomicU64 = AtomicU64::new(0);

fn handle() -> Result<tokio::runtime::Handle, ReadError> {
    // Readahead tasks run on the runtime's own threads: they keep to the runtime they began in.
    if let Ok(current) = tokio::runtime::Handle::try_current() {
        return Ok(current);
    }
    let mut runtime = RUNTIME.lock().unwrap();
    if runtime.is_none() {
        *runtime = Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .max_blocking_threads(2 * (READAHEAD_MAX / REQUEST_BLOCKS) as usize)
                .thread_name("wfs-remote")
                .enable_all()
                .build()?,
        );
    }
    Ok(runtime.as_ref().expect("just set").handle().clone())
}

/// Readahead tasks still running: the runtime stops only once they are done, since a request
/// cut off by the runtime's shutdown would fail inside the cache's loader.
static READAHEADS: Mutex<usize> = Mutex::new(0);
static READAHEAD_DONE: Condvar = Condvar::new();

/// Counts one readahead task while it lives.
struct Readahead;

impl Readahead {
    fn start() -> Readahead {
        *READAHEADS.lock().unwrap() += 1;
        Readahead
    }
}

impl Drop for Readahead {
    fn drop(&mut self) {
        *READAHEADS.lock().unwrap() -= 1;
        READAHEAD_DONE.notify_all();
    }
}

/// Stops the request runtime and its threads (before the mount daemon forks), once its
/// readahead is done; the next request starts a new one with new connections.
pub fn quiesce() {
    drop(READAHEAD_DONE.wait_while(READAHEADS.lock().unwrap(), |running| *running > 0).unwrap());
    let runtime = RUNTIME.lock().unwrap().take();
    GENERATION.fetch_add(1, Ordering::SeqCst);
    if let Some(runtime) = runtime {
        runtime.shutdown_timeout(Duration::from_secs(5));
    }
}

// ---- stores --------------------------------------------------------------------------------

/// Which service a store talks to, with what it needs to (re)build its client.
#[derive(Debug)]
enum Service {
    /// A web server: `base` is `scheme://host[:port]` (with the URL's query, if any). On the
    /// Hub (`hub`: the kind of repository, `models`, `datasets` or `spaces`), directories are
    /// listed by its API.
    Http { base: String, headers: HeaderMap, hub: Option<&'static str> },
    S3 { bucket: String },
}

/// One server or bucket, its client and the cache its objects' blocks go to.
pub struct Store {
    service: Service,
    options: RemoteOptions,
    cache: Arc<ChunkCache>,
    client: Mutex<Option<(u64, Arc<dyn ObjectStore>)>>,
}

impl Store {
    fn new(service: Service, options: &RemoteOptions, cache: Arc<ChunkCache>) -> Arc<Store> {
        Arc::new(Store { service, options: options.clone(), cache, client: Mutex::new(None) })
    }

    /// The client of the current runtime generation, built on first use.
    fn client(&self) -> Result<Arc<dyn ObjectStore>, ReadError> {
        let generation = GENERATION.load(Ordering::SeqCst);
        let mut client = self.client.lock().unwrap();
        if let Some((_, c)) = client.as_ref().filter(|(built, _)| *built == generation) {
            return Ok(c.clone());
        }
        let built = self.build().map_err(|e| ReadError::Io(std::io::Error::other(reason(&e))))?;
        *client = Some((generation, built.clone()));
        Ok(built)
    }

    /// What every request to this store is sent with: timeouts, trusted roots, and on a web
    /// server the credential headers.
    fn client_options(&self) -> ClientOptions {
        // rustls needs a process-wide crypto provider; a second install is a harmless no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = self.options.timeout;
        let client = ClientOptions::new().with_timeout(timeout).with_connect_timeout(timeout).with_allow_http(true);
        let client = system_roots().iter().fold(client.with_no_system_certificates(true), |c, root| c.with_root_certificate(root.clone()));
        match &self.service {
            Service::Http { headers, .. } => client.with_default_headers(headers.clone()),
            Service::S3 { .. } => client,
        }
    }

    fn build(&self) -> object_store::Result<Arc<dyn ObjectStore>> {
        let client = self.client_options();
        let timeout = self.options.timeout;
        let retry = RetryConfig {
            backoff: BackoffConfig { init_backoff: RETRY_BACKOFF, max_backoff: Duration::from_secs(2), base: 2.0 },
            max_retries: self.options.retries,
            retry_timeout: timeout.saturating_mul(self.options.retries as u32 + 1),
        };
        Ok(match &self.service {
            Service::Http { base, .. } => Arc::new(HttpBuilder::new().with_url(base.as_str()).with_client_options(client).with_retry(retry).build()?),
            Service::S3 { bucket } => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                for (key, value) in aws_profile() {
                    builder = builder.with_config(key, value);
                }
                Arc::new(builder.with_client_options(client).with_retry(retry).build()?)
            }
        })
    }

    fn block_on<T>(&self, request: impl AsyncFnOnce(Arc<dyn ObjectStore>) -> Result<T, ReadError>) -> Result<T, ReadError> {
        let client = self.client()?;
        handle()?.block_on(request(client))
    }
}

/// The system's root certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR` when set), the ones
/// reqwest's platform verifier would read for every client. Read once per process instead: the
/// mount daemon inherits them across the fork, so its first read does not wait the few
/// milliseconds that reading and decoding some 150 files takes.
fn system_roots() -> &'static [object_store::Certificate] {
    static ROOTS: OnceLock<Vec<object_store::Certificate>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs.iter().filter_map(|der| object_store::Certificate::from_der(der).ok()).collect())
}

/// Settings of the AWS profile (`AWS_PROFILE`, else `default`) from the shared config and
/// credentials files, for what the environment does not set itself.
fn aws_profile() -> Vec<(AmazonS3ConfigKey, String)> {
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from).unwrap_or_default();
    let file = |var: &str, name: &str| std::env::var_os(var).map(std::path::PathBuf::from).unwrap_or_else(|| home.join(".aws").join(name));
    // The config file names sections `[profile NAME]` (except `[default]`), credentials `[NAME]`.
    let config_section = if profile == "default" { profile.clone() } else { format!("profile {profile}") };
    let mut settings = ini_section(&file("AWS_SHARED_CREDENTIALS_FILE", "credentials"), &profile);
    settings.extend(ini_section(&file("AWS_CONFIG_FILE", "config"), &config_section));
    let mut out = Vec::new();
    for (name, value) in settings {
        let (key, env): (_, &[&str]) = match name.as_str() {
            "aws_access_key_id" => (AmazonS3ConfigKey::AccessKeyId, &["AWS_ACCESS_KEY_ID"]),
            "aws_secret_access_key" => (AmazonS3ConfigKey::SecretAccessKey, &["AWS_SECRET_ACCESS_KEY"]),
            "aws_session_token" => (AmazonS3ConfigKey::Token, &["AWS_SESSION_TOKEN"]),
            "region" => (AmazonS3ConfigKey::Region, &["AWS_REGION", "AWS_DEFAULT_REGION"]),
            "endpoint_url" => (AmazonS3ConfigKey::Endpoint, &["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]),
            _ => continue,
        };
        if env.iter().all(|var| std::env::var_os(var).is_none()) && !out.iter().any(|(k, _)| *k == key) {
            out.push((key, value));
        }
    }
    out
}

/// `key = value` lines of section `[name]` of an INI file (empty if the file or section is missing).
fn ini_section(path: &std::path::Path, name: &str) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let mut inside = false;
    let mut found = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = section.trim() == name;
        } else if let (true, Some((key, value))) = (inside, line.split_once('=')) {
            found.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    found
}

// ---- objects -------------------------------------------------------------------------------

/// One remote file, pinned to its size and ETag at mount.
pub struct RemoteObject {
    store: Arc<Store>,
    path: StorePath,
    shown: String,
    size: u64,
    etag: Option<String>,
    /// The object's blocks in the cache are keyed `(id, block number)`.
    id: u64,
    /// The latest runs of sequential reads, least recent first.
    runs: Mutex<Vec<Run>>,
}

/// Consecutive reads `[start, end)` of one object; blocks below `ahead` were already handed
/// to readahead for them.
struct Run {
    start: u64,
    end: u64,
    ahead: u64,
}

impl std::fmt::Debug for RemoteObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteObject").field("shown", &self.shown).field("size", &self.size).finish()
    }
}

impl RemoteObject {
    /// Reads the object's first block, which gives its size and ETag and proves that the
    /// server answers ranged requests with ranges. No HEAD request: a presigned URL is signed
    /// for GET only.
    fn open(store: &Arc<Store>, path: StorePath, shown: String) -> Result<Arc<RemoteObject>, OpenError> {
        let unreadable = |e: ReadError| {
            OpenError::unreadable(match e {
                ReadError::Io(e) => e.to_string(),
                other => other.to_string(),
            })
        };
        let first = store.block_on(async |c| {
            let options = GetOptions { range: Some((0..BLOCK).into()), ..GetOptions::default() };
            match c.get_opts(&path, options).await {
                Ok(answer) => {
                    let meta = answer.meta.clone();
                    let bytes = answer.bytes().await.map_err(read_error)?;
                    Ok((meta, Some(bytes)))
                }
                Err(missing @ object_store::Error::NotFound { .. }) => Err(head_error(missing)),
                // An empty object has no first byte to ask for: its size comes from HEAD.
                Err(range_error) => match c.head(&path).await {
                    Ok(meta) if meta.size == 0 => Ok((meta, None)),
                    _ => Err(head_error(range_error)),
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
            runs: Mutex::new(Vec::new()),
        });
        if let Some(bytes) = first {
            if bytes.len() as u64 != object.size.min(BLOCK) {
                return Err(unreadable(ReadError::SourceChanged));
            }
            let bytes = Arc::<[u8]>::from(&bytes[..]);
            object.store.cache.get_or_load((object.id, 0), || Ok(bytes)).map_err(unreadable)?;
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

    /// Fills `buf` from `offset` (the caller checked the range against [`Self::len`]).
    pub fn read_at(self: &Arc<Self>, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
        let ahead = {
            let mut runs = self.runs.lock().unwrap();
            // A read within a block of a run's end continues it (the daemon's threads may serve
            // the kernel's sequential reads a little out of order); any other read starts a new
            // run, in place of the least recent one when there are RUNS.
            let continued = runs.iter().position(|r| (r.end.saturating_sub(BLOCK)..=r.end + BLOCK).contains(&offset));
            let mut run = match continued {
                Some(i) => {
                    let run = runs.remove(i);
                    Run { start: run.start.min(offset), end: run.end.max(end), ..run }
                }
                None => {
                    if runs.len() == RUNS {
                        runs.remove(0);
                    }
                    Run { start: offset, end, ahead: 0 }
                }
            };
            let run_length = run.end - run.start;
            let ahead = if run_length >= READAHEAD_AFTER { self.ahead_of(&mut run, last + 1, run_length) } else { None };
            runs.push(run);
            ahead
        };
        if let Some(blocks) = ahead {
            self.read_ahead(blocks)?;
        }
        // A read of several blocks gets those not cached with one request per run of up to
        // REQUEST_BLOCKS of them, the runs at the same time; whatever that did not bring (cached,
        // fetched by someone else, failed) comes from `block`.
        let mut blocks: Vec<Option<Arc<[u8]>>> = vec![None; (last - first + 1) as usize];
        if last > first {
            std::thread::scope(|scope| {
                let mut parts = (first..).step_by(REQUEST_BLOCKS as usize).zip(blocks.chunks_mut(REQUEST_BLOCKS as usize));
                let own = parts.next().expect("at least one block");
                let fetch = |(part_first, part): (u64, &mut [Option<Arc<[u8]>>])| {
                    self.fetch_blocks(part_first..part_first + part.len() as u64, |n, block| part[(n - part_first) as usize] = Some(block.clone()))
                };
                for part in parts {
                    scope.spawn(move || fetch(part));
                }
                fetch(own);
            });
        }
        let mut filled = 0usize;
        for (n, block) in (first..).zip(blocks) {
            let block = match block {
                Some(block) => block,
                None => self.block(n)?,
            };
            let from = (offset + filled as u64 - n * BLOCK) as usize;
            let take = (block.len() - from).min(buf.len() - filled);
            buf[filled..filled + take].copy_from_slice(&block[from..from + take]);
            filled += take;
        }
        Ok(())
    }

    fn block_count(&self) -> u64 {
        self.size.div_ceil(BLOCK)
    }

    /// The blocks to fetch ahead of a sequential reader whose `run` has read `run_length` and
    /// whose next block is `next`, if enough are due for full requests (called under the `runs`
    /// lock, which keeps `run.ahead` consistent). Returns them with the blocks each request is
    /// to ask for.
    fn ahead_of(&self, run: &mut Run, next: u64, run_length: u64) -> Option<(std::ops::Range<u64>, u64)> {
        let limit = READAHEAD_MAX.min(self.store.cache.capacity() / BLOCK / 2);
        let window = (4 * run_length).div_ceil(BLOCK).min(limit);
        let until = (next + window).min(self.block_count());
        let start = run.ahead.clamp(next, until);
        // Requests of a quarter of the window (several in flight), none issued before it can
        // be full, except at the end of the object.
        let request = (window / 4).clamp(1, REQUEST_BLOCKS);
        if start == until || (until - start < request && until < self.block_count()) {
            return None;
        }
        run.ahead = until;
        Some((start..until, request))
    }

    /// Starts fetching `blocks` (those not yet cached or on their way), in requests of up to
    /// `request` blocks, all at once.
    fn read_ahead(self: &Arc<Self>, (blocks, request): (std::ops::Range<u64>, u64)) -> Result<(), ReadError> {
        let handle = handle()?;
        let mut first = blocks.start;
        while first < blocks.end {
            let count = request.min(blocks.end - first);
            let object = self.clone();
            let counted = Readahead::start();
            handle.spawn_blocking(move || {
                let _counted = counted;
                object.fetch_blocks(first..first + count, |_, _| {});
            });
            first += count;
        }
        Ok(())
    }

    /// Fetches `blocks` into the cache with as few requests as those already cached or being
    /// fetched allow, handing each block fetched to `keep` too. Failures are not cached: the
    /// reader that needs the block asks again.
    fn fetch_blocks(self: &Arc<Self>, blocks: std::ops::Range<u64>, mut keep: impl FnMut(u64, &Arc<[u8]>)) {
        let keys: Vec<_> = blocks.clone().map(|n| (self.id, n)).collect();
        let mut done = 0;
        while done < keys.len() {
            done += self.store.cache.load_run(&keys[done..], |from, count, put| {
                let mut n = blocks.start + (done + from) as u64;
                let first = n;
                let mut put_and_keep = |block: Arc<[u8]>| {
                    keep(n, &block);
                    n += 1;
                    put(block);
                };
                self.fetch_here(first, count as u64, &mut put_and_keep)
            });
        }
    }

    /// Block `n`, from the cache or fetched (once, however many readers ask at the same time).
    fn block(self: &Arc<Self>, n: u64) -> Result<Arc<[u8]>, ReadError> {
        self.store.cache.get_or_load((self.id, n), || {
            let mut block = None;
            self.fetch_here(n, 1, &mut |b| block = Some(b))?;
            Ok(block.expect("one block fetched"))
        })
    }

    /// Fetches blocks `first..first + count` (all in the object) with [`Self::fetch`] on the
    /// runtime's threads, which read the socket without waking this thread for every piece of
    /// the body, and hands each block to `put` on this thread as soon as it is complete.
    fn fetch_here(self: &Arc<Self>, first: u64, count: u64, put: &mut dyn FnMut(Arc<[u8]>)) -> Result<(), ReadError> {
        let client = self.store.client()?;
        let (sender, blocks) = std::sync::mpsc::channel();
        let object = self.clone();
        handle()?.spawn(async move {
            let each = sender.clone();
            if let Err(e) = object.fetch(client, first, count, move |block| drop(each.send(Ok(block)))).await {
                let _ = sender.send(Err(e));
            }
        });
        let mut received = 0;
        for block in blocks {
            put(block?);
            received += 1;
        }
        if received < count {
            return Err(ReadError::Io(std::io::Error::other("the request was cut off")));
        }
        Ok(())
    }

    /// Fetches blocks `first..first + count` with one ranged request, handing each to `put` as
    /// soon as its bytes are in.
    async fn fetch(&self, client: Arc<dyn ObjectStore>, first: u64, count: u64, mut put: impl FnMut(Arc<[u8]>) + Send) -> Result<(), ReadError> {
        let start = first * BLOCK;
        let end = ((first + count) * BLOCK).min(self.size);
        // A weak ETag cannot be matched strongly; the ETag of the answer is compared anyway.
        let if_match = self.etag.clone().filter(|e| !e.starts_with("W/"));
        let options = GetOptions { range: Some((start..end).into()), if_match, ..GetOptions::default() };
        let answer = client.get_opts(&self.path, options).await.map_err(read_error)?;
        if answer.meta.size != self.size || (self.etag.is_some() && answer.meta.e_tag != self.etag) {
            return Err(ReadError::SourceChanged);
        }
        let mut body = answer.into_stream();
        let (mut at, mut block) = (start, Filling::new((end - start).min(BLOCK) as usize));
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(read_error)?;
            let mut piece = &piece[..];
            while !piece.is_empty() {
                if at == end {
                    return Err(ReadError::SourceChanged);
                }
                let take = piece.len().min(block.room());
                block.push(&piece[..take]);
                piece = &piece[take..];
                if block.room() == 0 {
                    let done = std::mem::replace(&mut block, Filling::new(0)).finish();
                    at += done.len() as u64;
                    put(done);
                    block = Filling::new((end - at).min(BLOCK) as usize);
                }
            }
        }
        if at != end {
            return Err(ReadError::SourceChanged);
        }
        Ok(())
    }
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

fn head_error(e: object_store::Error) -> ReadError {
    match e {
        object_store::Error::NotFound { .. } => ReadError::Io(std::io::Error::new(std::io::ErrorKind::NotFound, "not found")),
        other => ReadError::Io(std::io::Error::other(reason(&other))),
    }
}

fn read_error(e: object_store::Error) -> ReadError {
    match e {
        object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. } => ReadError::SourceChanged,
        other => ReadError::Io(std::io::Error::other(reason(&other))),
    }
}

/// A request failure in one line. The URLs in it carry no secrets: user info and query
/// strings never reach the client, and tokens travel in headers.
fn reason(e: &object_store::Error) -> String {
    if matches!(e, object_store::Error::NotSupported { .. }) {
        return "the server ignores Range requests (wfs reads remote files in ranges and never downloads them whole)".into();
    }
    chain(e)
}

/// An error and its causes in one line (the causes say more than the wrapper's first words),
/// every URL in it redacted: request errors name the URL, whose query may hold a signature.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text.split_whitespace().map(|word| if word.contains("://") { redact(word) } else { word.to_string() }).collect::<Vec<_>>().join(" ")
}

// ---- URLs and directories ------------------------------------------------------------------

/// The files beside a remote object: a store and a directory in it.
pub struct RemoteDir {
    store: Arc<Store>,
    /// Segments of the directory's path in the store.
    dir: Vec<String>,
    /// The directory's URL as shown (ends in `/`).
    shown: String,
    /// The directory's entries, listed once.
    listing: OnceLock<Vec<Entry>>,
    /// Subdirectories asked for so far, each listed at most once.
    subs: Mutex<HashMap<String, Arc<RemoteDir>>>,
    /// Files opened so far: readers that look at a file before opening it for good (a
    /// checkpoint's `.index`) cost one request and one cached first block, not two.
    opened: Mutex<HashMap<String, Arc<RemoteObject>>>,
}

impl RemoteDir {
    fn new(store: Arc<Store>, dir: Vec<String>, shown: String) -> Arc<RemoteDir> {
        Arc::new(RemoteDir { store, dir, shown, listing: OnceLock::new(), subs: Mutex::default(), opened: Mutex::default() })
    }

    /// Opens the file `name` of this directory (a plain name, checked by the caller).
    pub fn open(&self, name: &str) -> Result<Arc<RemoteObject>, OpenError> {
        if let Some(object) = self.opened.lock().unwrap().get(name) {
            return Ok(object.clone());
        }
        let path = StorePath::from_iter(self.dir.iter().map(String::as_str).chain([name]));
        let object = RemoteObject::open(&self.store, path, self.shown(name))?;
        Ok(self.opened.lock().unwrap().entry(name.to_string()).or_insert(object).clone())
    }

    /// The subdirectory `name` (a plain name, checked by the caller).
    pub fn sub(&self, name: &str) -> Arc<RemoteDir> {
        let mut subs = self.subs.lock().unwrap();
        let sub = subs.entry(name.to_string()).or_insert_with(|| {
            let dir = self.dir.iter().cloned().chain([name.to_string()]).collect();
            RemoteDir::new(self.store.clone(), dir, format!("{}{name}/", self.shown))
        });
        sub.clone()
    }

    /// The directory's files and subdirectories: S3 lists them, the Hub's API does; a web
    /// server cannot.
    pub fn list(&self) -> Result<Vec<Entry>, OpenError> {
        if let Some(entries) = self.listing.get() {
            return Ok(entries.clone());
        }
        let listed = match &self.store.service {
            Service::S3 { .. } => self.list_s3(),
            Service::Http { hub: Some(kind), .. } => self.list_hub(kind),
            Service::Http { hub: None, .. } => {
                return Err(OpenError::unreadable(format!(
                    "{}: a web server does not list directories; name a file (a checkpoint's .index, a shard index) or use s3:// or hf://",
                    self.shown
                )));
            }
        };
        let entries = listed.map_err(|e| OpenError::unreadable(format!("listing {}: {e}", self.shown)))?;
        Ok(self.listing.get_or_init(|| entries).clone())
    }

    fn list_s3(&self) -> Result<Vec<Entry>, ReadError> {
        let prefix = StorePath::from_iter(self.dir.iter().map(String::as_str));
        let listed = self.store.block_on(async |c| c.list_with_delimiter(Some(&prefix)).await.map_err(head_error))?;
        let named = |path: &StorePath| path.filename().map(str::to_string);
        let dirs = listed.common_prefixes.iter().filter_map(named).map(|name| Entry { name, kind: EntryKind::Dir });
        let files = listed.objects.iter().filter_map(|o| named(&o.location)).map(|name| Entry { name, kind: EntryKind::File });
        Ok(dirs.chain(files).collect())
    }

    /// The Hub's tree API: `GET /api/KIND/ORG/REPO/tree/REV/PATH` answers a JSON array of
    /// `{"type": "file" | "directory", "path": ...}`, a page at a time: a `Link: <URL>;
    /// rel="next"` header names the next page. Pages are asked for with the store's options
    /// (token, roots, timeout) through object_store's client, which, unlike the store, shows
    /// the response's headers.
    fn list_hub(&self, kind: &str) -> Result<Vec<Entry>, ReadError> {
        let [org, repo, _resolve, rev, below @ ..] = &self.dir[hub_prefix(kind) - 4..] else { unreachable!("hf paths start [KIND/]ORG/REPO/resolve/REV") };
        let Service::Http { base, .. } = &self.store.service else { unreachable!("hf:// is served over HTTP") };
        let failed = |why: String| ReadError::Io(std::io::Error::other(why));
        let mut first = url::Url::parse(base).map_err(|e| failed(format!("HF_ENDPOINT: {e}")))?;
        first
            .path_segments_mut()
            .map_err(|_| failed("HF_ENDPOINT is not an http(s) URL".into()))?
            .pop_if_empty()
            .extend(["api", kind, org, repo, "tree", rev].into_iter().chain(below.iter().map(String::as_str)));
        let client = ReqwestConnector::default().connect(&self.store.client_options()).map_err(|e| failed(reason(&e)))?;
        let (mut entries, mut received, mut page) = (Vec::new(), 0u64, Some(first.clone()));
        for _ in 0..MAX_LISTING_PAGES {
            let Some(url) = page.take() else { return Ok(entries) };
            let (body, next) = handle()?.block_on(self.hub_page(&client, &url, MAX_LISTING - received))?;
            received += body.len() as u64;
            entries.extend(hub_entries(&body)?);
            if let Some(next) = next {
                let next = url.join(&next).map_err(|_| failed("the Hub's next page is not a URL".into()))?;
                // The token goes with every page: only to the server that was asked.
                if next.origin() != first.origin() {
                    return Err(failed(format!("the Hub's next page is on another server ({}): not followed", redact(next.as_str()))));
                }
                page = Some(next);
            }
        }
        Err(failed(format!("the Hub's listing has more than {MAX_LISTING_PAGES} pages")))
    }

    /// One page of a Hub listing, at most `limit` bytes, and the next page's URL if there is
    /// one; retried as the store's requests are.
    async fn hub_page(&self, client: &HttpClient, url: &url::Url, limit: u64) -> Result<(Vec<u8>, Option<String>), ReadError> {
        let failed = |why: String| ReadError::Io(std::io::Error::other(why));
        let mut wait = RETRY_BACKOFF;
        let mut attempt = 0;
        loop {
            let request = http::Request::get(url.as_str()).body(HttpRequestBody::empty()).map_err(|e| failed(e.to_string()))?;
            let error = match client.execute(request).await {
                Ok(response) if response.status().is_success() => {
                    let next = response.headers().get_all(http::header::LINK).iter().filter_map(|v| v.to_str().ok()).find_map(next_link);
                    let mut body = Vec::new();
                    let mut stream = response.into_body().bytes_stream();
                    while let Some(piece) = stream.next().await {
                        let piece = piece.map_err(|e| failed(chain(&e)))?;
                        if (body.len() + piece.len()) as u64 > limit {
                            return Err(failed(format!("a listing of more than {MAX_LISTING} bytes")));
                        }
                        body.extend_from_slice(&piece);
                    }
                    return Ok((body, next));
                }
                Ok(response) if response.status() == http::StatusCode::NOT_FOUND => {
                    return Err(ReadError::Io(std::io::Error::new(std::io::ErrorKind::NotFound, "not found")));
                }
                Ok(response) if !(response.status().is_server_error() || response.status() == http::StatusCode::TOO_MANY_REQUESTS) => {
                    return Err(failed(format!("the Hub answered {}", response.status())));
                }
                Ok(response) => format!("the Hub answered {}", response.status()),
                Err(e) => chain(&e),
            };
            if attempt == self.store.options.retries {
                return Err(failed(error));
            }
            attempt += 1;
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }

    /// How `name` in this directory is shown.
    pub fn shown(&self, name: &str) -> String {
        format!("{}{name}", self.shown)
    }
}

/// Path segments before a Hub repository's files: `[KIND/]ORG/REPO/resolve/REV`.
fn hub_prefix(kind: &str) -> usize {
    if kind == "models" { 4 } else { 5 }
}

/// The entries of one page of the Hub's tree API.
fn hub_entries(body: &[u8]) -> Result<Vec<Entry>, ReadError> {
    let not_a_listing = || ReadError::Io(std::io::Error::other("the Hub's answer is not a listing"));
    let listing: serde_json::Value = serde_json::from_slice(body).map_err(|_| not_a_listing())?;
    let entries = listing.as_array().ok_or_else(not_a_listing)?.iter().filter_map(|entry| {
        let name = entry["path"].as_str()?.rsplit('/').next()?.to_string();
        let kind = match entry["type"].as_str()? {
            "directory" => EntryKind::Dir,
            "file" => EntryKind::File,
            _ => return None,
        };
        Some(Entry { name, kind })
    });
    Ok(entries.collect())
}

/// The target of a `Link` header's `rel="next"` link (RFC 8288: `<URL>; rel="next", <URL>;
/// rel="last"`; parameter values may be quoted strings holding `;` and `,`).
pub(crate) fn next_link(header: &str) -> Option<String> {
    let mut rest = header;
    loop {
        let open = rest.find('<')?;
        let close = open + rest[open..].find('>')?;
        // The link's parameters run to the first comma outside a quoted string.
        let (mut params, mut start, mut quoted, mut end) = (Vec::new(), close + 1, false, rest.len());
        for (i, c) in rest.char_indices().skip_while(|&(i, _)| i <= close) {
            match c {
                '"' => quoted = !quoted,
                ';' | ',' if !quoted => {
                    params.push(&rest[start..i]);
                    start = i + 1;
                    if c == ',' {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        if end == rest.len() {
            params.push(&rest[start..]);
        }
        let is_next = params.iter().any(|param| {
            let Some((key, value)) = param.split_once('=') else { return false };
            key.trim().eq_ignore_ascii_case("rel") && value.trim().trim_matches('"').split_ascii_whitespace().any(|rel| rel.eq_ignore_ascii_case("next"))
        });
        if is_next {
            return Some(rest[open + 1..close].to_string());
        }
        rest = &rest[end..];
    }
}

/// A remote source: its directory and file name there.
pub struct RemoteSource {
    pub dir: Arc<RemoteDir>,
    pub name: String,
}

impl RemoteSource {
    /// Parses `http(s)://`, `s3://bucket/key` and `hf://org/repo[@rev]/path`.
    pub fn parse(source: &str, options: &RemoteOptions, cache: Arc<ChunkCache>) -> Result<RemoteSource, OpenError> {
        let bad = |why: &str| OpenError::unreadable(format!("not a usable URL: {why}"));
        let url = url::Url::parse(source).map_err(|e| bad(&e.to_string()))?;
        let mut segments: Vec<String> = url
            .path_segments()
            .map(|s| s.map(percent_decode).collect::<Result<_, _>>())
            .transpose()
            .map_err(|_| bad("the path is not UTF-8"))?
            .unwrap_or_default();
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| bad("no host"))?.to_string();
        let (service, shown_base) = match url.scheme() {
            "http" | "https" => {
                let mut headers = HeaderMap::new();
                if !url.username().is_empty() {
                    let user = percent_decode(url.username()).map_err(|_| bad("user name is not UTF-8"))?;
                    let password = percent_decode(url.password().unwrap_or_default()).map_err(|_| bad("password is not UTF-8"))?;
                    headers.insert(AUTHORIZATION, secret_header(&format!("Basic {}", base64(format!("{user}:{password}").as_bytes())))?);
                }
                let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
                let base = format!("{}://{host}{port}", url.scheme());
                // The query goes with every request (a presigned URL's signature lives there);
                // it is never shown.
                let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
                (Service::Http { base: format!("{base}{query}"), headers, hub: None }, base)
            }
            "s3" => (Service::S3 { bucket: host.clone() }, format!("s3://{host}")),
            "hf" => {
                let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
                let endpoint = endpoint.trim_end_matches('/').to_string();
                let mut headers = HeaderMap::new();
                if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
                    headers.insert(AUTHORIZATION, secret_header(&format!("Bearer {token}"))?);
                }
                // hf://org/repo@rev/path: the host is the organisation; no path is the repo's top.
                // Datasets and spaces are written as huggingface_hub writes them:
                // hf://datasets/org/repo@rev/path.
                let usage = "expected hf://[datasets/|spaces/]ORG/REPO[@REVISION][/PATH]";
                let kind = match host.as_str() {
                    "datasets" => "datasets",
                    "spaces" => "spaces",
                    _ => "models",
                };
                let org = if kind == "models" { host.clone() } else { segments.drain(..1.min(segments.len())).next().unwrap_or_default() };
                if segments.is_empty() || org.is_empty() {
                    return Err(bad(usage));
                }
                let repo_rev = segments.remove(0);
                // A revision may hold a `/` (`refs/pr/1`, written `refs%2Fpr%2F1`).
                let (repo, rev) = repo_rev.split_once('@').unwrap_or((&repo_rev, "main"));
                if repo.is_empty() || rev.is_empty() || repo.contains('/') || org.contains('/') {
                    return Err(bad(usage));
                }
                if segments.is_empty() {
                    segments.push(String::new());
                }
                // The Hub serves models at /ORG/REPO/resolve/REV/PATH, the others below /KIND/.
                let mut path: Vec<String> = if kind == "models" { vec![] } else { vec![kind.to_string()] };
                let shown = format!("hf://{}/{repo_rev}", path.iter().chain([&org]).cloned().collect::<Vec<_>>().join("/"));
                path.extend([org, repo.to_string(), "resolve".into(), rev.to_string()]);
                path.append(&mut segments);
                segments = path;
                (Service::Http { base: redact(&endpoint), headers, hub: Some(kind) }, shown)
            }
            other => return Err(bad(&format!("unknown scheme {other}"))),
        };
        let name = segments.pop().unwrap_or_default();
        // The segments the user wrote (the Hub's prefix is ours): shown, and plain names.
        let written = match &service {
            Service::Http { hub: Some(kind), .. } => &segments[hub_prefix(kind)..],
            _ => &segments[..],
        };
        if written.iter().chain([&name]).any(|s| s.contains('/')) {
            return Err(bad("an encoded / (%2F) inside a path segment"));
        }
        let shown_dir = format!("{shown_base}/{}", written.iter().map(|s| format!("{s}/")).collect::<String>());
        let store = Store::new(service, options, cache);
        Ok(RemoteSource { dir: RemoteDir::new(store, segments, shown_dir), name })
    }
}

fn secret_header(value: &str) -> Result<HeaderValue, OpenError> {
    let mut header = HeaderValue::from_str(value).map_err(|_| OpenError::unreadable("credentials hold characters a header cannot"))?;
    header.set_sensitive(true);
    Ok(header)
}

fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() { ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_finds_the_next_page() {
        let next = |header| next_link(header);
        assert_eq!(next(r#"<https://hub/api/models/o/r/tree/main?cursor=abc>; rel="next""#).as_deref(), Some("https://hub/api/models/o/r/tree/main?cursor=abc"));
        assert_eq!(next(r#"<https://h/p?c=1>; rel="prev", <https://h/p?c=3>; rel="next""#).as_deref(), Some("https://h/p?c=3"));
        assert_eq!(next(r#"<https://h/a,b>; title="x, rel=next"; rel=last"#), None);
        assert_eq!(next("</p?c=2>; REL=next").as_deref(), Some("/p?c=2"));
        assert_eq!(next(r#"<https://h/p?c=2>; rel="last next""#).as_deref(), Some("https://h/p?c=2"));
        for header in ["", "<https://h/p", r#"<https://h/p>; rel="last""#, "rel=next", "<>; rel=prev"] {
            assert_eq!(next(header), None, "{header}");
        }
    }

    #[test]
    fn secrets_are_not_shown() {
        assert_eq!(redact("https://user:pw@host:8443/a/b.h5?X-Amz-Signature=abc#frag"), "https://host:8443/a/b.h5");
        assert_eq!(redact("https://host/a@b/c"), "https://host/a@b/c");
        assert_eq!(redact("s3://bucket/key"), "s3://bucket/key");
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (plain, coded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
    }

    #[test]
    fn urls_name_directory_and_file() {
        let options = RemoteOptions { timeout: Duration::from_secs(1), retries: 0 };
        let cache = Arc::new(ChunkCache::new(1 << 20));
        let s = RemoteSource::parse("https://u:p@h:1/d/e%20f/m.h5?t=1", &options, cache.clone()).unwrap();
        assert_eq!((s.dir.dir.clone(), s.name.as_str(), s.dir.shown("x")), (vec!["d".to_string(), "e f".into()], "m.h5", "https://h:1/d/e f/x".into()));
        assert!(matches!(&s.dir.store.service, Service::Http { headers, .. } if headers[AUTHORIZATION].is_sensitive()));
        let s = RemoteSource::parse("hf://org/repo@v1/sub/w.safetensors", &options, cache.clone()).unwrap();
        assert_eq!(s.dir.dir, ["org", "repo", "resolve", "v1", "sub"]);
        assert_eq!(s.dir.shown("w"), "hf://org/repo@v1/sub/w");
        let s = RemoteSource::parse("s3://bucket/k/ckpt.index", &options, cache.clone()).unwrap();
        assert_eq!((s.dir.dir.clone(), s.name.as_str()), (vec!["k".to_string()], "ckpt.index"));
        // The top of a repository, and a revision with a `/`.
        let s = RemoteSource::parse("hf://org/repo", &options, cache.clone()).unwrap();
        assert_eq!((s.dir.dir.clone(), s.name.as_str(), s.dir.shown("x")), (vec!["org".to_string(), "repo".into(), "resolve".into(), "main".into()], "", "hf://org/repo/x".into()));
        let s = RemoteSource::parse("hf://org/repo@refs%2Fpr%2F1/w.gguf", &options, cache.clone()).unwrap();
        assert_eq!((s.dir.dir[3].as_str(), s.name.as_str()), ("refs/pr/1", "w.gguf"));
        // Datasets and spaces, as huggingface_hub writes them.
        let s = RemoteSource::parse("hf://datasets/org/data@v2/ckpt/m.h5", &options, cache.clone()).unwrap();
        assert_eq!((s.dir.dir.clone(), s.name.as_str()), (["datasets", "org", "data", "resolve", "v2", "ckpt"].map(String::from).to_vec(), "m.h5"));
        assert_eq!(s.dir.shown("m.h5"), "hf://datasets/org/data@v2/ckpt/m.h5");
        assert!(matches!(s.dir.store.service, Service::Http { hub: Some("datasets"), .. }));
        let s = RemoteSource::parse("hf://spaces/org/app", &options, cache.clone()).unwrap();
        assert_eq!((s.dir.dir.clone(), s.name.as_str(), s.dir.shown("x")), (["spaces", "org", "app", "resolve", "main"].map(String::from).to_vec(), "", "hf://spaces/org/app/x".into()));
        for bad in ["hf://org", "hf://org/a%2Fb@x/y", "s3:///key", "ftp://h/x", "https://h/a%2Fb/c", "hf://org/repo/a%2Fb", "hf://datasets", "hf://datasets/org", "hf://datasets/a%2Fb/c"] {
            assert!(RemoteSource::parse(bad, &options, cache.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn profile_sections_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(&path, "[other]\naws_access_key_id = NO\n[default]\naws_access_key_id = AKIA\n aws_secret_access_key=s3cr3t \n").unwrap();
        assert_eq!(ini_section(&path, "default"), [("aws_access_key_id".to_string(), "AKIA".to_string()), ("aws_secret_access_key".into(), "s3cr3t".into())]);
        assert!(ini_section(&path, "missing").is_empty());
    }
}
