//! Live counters a pull advances as bytes arrive (what progress output reads).

use std::sync::atomic::AtomicU64;

/// Live counters for progress output.
#[derive(Debug, Default)]
pub struct Progress {
    pub total: AtomicU64,
    pub done: AtomicU64,
}
