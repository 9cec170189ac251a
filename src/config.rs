//! The `segd serve` flags: one clap struct, each field documented (the docs
//! become `--help`), each with an `SEGD_...` environment variable and a default.
//! Tests build the struct directly (`tests/common`: the defaults on ephemeral
//! loopback ports).

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

/// What a pack older than its freshness bound does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StalePacks {
    /// Keep answering from it; it is reported stale in status, metrics and logs.
    Serve,
    /// Stop using it: its segments answer as unknown (non-members in Decide)
    /// until a fresh version is pushed. The file stays on disk.
    Drop,
}

/// Where the Prometheus endpoint listens: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl std::str::FromStr for MetricsListen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "off" | "none" | "disabled" | "" => Ok(Self(None)),
            address => address
                .parse()
                .map(|address| Self(Some(address)))
                .map_err(|error| format!("{address:?}: {error} (expected HOST:PORT or \"off\")")),
        }
    }
}

impl std::fmt::Display for MetricsListen {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(address) => write!(formatter, "{address}"),
            None => formatter.write_str("off"),
        }
    }
}

/// A per-pack freshness bound, `PACK=SECONDS` on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackMaxAge {
    pub pack: String,
    /// 0 = no bound for this pack.
    pub max_age_seconds: u64,
}

impl std::str::FromStr for PackMaxAge {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (pack, seconds) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: expected PACK=SECONDS"))?;
        if !crate::store::catalog::valid_pack_name(pack) {
            return Err(format!("{text:?}: {pack:?} is not a valid pack name"));
        }
        let max_age_seconds = seconds
            .parse()
            .map_err(|error| format!("{text:?}: seconds {seconds:?}: {error}"))?;
        Ok(Self {
            pack: pack.to_owned(),
            max_age_seconds,
        })
    }
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

    /// Address of the Prometheus endpoint (`GET /metrics`, plain HTTP/1.1),
    /// or `off`.
    #[arg(long, env = "SEGD_METRICS_LISTEN", default_value = "127.0.0.1:9400")]
    pub metrics_listen: MetricsListen,

    /// A pack older than this (now - built_at, in seconds) is stale; 0 = no bound.
    #[arg(long, env = "SEGD_MAX_PACK_AGE_SECONDS", default_value_t = 0)]
    pub max_pack_age_seconds: u64,

    /// Per-pack freshness bound, PACK=SECONDS (0 = none), replacing
    /// --max-pack-age-seconds for that pack. Repeatable; comma-separated in the env.
    #[arg(
        long,
        env = "SEGD_MAX_PACK_AGE",
        value_name = "PACK=SECONDS",
        value_delimiter = ','
    )]
    pub max_pack_age: Vec<PackMaxAge>,

    /// What a stale pack does: keep serving (reported stale) or stop answering
    /// until a fresh version is pushed.
    #[arg(long, env = "SEGD_STALE_PACKS", value_enum, default_value_t = StalePacks::Serve)]
    pub stale_packs: StalePacks,

    /// Directory holding packs and the frequency log; created if missing.
    #[arg(long, env = "SEGD_DATA_DIR", default_value = "./segd-data")]
    pub data_dir: PathBuf,

    /// Bearer token every admin call must carry (`authorization: Bearer TOKEN`).
    #[arg(long, env = "SEGD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Read the admin token from this file (first line, surrounding whitespace
    /// trimmed) instead of --admin-token, so it stays out of the process list.
    #[arg(long, env = "SEGD_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,

    /// TLS certificate chain (PEM) for both ports; requires --tls-key.
    #[arg(long, env = "SEGD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) for both ports; requires --tls-cert.
    #[arg(long, env = "SEGD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate (PEM): admin clients must present a certificate it signed
    /// (mutual TLS on the admin port). Requires --tls-cert.
    #[arg(long, env = "SEGD_ADMIN_CLIENT_CA", requires = "tls_cert")]
    pub admin_client_ca: Option<PathBuf>,

    /// Requests in flight on the query port beyond which new ones are shed with
    /// RESOURCE_EXHAUSTED at once instead of queueing.
    #[arg(long, env = "SEGD_MAX_IN_FLIGHT", default_value_t = 4096)]
    pub max_in_flight: usize,

    /// Largest request message on the query port, in bytes.
    #[arg(long, env = "SEGD_MAX_REQUEST_BYTES", default_value_t = 4 << 20)]
    pub max_request_bytes: usize,

    /// Longest a request may run (the client's deadline applies when shorter).
    #[arg(long, env = "SEGD_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,

    /// HTTP/2 streams one connection may have open at once.
    #[arg(long, env = "SEGD_MAX_CONCURRENT_STREAMS", default_value_t = 1024)]
    pub max_concurrent_streams: u32,

    /// Seconds between HTTP/2 keepalive pings on idle connections (0 = off).
    #[arg(long, env = "SEGD_HTTP2_KEEPALIVE_SECONDS", default_value_t = 30)]
    pub http2_keepalive_seconds: u64,

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

    /// Directory to watch for pack files (`*.segpack`) a sidecar syncs in:
    /// each new or changed file, once unchanged across two polls, is verified
    /// and served like a push (never an older version). Dotfiles and `*.tmp`
    /// are ignored; refused files are logged and skipped. Created if missing;
    /// must not be DATA_DIR/packs.
    #[arg(long, env = "SEGD_WATCH_DIR")]
    pub watch_dir: Option<PathBuf>,

    /// How often --watch-dir is scanned, in milliseconds.
    #[arg(long, env = "SEGD_WATCH_POLL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..))]
    pub watch_poll_ms: u64,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish
    /// before their connections are closed; then the frequency log is flushed
    /// and checkpointed and segd exits.
    #[arg(long, env = "SEGD_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,

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

impl ServeConfig {
    /// The admin token from --admin-token or --admin-token-file, both held to
    /// the one rule of [`checked_admin_token`].
    pub fn resolve_admin_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(path) = &self.admin_token_file {
            let text = std::fs::read_to_string(path).map_err(|error| {
                anyhow::anyhow!("read --admin-token-file {}: {error}", path.display())
            })?;
            let first_line = text.lines().next().unwrap_or("");
            let source = format!("--admin-token-file {}", path.display());
            return checked_admin_token(&source, first_line).map(Some);
        }
        self.admin_token
            .as_deref()
            .map(|token| checked_admin_token("--admin-token (SEGD_ADMIN_TOKEN)", token))
            .transpose()
    }

    /// The pack freshness bounds and stale-pack behaviour of the flags.
    pub fn freshness_policy(&self) -> crate::store::FreshnessPolicy {
        crate::store::FreshnessPolicy {
            default_max_age_seconds: self.max_pack_age_seconds,
            max_age_seconds_by_pack: self
                .max_pack_age
                .iter()
                .map(|bound| (bound.pack.clone(), bound.max_age_seconds))
                .collect(),
            withhold_stale: self.stale_packs == StalePacks::Drop,
        }
    }

    pub fn freq_retention_seconds(&self) -> i64 {
        self.freq_retention_days as i64 * 86_400
    }
}

/// The one rule for an admin token, wherever it comes from: surrounding
/// whitespace is trimmed (a header value cannot keep it), and what remains
/// must be non-empty printable ASCII, the only bytes an `authorization`
/// header carries intact. A whitespace-only token would authenticate
/// `Bearer ` plus spaces, so it is refused, never taken as "no token".
pub fn checked_admin_token(source: &str, raw: &str) -> anyhow::Result<String> {
    let token = raw.trim();
    if token.is_empty() {
        anyhow::bail!("{source} is empty or only whitespace: give a real token or leave it unset");
    }
    if let Some(bad) = token.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
        anyhow::bail!(
            "{source} holds the character {bad:?}: use printable ASCII, as an authorization header needs"
        );
    }
    Ok(token.to_owned())
}
