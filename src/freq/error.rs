//! The frequency store's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the frequency store.
#[derive(Debug, thiserror::Error)]
pub enum FreqError {
    /// A write, fsync, rename or read of the log or a checkpoint failed. Nothing
    /// unacknowledged was reported as recorded; in-memory counts may include it.
    #[error("frequency storage failure: {context}: {source}")]
    Storage {
        /// What was being done, naming the file.
        context: String,
        #[source]
        source: std::io::Error,
    },
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
    pub(crate) fn storage(context: impl Into<String>, source: std::io::Error) -> Self {
        FreqError::Storage {
            context: context.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::freq::{FreqConfig, FreqStore};

    #[test]
    fn storage_errors_keep_their_io_source() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, b"x").unwrap();
        let Err(error) = FreqStore::open(FreqConfig::new(not_a_dir.join("freq"))) else {
            panic!("opened a store under a regular file");
        };
        let source = std::error::Error::source(&error)
            .and_then(|source| source.downcast_ref::<std::io::Error>())
            .unwrap_or_else(|| panic!("no io::Error source in {error:?}"));
        assert_eq!(source.kind(), std::io::ErrorKind::NotADirectory);
        assert!(error.to_string().contains("freq"), "{error}");
    }
}
