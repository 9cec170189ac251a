//! Where a `RecordImpressions` batch goes: [`ImpressionSink`]. On one node it
//! is the local write-ahead log ([`super::FreqStore::record`]); in a fleet it
//! is the shared stream (`crate::fleet`), applied back to the same counters.
//! The trait is plain `std` (a boxed future), so the domain names no runtime.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use super::{FreqError, NewImpression, RecordOutcome};

/// The future a sink returns.
pub type RecordFuture<'sink> =
    Pin<Box<dyn Future<Output = Result<RecordOutcome, FreqError>> + Send + 'sink>>;

/// Records a validated batch, all or nothing.
pub trait ImpressionSink: Send + Sync {
    /// Resolves once the batch is durable (per the sink's promise) and in this
    /// replica's counters. `deadline` is when the caller stops waiting: a sink
    /// that cannot finish by then fails with [`FreqError::Unavailable`] and
    /// must not have recorded the batch anywhere.
    fn record(&self, impressions: Vec<NewImpression>, deadline: Instant) -> RecordFuture<'_>;
}
