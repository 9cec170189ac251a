//! The `segd serve` settings: one clap struct per concern, flattened into
//! [`ServeConfig`]. Each field is documented (the docs become `--help`), each
//! has an `SEGD_...` environment variable and a default; the flags and
//! variables are the same as when they were one struct. Tests build the
//! struct directly (`tests/common`: the defaults on ephemeral loopback ports).
//!
//! Other parts add their own group the same way: a struct of their own,
//! `#[command(flatten)]`ed here.

mod frequency;
mod freshness;
mod limits;
mod network;
mod watch;

use std::path::PathBuf;

use clap::Args;

pub use frequency::{FrequencySettings, FsyncMode};
pub use freshness::{FreshnessSettings, PackMaxAge, StalePacks};
pub use limits::LimitSettings;
pub use network::{MetricsListen, NetworkSettings, checked_admin_token};
pub use watch::WatchSettings;

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Directory holding packs and the frequency log; created if missing.
    #[arg(long, env = "SEGD_DATA_DIR", default_value = "./segd-data")]
    pub data_dir: PathBuf,

    /// Fill an empty data directory with a synthetic demo pack and print queries to try.
    #[arg(long)]
    pub demo: bool,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish
    /// before their connections are closed; then the frequency log is flushed
    /// and checkpointed and segd exits.
    #[arg(long, env = "SEGD_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,

    #[command(flatten)]
    pub network: NetworkSettings,

    #[command(flatten)]
    pub limits: LimitSettings,

    /// Connection bounds of both gRPC ports.
    #[command(flatten)]
    pub connections: crate::connections::ConnectionFlags,

    #[command(flatten)]
    pub frequency: FrequencySettings,

    #[command(flatten)]
    pub freshness: FreshnessSettings,

    #[command(flatten)]
    pub watch: WatchSettings,

    /// Real-time audiences and forgetting.
    #[command(flatten)]
    pub realtime: crate::realtime::RealtimeArgs,

    /// Audience sharding: `--shard I/N`.
    #[command(flatten)]
    pub sharding: crate::shard::ShardSettings,

    /// Fleet mode: the `--fleet-*` and `--replica-id` flags.
    #[command(flatten)]
    pub fleet: crate::fleet::FleetSettings,
}
