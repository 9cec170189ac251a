//! segd: a bid-time audience server.
//!
//! Batch jobs push *packs* of segment memberships; ad servers ask, per impression,
//! whether a user is in the segments a line item targets, recently enough, and
//! whether frequency caps still have room.
//!
//! # Layout
//!
//! - [`pack`]: the pack file formats (v1, and v2 served in place from a
//!   memory-mapped file), builder from TSV, writers, checked readers.
//!   Knows nothing of gRPC or tokio.
//! - [`store`]: the serving state: user dictionaries, the user-major index,
//!   lookups, and the `ArcSwap` that hot-swaps generations.
//! - [`frame`]: the checksummed record frame of the frequency log and the
//!   real-time journal.
//! - [`freq`]: frequency counters: sharded in-memory map, write-ahead log with
//!   group commit, checkpoints, cap windows. Knows nothing of gRPC or tokio.
//! - [`decide`]: targeting plus caps for many candidates, over a store snapshot
//!   and the counters.
//! - [`candidate`]: the borrowed view of a `Decide` candidate that validation
//!   and `decide` read, from an owned message or from a request's bytes.
//! - [`le`]: the one bounds-checked little-endian reader every file format uses.
//! - [`periodic`]: the one periodic-task helper: a background thread
//!   (checkpoints, sweeps, interval fsyncs) and its async form, a ticker that
//!   stops at the shutdown token (freshness checks, `--watch-dir` polls).
//! - [`ready`]: a value the start-up load provides, shared before it exists.
//! - [`realtime`]: `UpdateMembers` and `ForgetUsers`: the durable journal, the
//!   writes to the overlay the store consults, folding into newer packs.
//!   Knows nothing of gRPC or tokio.
//! - [`memory`]: returns freed heap to the OS after a pack load.
//! - [`line_items`]: registered line items, named by id in `Decide`.
//! - [`telemetry`]: the metrics registry every owner registers its figures
//!   in, the `GET /metrics` route, and the tower layer counting RPCs by status
//!   code and latency.
//! - [`freshness`]: the watcher that re-judges pack staleness every second.
//! - [`api`]: one thin file per gRPC service, plus the error-to-status mapping.
//! - [`overload`]: load shedding (a server-wide limit on requests in flight).
//! - [`connections`]: the accept loop of both gRPC ports: a bound on open
//!   connections, idle timeout, back-off when out of file descriptors.
//! - [`app`]: the composition root: opens everything from the settings and
//!   hands out the routers, the metrics route and the background tasks.
//! - [`shard`]: the shard function (a user's shard among `N`) and
//!   `--shard I/N`. Pure arithmetic.
//! - [`server`]: the life of a running server (`serve`: open, serve, load,
//!   SERVING, wait, drain); what the binary and the tests call.
//! - [`settings`]: the `segd serve` flags, one flattened group per concern.
//! - [`watch`]: `--watch-dir`: polls a directory a sidecar syncs packs into and
//!   pushes each new, stable file through the catalog.
//! - [`fleet`]: `--fleet-nats`: frequency caps shared by every replica
//!   through a NATS JetStream stream; the only module that knows NATS.
//! - [`demo`]: the synthetic demo pack behind `segd serve --demo`.
//! - [`proto`]: generated code for package `segd.v1`.

// `deny`, not `forbid`: `memory` holds the one allowed FFI call,
// `pack::mapped` the memory mapping of pack files and `pack::entry_scan` (with
// its submodules `users` and `dictionary`) the checked load's AVX2 loops, each
// with `// SAFETY:`.
#![deny(unsafe_code)]

pub mod admin_runtime;
pub mod api;
pub mod app;
pub mod background;
pub mod candidate;
pub mod connections;
pub mod decide;
pub mod demo;
pub mod fleet;
pub mod frame;
pub mod freq;
pub mod freshness;
pub mod le;
pub mod line_items;
pub mod memory;
pub mod overload;
pub mod pacing;
pub mod pack;
pub mod periodic;
pub mod ready;
pub mod realtime;
pub mod server;
pub mod settings;
pub mod shard;
pub mod store;
pub mod telemetry;
pub mod watch;

/// Generated code for the `segd.v1` protobuf package.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("segd.v1");

    /// Encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/segd_descriptor.bin"));
}

/// The stable 64-bit identity of a user id: xxh3-64 with seed 0.
///
/// Stable across processes and versions: it is what pack files and the
/// frequency log store. Never use `ahash` for this, its output is not stable.
pub fn user_fingerprint(user_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(user_id.as_bytes())
}

/// Seconds since the Unix epoch on the server clock.
pub fn unix_now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}
