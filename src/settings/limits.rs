//! How much one request, one connection and the whole server may take.

use clap::Args;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitSettings {
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

    /// Largest pack file PushSnapshot accepts, in bytes.
    #[arg(long, env = "SEGD_MAX_PUSH_BYTES", default_value_t = 8 << 30)]
    pub max_push_bytes: u64,

    /// Most MiB per second a push is received and written at (0 = as fast as
    /// it comes). At full speed a 1 GB push takes the cores of a small box
    /// for a second or two; paced, the same work is spread over longer
    /// (BENCHMARKS.md, "Eighth session").
    #[arg(long, env = "SEGD_PUSH_MIB_PER_SECOND", default_value_t = 0)]
    pub push_mib_per_second: u64,

    /// The nice value of the admin port's threads (0-19). The admin port has
    /// a runtime of its own so that receiving a push never holds up a query
    /// worker (BENCHMARKS.md, "Ninth session"); 0 runs it at the readers'
    /// priority.
    #[arg(long, env = "SEGD_ADMIN_NICE", default_value_t = 10,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub admin_nice: i32,

    /// Largest single admin request message (a PutLineItems, one push chunk),
    /// in bytes; a larger one is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "SEGD_ADMIN_MAX_MESSAGE_BYTES", default_value_t = 16 << 20)]
    pub admin_max_message_bytes: usize,

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
