//! Frequency counters: per (user fingerprint, cap key) the recent impression
//! times, made durable by a write-ahead log with group commit and bounded by
//! periodic checkpoints; plus the cap windows (rolling, day, week, month at a
//! UTC offset) that decide which of those times a cap counts. `count` is a
//! shard lock and two binary searches; `record` blocks until its batch is as
//! durable as the fsync policy promises, so call it from a blocking thread.
//! This module knows nothing of gRPC, prost or tokio: it is plain Rust with
//! std threads, and it must never log per request.
//!
//! - [`window`]: cap windows and civil-date math.
//! - [`counters`]: the sharded in-memory maps of impression times and ids.
//! - [`log`]: the write-ahead log: `log::format` (segments on disk, encoder,
//!   checked decoder) and `log::writer` (group commit).
//! - [`checkpoint`]: snapshot files that let old segments be deleted.
//! - [`store`]: [`FreqStore`], what the gRPC layer calls; it also applies
//!   batches of a replicated log (a fleet's stream) in stream order.
//! - [`sink`]: [`ImpressionSink`], where `RecordImpressions` sends a batch:
//!   the local log, or a fleet's stream (`crate::fleet`).
//! - [`error`]: the error type, [`FreqError`].
//! - [`telemetry`]: its figures for `GET /metrics`.

pub mod checkpoint;
pub mod counters;
pub mod error;
pub mod forget;
pub mod log;
mod recovery;
pub mod sink;
pub mod store;
pub mod telemetry;
pub mod window;

pub use counters::{CountQuery, EXACT_LIMIT, cap_key_hash, impression_id_hash};
pub use error::FreqError;
pub use forget::ForgottenUsers;
#[cfg(any(test, feature = "test-hooks"))]
pub use log::InjectedFault;
pub use log::{
    DecodedSegment, FsyncPolicy, LogImpression, SegmentDecodeError, decode_log_segment,
    decode_record_payload, encode_record_payload,
};
pub use sink::{ImpressionSink, RecordFuture};
pub use store::{FreqConfig, FreqStats, FreqStore, NewImpression, RecordOutcome, RecoveryReport};
pub use window::{Calendar, CapWindow};
