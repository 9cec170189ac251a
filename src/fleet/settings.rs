//! The `segd serve` flags of fleet mode, flattened into
//! [`crate::config::ServeConfig`]. Without `--fleet-nats` segd is one node
//! with its own write-ahead log.

use std::time::Duration;

use clap::Args;

/// Fleet mode: frequency caps shared by every replica through NATS JetStream.
#[derive(Debug, Clone, Default, Args)]
pub struct FleetSettings {
    /// NATS servers (comma-separated URLs, e.g. nats://10.0.0.1:4222) whose
    /// JetStream stream is the fleet's impression log. Unset = single node
    /// (the embedded write-ahead log).
    #[arg(
        long,
        env = "SEGD_FLEET_NATS",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub fleet_nats: Vec<String>,

    /// Name of the JetStream stream holding the impressions (created if
    /// missing, with subjects `segd.impressions.>`).
    #[arg(long, env = "SEGD_FLEET_STREAM", default_value = "SEGD_IMPRESSIONS")]
    pub fleet_stream: String,

    /// Replication factor of a stream segd creates (1 on one NATS server, 3 on
    /// a three-node cluster).
    #[arg(long, env = "SEGD_FLEET_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=5))]
    pub fleet_replicas: u16,

    /// This replica's name in metrics, logs and message ids (default: the
    /// hostname).
    #[arg(long, env = "SEGD_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// How long JetStream deduplicates a republished batch by its message id.
    #[arg(long, env = "SEGD_FLEET_DUPLICATE_WINDOW_SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub fleet_duplicate_window_seconds: u64,

    /// JetStream object-store bucket holding pushed pack files: a push on
    /// any replica is stored here and served by every replica of its shard.
    #[arg(long, env = "SEGD_FLEET_PACKS_BUCKET", default_value = "segd-packs")]
    pub fleet_packs_bucket: String,

    /// JetStream key-value bucket holding what the fleet serves: the pack
    /// version per pack and shard, and the registered line items.
    #[arg(long, env = "SEGD_FLEET_KV_BUCKET", default_value = "segd-fleet")]
    pub fleet_kv_bucket: String,
}

impl FleetSettings {
    /// True when `--fleet-nats` names at least one server.
    pub fn enabled(&self) -> bool {
        !self.fleet_nats.is_empty()
    }

    /// `--replica-id`, else the hostname, else `segd`.
    pub fn resolved_replica_id(&self) -> String {
        if let Some(replica_id) = self.replica_id.as_ref().filter(|id| !id.is_empty()) {
            return replica_id.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .or_else(|| {
                std::env::var("HOSTNAME")
                    .ok()
                    .filter(|name| !name.is_empty())
            })
            .unwrap_or_else(|| "segd".to_owned())
    }

    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.fleet_duplicate_window_seconds)
    }
}
