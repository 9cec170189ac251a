//! The `segd serve` flags: one clap struct, each field documented (the docs
//! become `--help`), each with an `SEGD_...` environment variable and a default.
//! Tests build the struct directly with [`ServeConfig::for_tests`].

use std::net::SocketAddr;
use std::path::PathBuf;

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
pub struct ServeConfig {
    /// Address of the query port (service segd.v1.Segments, health, reflection).
    #[arg(long, env = "SEGD_LISTEN", default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,

    /// Address of the admin port (service segd.v1.Admin, health, reflection).
    /// A non-loopback address requires an admin token.
    #[arg(long, env = "SEGD_ADMIN_LISTEN", default_value = "127.0.0.1:7401")]
    pub admin_listen: SocketAddr,

    /// Directory holding packs and the frequency log; created if missing.
    #[arg(long, env = "SEGD_DATA_DIR", default_value = "./segd-data")]
    pub data_dir: PathBuf,

    /// Bearer token every admin call must carry (`authorization: Bearer TOKEN`).
    #[arg(long, env = "SEGD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Fill an empty data directory with a synthetic demo pack and print queries to try.
    #[arg(long)]
    pub demo: bool,

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

    /// Largest pack file PushSnapshot accepts, in bytes.
    #[arg(long, env = "SEGD_MAX_PUSH_BYTES", default_value_t = 8 << 30)]
    pub max_push_bytes: u64,

    /// Most segment ids in one lookup.
    #[arg(long, env = "SEGD_MAX_SEGMENT_IDS", default_value_t = 1000)]
    pub max_segment_ids: usize,

    /// Most lookups in one BatchLookup.
    #[arg(long, env = "SEGD_MAX_BATCH_LOOKUPS", default_value_t = 1000)]
    pub max_batch_lookups: usize,

    /// Most candidates in one Decide.
    #[arg(long, env = "SEGD_MAX_CANDIDATES", default_value_t = 500)]
    pub max_candidates: usize,

    /// Most segment refs (all_of + any_of + none_of) in one candidate.
    #[arg(long, env = "SEGD_MAX_REFS_PER_CANDIDATE", default_value_t = 64)]
    pub max_refs_per_candidate: usize,

    /// Most frequency caps in one candidate.
    #[arg(long, env = "SEGD_MAX_CAPS_PER_CANDIDATE", default_value_t = 16)]
    pub max_caps_per_candidate: usize,

    /// Most impressions in one RecordImpressions.
    #[arg(long, env = "SEGD_MAX_IMPRESSIONS", default_value_t = 10_000)]
    pub max_impressions: usize,

    /// Most cap keys in one impression.
    #[arg(long, env = "SEGD_MAX_CAP_KEYS", default_value_t = 16)]
    pub max_cap_keys: usize,

    /// Longest cap key, in bytes.
    #[arg(long, env = "SEGD_MAX_CAP_KEY_BYTES", default_value_t = 128)]
    pub max_cap_key_bytes: usize,

    /// Longest user id, in bytes.
    #[arg(long, env = "SEGD_MAX_USER_ID_BYTES", default_value_t = 512)]
    pub max_user_id_bytes: usize,
}

impl ServeConfig {
    /// Defaults for a server on ephemeral loopback ports over `data_dir`.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: ServeConfig,
        }
        let mut config = Wrapper::parse_from(["segd"]).config;
        config.listen = "127.0.0.1:0".parse().expect("loopback address");
        config.admin_listen = "127.0.0.1:0".parse().expect("loopback address");
        config.data_dir = data_dir;
        config.admin_token = None;
        config
    }

    pub fn freq_retention_seconds(&self) -> i64 {
        self.freq_retention_days as i64 * 86_400
    }
}
