//! wfs: machine-learning model files as a read-only filesystem.
//!
//! A format reader (`formats`) turns a source into a format-neutral `model::Model`; `tree::Tree`
//! lays it out once at mount; `fs::Fs` answers filesystem operations over the tree; `fuse` is
//! the thin adapter to the kernel; `daemon` handles the mount's lifecycle.

// Byte sources report their length; emptiness is never asked of them.
#![allow(clippy::len_without_is_empty)]

pub mod argv;
pub mod cache;
pub(crate) mod codecs;
pub mod daemon;
pub mod diff;
pub mod dtype;
pub mod error;
pub(crate) mod export;
pub mod formats;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod fs;
pub mod fuse;
pub mod ggml;
pub(crate) mod listing;
pub mod logger;
pub mod model;
pub mod names;
pub mod npy;
pub mod output;
pub(crate) mod pickle;
pub(crate) mod quant;
pub mod remote;
pub mod source;
pub mod tools;
pub mod tree;
