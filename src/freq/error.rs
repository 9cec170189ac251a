//! The frequency store's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the frequency store.
#[derive(Debug, thiserror::Error)]
pub enum FreqError {
    /// A write, fsync, rename or read of the log or a checkpoint failed. Nothing
    /// unacknowledged was reported as recorded; in-memory counts may include it.
    #[error("frequency storage failure: {0}")]
    Storage(String),
    /// A log segment holds a bad record followed by valid ones: refused at open
    /// unless `recover_corrupt_log` is set.
    #[error("corrupt frequency log {}: bad record at byte offset {offset}: {reason}", path.display())]
    CorruptLog {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the first bad record in the file.
        offset: u64,
        /// What was wrong with it.
        reason: String,
    },
    /// A checkpoint file failed its checksum or structure checks.
    #[error("corrupt frequency checkpoint {}: {reason}", path.display())]
    CorruptCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The configuration cannot work (e.g. a zero interval).
    #[error("invalid frequency config: {0}")]
    InvalidConfig(String),
    /// The replicated log (a fleet's stream) did not take the batch in time:
    /// unreachable, or no acknowledgement before the deadline.
    #[error("impression log unavailable: {0}")]
    Unavailable(String),
    /// `shutdown` was called; the store takes no more writes.
    #[error("frequency store is shut down")]
    ShutDown,
}

impl FreqError {
    pub(crate) fn storage(context: impl std::fmt::Display, error: impl std::fmt::Display) -> Self {
        FreqError::Storage(format!("{context}: {error}"))
    }
}
