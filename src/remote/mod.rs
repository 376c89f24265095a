//! Models on web servers, S3 and the Hugging Face Hub (docs/tree.md, remote sources), read in
//! byte ranges.
//!
//! Requests go through `object_store` (HTTP, S3 signing, retries with backoff, timeouts,
//! redirects). Fetched ranges are 1 MiB blocks in the shared [`ChunkCache`](crate::cache::ChunkCache)
//! (`--cache-size`), loaded once however many readers want them; a sequential reader gets the
//! next blocks fetched ahead, several requests at once. Every object is pinned at mount to the
//! size and ETag it had then: a response for anything else fails the read rather than mixing
//! versions.
//!
//! Layers, each using only those listed before it: `readahead` (the block size, and which
//! blocks to fetch ahead: a policy without I/O), `runtime` (the request threads, stopped
//! before the daemon forks), `redact` (what of a URL may be shown), `credentials` (secrets
//! read from a file), `failure` (request errors as one line), `store` (a server or bucket and
//! its client), `object` (one file, read in blocks), `dir` (the files beside it, and
//! listings), `url` (a source URL parsed into a directory and a file name).

mod credentials;
mod dir;
mod failure;
mod object;
mod readahead;
mod redact;
mod runtime;
mod store;
mod url;

pub use credentials::{Credentials, CredentialsError};
pub use dir::RemoteDir;
pub use object::RemoteObject;
pub use runtime::quiesce;
pub use store::RemoteOptions;
pub use redact::{is_url, redact};
pub use self::url::RemoteSource;

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use dir::next_link;
