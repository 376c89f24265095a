//! The runtime that drives the requests: owned here and started on first use; [`quiesce`]
//! stops it (and drops every connection) so that the mount daemon can fork single-threaded.

use super::readahead::{READAHEAD_MAX, REQUEST_BLOCKS};
use crate::error::ReadError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

static RUNTIME: Mutex<Option<tokio::runtime::Runtime>> = Mutex::new(None);
/// Bumped by [`quiesce`]: clients made before it belong to a stopped runtime.
pub(super) static GENERATION: AtomicU64 = AtomicU64::new(0);

pub(super) fn handle() -> Result<tokio::runtime::Handle, ReadError> {
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
pub(super) struct Task;

impl Task {
    pub(super) fn start() -> Task {
        *READAHEADS.lock().unwrap() += 1;
        Task
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        *READAHEADS.lock().unwrap() -= 1;
        READAHEAD_DONE.notify_all();
    }
}

/// Returns once no readahead task runs.
pub(super) fn wait_for_readahead() {
    drop(READAHEAD_DONE.wait_while(READAHEADS.lock().unwrap(), |running| *running > 0).unwrap());
}

/// Stops the request runtime and its threads (before the mount daemon forks), once its
/// readahead is done; the next request starts a new one with new connections.
pub fn quiesce() {
    wait_for_readahead();
    let runtime = RUNTIME.lock().unwrap().take();
    GENERATION.fetch_add(1, Ordering::SeqCst);
    if let Some(runtime) = runtime {
        runtime.shutdown_timeout(Duration::from_secs(5));
    }
}
