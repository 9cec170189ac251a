//! The frequency store: durability, retention, checkpoints, recovery.

use clap::{Args, ValueEnum};

/// When an acknowledged impression is on stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FsyncMode {
    /// fsync before every acknowledgement (group commit): survives power loss.
    Always,
    /// Acknowledge once written to the OS, fsync every --fsync-interval-ms:
    /// survives a process crash; a machine crash loses at most the interval.
    Interval,
    /// Never fsync: survives a process crash only.
    Never,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Frequency caps")]
pub struct FrequencySettings {
    /// Frequency log durability policy.
    #[arg(long, env = "SEGD_FSYNC", value_enum, default_value_t = FsyncMode::Interval)]
    pub fsync: FsyncMode,

    /// fsync period of the frequency log under `--fsync interval`.
    #[arg(long, env = "SEGD_FSYNC_INTERVAL_MS", default_value_t = 10)]
    pub fsync_interval_ms: u64,

    /// How long impressions are kept for frequency caps; longer cap windows are refused.
    #[arg(long, env = "SEGD_FREQ_RETENTION_DAYS", default_value_t = 31, value_parser = clap::value_parser!(u32).range(1..=3660))]
    pub freq_retention_days: u32,

    /// Seconds between frequency checkpoints (bounds log replay at start-up).
    #[arg(long, env = "SEGD_CHECKPOINT_INTERVAL_SECONDS", default_value_t = 300)]
    pub checkpoint_interval_seconds: u64,

    /// Start even when the frequency log is corrupt mid-file: cut it at the
    /// first bad record (impressions after it are lost) instead of refusing.
    #[arg(long, env = "SEGD_RECOVER_CORRUPT_LOG")]
    pub recover_corrupt_log: bool,
}

impl FrequencySettings {
    pub fn retention_seconds(&self) -> i64 {
        self.freq_retention_days as i64 * 86_400
    }
}
