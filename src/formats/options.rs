//! Settings every reader shares.

use crate::cache::ChunkCache;
use std::sync::Arc;

/// Settings every reader shares.
#[derive(Clone)]
pub struct ReadOptions {
    pub cache: Arc<ChunkCache>,
}
