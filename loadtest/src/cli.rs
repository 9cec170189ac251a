//! Command-line flags of every subcommand, as one clap tree.
//!
//! Only parsing and flag documentation live here; each subcommand's module
//! validates what clap cannot (files exist, flags that only make sense together).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Load tester, synthetic data set generator and Redis baseline for segd.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a synthetic, seeded data set: segments.tsv, memberships.tsv, queries.txt.
    Gen(GenArgs),
    /// Drive a segd server (or Redis) at a fixed rate or closed loop and report latency.
    Run(Box<RunArgs>),
    /// Load a data set written by `gen` into Redis (a sorted set per user).
    RedisLoad(RedisLoadArgs),
    /// Send real-time updates (Admin/UpdateMembers) and forgets (Admin/ForgetUsers), closed loop.
    Update(UpdateArgs),
    /// Receive `run --swap-raw-tcp` pushes: each TCP stream written over one file and synced.
    Sink(SinkArgs),
}

#[derive(Debug, clap::Args)]
pub struct SinkArgs {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:7783")]
    pub listen: String,
    /// The file every stream is written over.
    #[arg(long, required_unless_present = "discard")]
    pub file: Option<PathBuf>,
    /// Write nothing: read each stream to its end and answer, to tell the
    /// receive's share of a push from the write's.
    #[arg(long, conflicts_with = "file")]
    pub discard: bool,
    /// Nice value (0-19) of the sink, as segd's `--admin-nice` is of its push path.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub nice: i32,
}

#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// Admin address of the server.
    #[arg(long, default_value = "http://127.0.0.1:7401")]
    pub admin_addr: String,
    /// Admin bearer token.
    #[arg(long, env = "SEGD_ADMIN_TOKEN")]
    pub token: Option<String>,
    /// Updates to send: random adds (90 %) and removes of users `u:0..--users`.
    #[arg(long, default_value_t = 1_000_000)]
    pub updates: u64,
    /// Users to forget afterwards (`forget:{n}`, ids no pack holds).
    #[arg(long, default_value_t = 0)]
    pub forgets: u64,
    /// Users the updates draw from (`u:{n}`, as `gen` names them).
    #[arg(long, default_value_t = 1_000_000)]
    pub users: u64,
    /// Segment ids the updates draw from: --first-segment-id ..= --last-segment-id (served ones).
    #[arg(long, default_value_t = 1)]
    pub first_segment_id: u32,
    #[arg(long, default_value_t = 200)]
    pub last_segment_id: u32,
    /// Updates (or users) per request.
    #[arg(long, default_value_t = 10_000)]
    pub batch: usize,
    /// Concurrent connections, one request in flight on each.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Seed of the update generator.
    #[arg(long, default_value_t = 9)]
    pub seed: u64,
}

#[derive(Debug, clap::Args)]
pub struct GenArgs {
    /// Number of users (`u:0` .. `u:{N-1}`).
    #[arg(long)]
    pub users: u64,
    /// Number of segments (ids `--first-segment-id` ..).
    #[arg(long)]
    pub segments: u32,
    /// Mean number of segments per user; segment sizes are scaled to hit it.
    #[arg(long, default_value_t = 20.0)]
    pub avg_segments_per_user: f64,
    /// Output directory (created when missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of every random choice: the same seed writes the same files.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Pack build time; last-seen times fall in the 90 days before it. Default: now.
    #[arg(long)]
    pub built_at: Option<i64>,
    /// Id of the first segment; ids are consecutive from it.
    #[arg(long, default_value_t = 1)]
    pub first_segment_id: u32,
    /// Number of user ids written to queries.txt.
    #[arg(long, default_value_t = 100_000)]
    pub queries: u64,
    /// Share of queries.txt that are users in at least one segment; the rest are unknown ids.
    #[arg(long, default_value_t = 0.9)]
    pub member_query_share: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Lookup with 20 random segment ids.
    Lookup,
    /// Lookup with no segment ids: every segment of the user.
    LookupAll,
    /// BatchLookup of --batch-size users.
    Batch,
    /// Decide with --candidates candidates of 3 segment refs and 2 caps each.
    Decide,
    /// RecordImpressions of --record-batch impressions with 2 cap keys each.
    Record,
    /// 70 % lookup, 20 % decide, 10 % record.
    Mixed,
    /// grpc.health.v1.Health/Check: the floor of any gRPC server on this machine.
    Health,
}

/// The flag spelling of a value (`lookup-all`), for messages and reports.
pub fn flag_name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|possible| possible.get_name().to_owned())
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// A segd server (or, for --workload health, any gRPC health server).
    Grpc,
    /// A Redis server holding the data set loaded by `redis-load`.
    Redis,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Server address (segd's query port).
    #[arg(long, default_value = "http://127.0.0.1:7400")]
    pub addr: String,
    /// Query addresses of every shard, comma-separated, in shard order
    /// (index = shard, `segd serve --shard I/N`): each user's requests go to
    /// its shard (a BatchLookup or RecordImpressions is split by shard and
    /// sent to each at once). Replaces --addr.
    #[arg(long, value_delimiter = ',', value_name = "ADDR,ADDR,..")]
    pub shard_addrs: Vec<String>,
    /// What to send.
    #[arg(long, value_enum, default_value_t = Workload::Lookup)]
    pub workload: Workload,
    /// Where to send it.
    #[arg(long, value_enum, default_value_t = Target::Grpc)]
    pub target: Target,
    /// Redis URL for --target redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,
    /// Offered requests per second (open loop, latency from intended send time); 0 = closed loop.
    #[arg(long, default_value_t = 0)]
    pub rps: u64,
    /// Measured seconds, after the warm-up.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds run before measuring; discarded from the report.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Separate HTTP/2 connections (or Redis connections).
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// In-flight requests per connection.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// User ids to query, one a line (queries.txt from `gen`).
    #[arg(long)]
    pub queries: Option<PathBuf>,
    /// Segment table (segments.tsv from `gen`): ids to ask for, kinds, TTLs.
    #[arg(long)]
    pub segments_file: Option<PathBuf>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG chart here: latency percentiles and latency over time.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Users per BatchLookup.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Candidates per Decide.
    #[arg(long, default_value_t = 50)]
    pub candidates: usize,
    /// Segment ids per Lookup.
    #[arg(long, default_value_t = 20)]
    pub lookup_segments: usize,
    /// Impressions per RecordImpressions.
    #[arg(long, default_value_t = 10)]
    pub record_batch: usize,
    /// Lookback sent as max_age_seconds on lookups (0 = any age).
    #[arg(long, default_value_t = 30 * 86_400)]
    pub max_age_seconds: u32,
    /// Distinct line items (`li:{n}`) the decide and record workloads draw from.
    #[arg(long, default_value_t = 2_000)]
    pub line_items: u32,
    /// Seed of the request generator.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// decide workload against segd: register the data set's line items once
    /// (Admin/PutLineItems on --admin-addr) and send their ids in Decide instead
    /// of inline candidates. Ignored with --target redis, whose client holds the
    /// definitions anyway.
    #[arg(long)]
    pub registered_line_items: bool,
    /// Re-push a pack every N seconds during the run (needs --pack and --admin-addr).
    #[arg(long)]
    pub swap_every: Option<u64>,
    /// Pack file to push; give it several times (different versions) to rotate between them.
    #[arg(long)]
    pub pack: Vec<PathBuf>,
    /// Send each --swap-every push as the --pack file's bare bytes over TCP to
    /// a `loadtest sink` at this address, not to Admin/PushSnapshot: the same
    /// bytes, from the same thread, received and written by a process that does
    /// nothing else with them (a control for what segd's push path adds).
    #[arg(long)]
    pub swap_raw_tcp: Option<String>,
    /// Admin address for --swap-every and --registered-line-items (segd's admin port).
    #[arg(long, default_value = "http://127.0.0.1:7401")]
    pub admin_addr: String,
    /// Admin bearer token.
    #[arg(long, env = "SEGD_ADMIN_TOKEN")]
    pub token: Option<String>,
    /// Nice value (0-19) of the thread that sends the --swap-every pushes. On a
    /// shared box the sender competes with the server and the generator for
    /// the same cores; a real push comes from a batch host, which a high value
    /// stands in for. 0 (default) sends at the generator's priority.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub swap_nice: i32,
    /// Seconds after a swap completes during which requests still count as overlapping it.
    #[arg(long, default_value_t = 1.0)]
    pub swap_window: f64,
    /// Another replica of the same segd fleet (its query port): during the
    /// run, probe impressions recorded on --addr are timed until Decide on
    /// this replica sees them (cross-replica visibility lag).
    #[arg(long)]
    pub observe_addr: Option<String>,
    /// Milliseconds between lag probes with --observe-addr.
    #[arg(long, default_value_t = 20)]
    pub observe_interval_ms: u64,
    /// Process id of the server under load when it runs on this machine:
    /// its CPU seconds (user + system, from /proc/PID/stat) over the measured
    /// window are reported per request.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub struct RedisLoadArgs {
    /// Redis URL.
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,
    /// Directory written by `gen` (reads memberships.tsv).
    #[arg(long)]
    pub data: PathBuf,
    /// Commands per pipeline.
    #[arg(long, default_value_t = 10_000)]
    pub pipeline: usize,
    /// FLUSHDB first.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub flush: bool,
}
