//! Operational metrics in the Prometheus text exposition format (0.0.4),
//! served at `GET /metrics` on `--metrics-listen` by a minimal HTTP/1.1
//! responder.
//!
//! What it owns: the counters that exist only for operators (per-RPC counts by
//! gRPC status code and latency histograms, `Decide` outcomes by reason, push /
//! rollback / drop outcomes), the tower layer that feeds the RPC counters, and
//! the rendering of everything else from its owner at scrape time: packs and
//! their per-segment match counters from the serving state, frequency-store
//! figures from [`FreqStore::stats`].
//!
//! What it must never do: cost a lock or an allocation per request. Hot-path
//! counters are relaxed atomics in arrays preallocated per method and code;
//! all formatting happens at scrape time, off the request path.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;
use tonic::codegen::http;

use crate::freq::{FreqStats, FreqStore};
use crate::store::catalog::CatalogError;
use crate::store::{FreshnessPolicy, ServingState, Store};

/// gRPC status codes 0..=16, as the labels name them.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Upper bounds of the latency histogram buckets, in nanoseconds (5 µs … 1 s);
/// one more bucket, `+Inf`, follows.
const LATENCY_BOUNDS_NANOS: [u64; 17] = [
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// Every RPC of `segd.v1.Segments` and `segd.v1.Admin`; the discriminant
/// indexes the counter arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcMethod {
    Lookup,
    BatchLookup,
    Decide,
    RecordImpressions,
    PushSnapshot,
    Status,
    ListSegments,
    Rollback,
    DropPack,
}

impl RpcMethod {
    pub const ALL: [RpcMethod; 9] = [
        RpcMethod::Lookup,
        RpcMethod::BatchLookup,
        RpcMethod::Decide,
        RpcMethod::RecordImpressions,
        RpcMethod::PushSnapshot,
        RpcMethod::Status,
        RpcMethod::ListSegments,
        RpcMethod::Rollback,
        RpcMethod::DropPack,
    ];

    /// The method a gRPC request path names; `None` for health, reflection
    /// and anything else, which are not counted.
    pub fn from_path(path: &str) -> Option<Self> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        Self::ALL
            .into_iter()
            .find(|candidate| candidate.service() == service && candidate.name() == method)
    }

    pub fn service(self) -> &'static str {
        match self {
            RpcMethod::Lookup
            | RpcMethod::BatchLookup
            | RpcMethod::Decide
            | RpcMethod::RecordImpressions => "segd.v1.Segments",
            RpcMethod::PushSnapshot
            | RpcMethod::Status
            | RpcMethod::ListSegments
            | RpcMethod::Rollback
            | RpcMethod::DropPack => "segd.v1.Admin",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RpcMethod::Lookup => "Lookup",
            RpcMethod::BatchLookup => "BatchLookup",
            RpcMethod::Decide => "Decide",
            RpcMethod::RecordImpressions => "RecordImpressions",
            RpcMethod::PushSnapshot => "PushSnapshot",
            RpcMethod::Status => "Status",
            RpcMethod::ListSegments => "ListSegments",
            RpcMethod::Rollback => "Rollback",
            RpcMethod::DropPack => "DropPack",
        }
    }
}

/// A change to what is served, as counted in `segd_pack_changes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackChange {
    Push,
    Rollback,
    Drop,
}

impl PackChange {
    const ALL: [PackChange; 3] = [PackChange::Push, PackChange::Rollback, PackChange::Drop];

    fn label(self) -> &'static str {
        match self {
            PackChange::Push => "push",
            PackChange::Rollback => "rollback",
            PackChange::Drop => "drop",
        }
    }
}

/// Why a change was refused: [`CatalogError::reason_code`] plus the refusals
/// the admin service makes before the catalog sees a pack.
const REFUSAL_REASONS: [&str; 13] = [
    "invalid_pack",
    "invalid_index",
    "ownership",
    "older_version",
    "invalid_pack_name",
    "no_such_pack",
    "no_previous_version",
    "storage",
    "too_large",
    "empty_stream",
    "stream_error",
    "busy",
    "internal",
];

/// Outcome slots per change: ok, unchanged, then one per refusal reason.
const CHANGE_OUTCOMES: usize = 2 + REFUSAL_REASONS.len();

/// Counters of one RPC method.
struct MethodCounters {
    /// Indexed by gRPC code.
    by_code: [AtomicU64; CODE_NAMES.len()],
    /// Not cumulative: slot `i` counts durations in `(bound[i-1], bound[i]]`;
    /// the last slot is `+Inf`. Cumulated at scrape time.
    latency_buckets: [AtomicU64; LATENCY_BOUNDS_NANOS.len() + 1],
    latency_sum_nanos: AtomicU64,
}

impl MethodCounters {
    fn new() -> Self {
        Self {
            by_code: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_nanos: AtomicU64::new(0),
        }
    }
}

/// The counters owned by the metrics module, shared by the RPC layer and the
/// services. Everything else is read from its owner at scrape time.
pub struct Metrics {
    rpc: [MethodCounters; RpcMethod::ALL.len()],
    /// Indexed by `proto::Reason` (UNSPECIFIED, ELIGIBLE, NOT_IN_AUDIENCE,
    /// EXCLUDED, FREQUENCY_CAPPED).
    decide_reasons: [AtomicU64; 5],
    /// Indexed by [`PackChange`], then by outcome slot.
    pack_changes: [[AtomicU64; CHANGE_OUTCOMES]; PackChange::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            rpc: std::array::from_fn(|_| MethodCounters::new()),
            decide_reasons: std::array::from_fn(|_| AtomicU64::new(0)),
            pack_changes: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }

    /// Counts one finished RPC: its status code and server-side duration.
    pub fn record_rpc(&self, method: RpcMethod, code: Code, elapsed: Duration) {
        let counters = &self.rpc[method as usize];
        let code_index = (code as usize).min(CODE_NAMES.len() - 1);
        counters.by_code[code_index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(LATENCY_BOUNDS_NANOS.len());
        counters.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        counters
            .latency_sum_nanos
            .fetch_add(nanos, Ordering::Relaxed);
    }

    /// Counts the reasons of a `Decide` answer.
    pub fn record_decisions(&self, decisions: &[crate::proto::Decision]) {
        for decision in decisions {
            let reason = usize::try_from(decision.reason)
                .unwrap_or(0)
                .min(self.decide_reasons.len() - 1);
            self.decide_reasons[reason].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a change that took effect; `unchanged` for a re-push of the
    /// served version.
    pub fn record_change_ok(&self, change: PackChange, unchanged: bool) {
        let slot = usize::from(unchanged);
        self.pack_changes[change as usize][slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused change; `reason` is one of the fixed reason codes
    /// (unknown ones count as `internal`).
    pub fn record_change_refused(&self, change: PackChange, reason: &str) {
        let reason_index = REFUSAL_REASONS
            .iter()
            .position(|known| *known == reason)
            .unwrap_or(REFUSAL_REASONS.len() - 1);
        debug_assert_eq!(
            REFUSAL_REASONS[reason_index], reason,
            "unlisted refusal reason"
        );
        self.pack_changes[change as usize][2 + reason_index].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a change the catalog refused.
    pub fn record_catalog_refusal(&self, change: PackChange, error: &CatalogError) {
        self.record_change_refused(change, error.reason_code());
    }

    /// Requests of `method` answered with `code` so far.
    pub fn rpc_count(&self, method: RpcMethod, code: Code) -> u64 {
        self.rpc[method as usize].by_code[(code as usize).min(CODE_NAMES.len() - 1)]
            .load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------
// The RPC layer.

/// A tower layer counting every Segments and Admin RPC by status code, with
/// its server-side duration (until the last frame of the response). Put it
/// outermost, so refusals by interceptors and load shedding are counted too.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, RequestBody, ResponseBody> tower_service::Service<http::Request<RequestBody>>
    for RpcMetricsService<S>
where
    S: tower_service::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
{
    type Response = http::Response<MeteredBody<ResponseBody>>;
    type Error = S::Error;
    type Future = MeteredResponse<S::Future>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let probe = RpcMethod::from_path(request.uri().path()).map(|method| Probe {
            metrics: self.metrics.clone(),
            method,
            started: Instant::now(),
            finished: false,
        });
        MeteredResponse {
            inner: self.inner.call(request),
            probe,
        }
    }
}

/// One RPC in flight. Finished with the code of the response; dropped
/// unfinished (the client went away mid-response) it counts as CANCELLED.
struct Probe {
    metrics: Arc<Metrics>,
    method: RpcMethod,
    started: Instant,
    finished: bool,
}

impl Probe {
    fn finish(&mut self, code: Code) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.metrics
            .record_rpc(self.method, code, self.started.elapsed());
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// The `grpc-status` of a header or trailer map, if present.
fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|value| Code::from_bytes(value.as_bytes()))
}

pin_project_lite::pin_project! {
    /// The response future of [`RpcMetricsService`].
    pub struct MeteredResponse<F> {
        #[pin]
        inner: F,
        probe: Option<Probe>,
    }
}

impl<F, ResponseBody, Error> Future for MeteredResponse<F>
where
    F: Future<Output = Result<http::Response<ResponseBody>, Error>>,
{
    type Output = Result<http::Response<MeteredBody<ResponseBody>>, Error>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(context));
        let mut probe = this.probe.take();
        match result {
            Ok(response) => {
                // A trailers-only response (every error) carries the code in
                // its headers; otherwise it comes in the trailers.
                if let Some(code) = grpc_status(response.headers())
                    && let Some(mut probe) = probe.take()
                {
                    probe.finish(code);
                }
                Poll::Ready(Ok(response.map(|inner| MeteredBody { inner, probe })))
            }
            Err(error) => {
                if let Some(mut probe) = probe {
                    probe.finish(Code::Unknown);
                }
                Poll::Ready(Err(error))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that finishes the RPC's probe on its trailers.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        probe: Option<Probe>,
    }
}

impl<B: http_body::Body> http_body::Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(context);
        if let Poll::Ready(outcome) = &polled
            && let Some(probe) = this.probe.as_mut()
        {
            match outcome {
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        probe.finish(grpc_status(trailers).unwrap_or(Code::Unknown));
                    }
                }
                Some(Err(_)) => probe.finish(Code::Unknown),
                None => probe.finish(Code::Unknown),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------
// Rendering.

/// Everything a scrape reads.
pub struct MetricsSource {
    pub metrics: Arc<Metrics>,
    pub store: Arc<Store>,
    /// Set once the frequency store has replayed its log.
    pub counters: Arc<OnceLock<Arc<FreqStore>>>,
    /// The `--watch-dir` watcher's counters; `None` when no directory is watched.
    pub watch: Option<Arc<crate::watch::WatchCounters>>,
}

impl MetricsSource {
    /// The exposition text at `now_unix_seconds`. Reads the log directory
    /// (frequency figures): call it off the async runtime.
    pub fn render(&self, now_unix_seconds: i64) -> String {
        let state = self.store.load_full();
        let frequency = self.counters.get().map(|store| store.stats());
        let mut out = String::with_capacity(16 << 10);
        render_rpc(&mut out, &self.metrics);
        render_changes(&mut out, &self.metrics);
        render_state(&mut out, &state, self.store.freshness(), now_unix_seconds);
        if let Some(stats) = frequency {
            render_frequency(&mut out, &stats);
        }
        if let Some(watch) = &self.watch {
            render_watch(&mut out, watch);
        }
        out
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value escaped per the text format (`\\`, `\"`, `\n`).
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut escaped = String::with_capacity(value.len() + 2);
    for character in value.chars() {
        match character {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            other => escaped.push(other),
        }
    }
    std::borrow::Cow::Owned(escaped)
}

/// The reporting category of a segment kind: retargeting, exclusion,
/// prospecting, or other (empty or anything else).
pub fn kind_category(kind: &str) -> &'static str {
    ["retargeting", "exclusion", "prospecting"]
        .into_iter()
        .find(|category| kind.trim().eq_ignore_ascii_case(category))
        .unwrap_or("other")
}

fn seconds(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

fn render_rpc(out: &mut String, metrics: &Metrics) {
    family(
        out,
        "segd_rpc_requests_total",
        "counter",
        "RPCs answered, by method and gRPC status code.",
    );
    for method in RpcMethod::ALL {
        let counters = &metrics.rpc[method as usize];
        for (code, name) in CODE_NAMES.iter().enumerate() {
            let count = counters.by_code[code].load(Ordering::Relaxed);
            // OK is always listed so rates start at zero; other codes once seen.
            if count == 0 && code != 0 {
                continue;
            }
            let _ = writeln!(
                out,
                "segd_rpc_requests_total{{service=\"{}\",method=\"{}\",code=\"{name}\"}} {count}",
                method.service(),
                method.name()
            );
        }
    }
    family(
        out,
        "segd_rpc_duration_seconds",
        "histogram",
        "Server-side RPC duration, until the last response frame.",
    );
    for method in RpcMethod::ALL {
        let counters = &metrics.rpc[method as usize];
        let labels = format!(
            "service=\"{}\",method=\"{}\"",
            method.service(),
            method.name()
        );
        let mut cumulative = 0u64;
        for (index, bucket) in counters.latency_buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            match LATENCY_BOUNDS_NANOS.get(index) {
                Some(&bound) => {
                    let _ = writeln!(
                        out,
                        "segd_rpc_duration_seconds_bucket{{{labels},le=\"{}\"}} {cumulative}",
                        seconds(bound)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "segd_rpc_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "segd_rpc_duration_seconds_sum{{{labels}}} {}",
            seconds(counters.latency_sum_nanos.load(Ordering::Relaxed))
        );
        let _ = writeln!(
            out,
            "segd_rpc_duration_seconds_count{{{labels}}} {cumulative}"
        );
    }

    family(
        out,
        "segd_decide_decisions_total",
        "counter",
        "Decide decisions, by reason.",
    );
    for (index, reason) in [
        "ELIGIBLE",
        "NOT_IN_AUDIENCE",
        "EXCLUDED",
        "FREQUENCY_CAPPED",
    ]
    .into_iter()
    .enumerate()
    {
        let count = metrics.decide_reasons[index + 1].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "segd_decide_decisions_total{{reason=\"{reason}\"}} {count}"
        );
    }
}

fn render_changes(out: &mut String, metrics: &Metrics) {
    family(
        out,
        "segd_pack_changes_total",
        "counter",
        "Pushes, rollbacks and drops: ok, unchanged (re-push of the served version), or refused by reason.",
    );
    for change in PackChange::ALL {
        let slots = &metrics.pack_changes[change as usize];
        let operation = change.label();
        let ok = slots[0].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "segd_pack_changes_total{{operation=\"{operation}\",result=\"ok\",reason=\"\"}} {ok}"
        );
        if change == PackChange::Push {
            let unchanged = slots[1].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "segd_pack_changes_total{{operation=\"{operation}\",result=\"unchanged\",reason=\"\"}} {unchanged}"
            );
        }
        for (index, reason) in REFUSAL_REASONS.iter().enumerate() {
            let count = slots[2 + index].load(Ordering::Relaxed);
            if count > 0 {
                let _ = writeln!(
                    out,
                    "segd_pack_changes_total{{operation=\"{operation}\",result=\"refused\",reason=\"{reason}\"}} {count}"
                );
            }
        }
    }
}

fn render_state(
    out: &mut String,
    state: &ServingState,
    freshness: &FreshnessPolicy,
    now_unix_seconds: i64,
) {
    family(
        out,
        "segd_generation",
        "gauge",
        "Generation of the serving state; bumps on every swap.",
    );
    let _ = writeln!(out, "segd_generation {}", state.generation);

    let packs = state.packs();
    let gauge = |out: &mut String, name: &str, help: &str, value: &dyn Fn(usize) -> String| {
        family(out, name, "gauge", help);
        for (index, pack) in packs.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{pack=\"{}\"}} {}",
                escape(&pack.name),
                value(index)
            );
        }
    };
    family(
        out,
        "segd_pack_info",
        "gauge",
        "The served version of each pack (value 1).",
    );
    for pack in packs {
        let _ = writeln!(
            out,
            "segd_pack_info{{pack=\"{}\",version=\"{}\"}} 1",
            escape(&pack.name),
            escape(&pack.version)
        );
    }
    gauge(
        out,
        "segd_pack_age_seconds",
        "Seconds since the pack was built (now - built_at).",
        &|index| (now_unix_seconds - packs[index].built_at_unix_seconds).to_string(),
    );
    gauge(
        out,
        "segd_pack_built_timestamp_seconds",
        "When the pack was built, Unix seconds.",
        &|index| packs[index].built_at_unix_seconds.to_string(),
    );
    gauge(
        out,
        "segd_pack_users",
        "Users in the pack's dictionary.",
        &|index| packs[index].users().to_string(),
    );
    gauge(
        out,
        "segd_pack_memberships",
        "Memberships (user, segment) in the pack.",
        &|index| packs[index].memberships().to_string(),
    );
    gauge(
        out,
        "segd_pack_segments",
        "Segments in the pack.",
        &|index| packs[index].segments.len().to_string(),
    );
    gauge(out, "segd_pack_bytes", "Size of the pack file.", &|index| {
        packs[index].file_bytes.to_string()
    });
    gauge(
        out,
        "segd_pack_stale",
        "1 when the pack is older than its freshness bound.",
        &|index| {
            let pack = &packs[index];
            u8::from(freshness.is_stale(&pack.name, pack.built_at_unix_seconds, now_unix_seconds))
                .to_string()
        },
    );
    gauge(
        out,
        "segd_pack_withheld",
        "1 when the pack is stale and not answering (--stale-packs drop).",
        &|index| u8::from(state.is_withheld(&packs[index].name)).to_string(),
    );

    family(
        out,
        "segd_segment_matches_total",
        "counter",
        "Membership checks answered yes (Lookup, BatchLookup, Decide), by segment; kind is retargeting, exclusion, prospecting or other.",
    );
    let mut kind_totals = [0u64; 4];
    let kinds = ["retargeting", "exclusion", "prospecting", "other"];
    for pack in packs {
        let pack_name = escape(&pack.name);
        for (slot, segment) in pack.segments.iter().enumerate() {
            let category = kind_category(&segment.kind);
            let count = pack.match_count(slot);
            if let Some(total) = kinds
                .iter()
                .position(|kind| *kind == category)
                .and_then(|index| kind_totals.get_mut(index))
            {
                *total += count;
            }
            let _ = writeln!(
                out,
                "segd_segment_matches_total{{segment_id=\"{}\",pack=\"{pack_name}\",kind=\"{category}\"}} {count}",
                segment.id
            );
        }
    }
    family(
        out,
        "segd_segment_kind_matches_total",
        "counter",
        "Membership checks answered yes, by segment kind, summed over the served packs (a dropped pack leaves the sum).",
    );
    for (kind, total) in kinds.iter().zip(kind_totals) {
        let _ = writeln!(
            out,
            "segd_segment_kind_matches_total{{kind=\"{kind}\"}} {total}"
        );
    }
}

fn render_watch(out: &mut String, watch: &crate::watch::WatchCounters) {
    for (name, help, value) in [
        (
            "segd_watch_loaded_total",
            "Pack files from --watch-dir verified and swapped in.",
            watch.loaded(),
        ),
        (
            "segd_watch_rejected_total",
            "Pack files from --watch-dir refused (damaged, unreadable, ownership conflict, older version); the served data stayed.",
            watch.rejected(),
        ),
        (
            "segd_watch_unchanged_total",
            "Pack files from --watch-dir holding the version already served.",
            watch.unchanged(),
        ),
    ] {
        family(out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
}

fn render_frequency(out: &mut String, stats: &FreqStats) {
    let mut single = |name: &str, kind: &str, help: &str, value: String| {
        family(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    };
    single(
        "segd_freq_users",
        "gauge",
        "Users with at least one frequency counter.",
        stats.users.to_string(),
    );
    single(
        "segd_freq_entries",
        "gauge",
        "Frequency counters (user, cap key).",
        stats.entries.to_string(),
    );
    single(
        "segd_freq_events",
        "gauge",
        "Impressions held for frequency caps.",
        stats.events.to_string(),
    );
    single(
        "segd_freq_impression_ids",
        "gauge",
        "Impression ids remembered for idempotency.",
        stats.impression_ids.to_string(),
    );
    single(
        "segd_freq_counter_bytes",
        "gauge",
        "Estimated memory of the frequency counters.",
        stats.approximate_counter_bytes.to_string(),
    );
    single(
        "segd_freq_log_bytes",
        "gauge",
        "Bytes of live frequency log segments.",
        stats.log_bytes.to_string(),
    );
    single(
        "segd_freq_log_segments",
        "gauge",
        "Live frequency log segments.",
        stats.log_segments.to_string(),
    );
    single(
        "segd_freq_last_checkpoint_timestamp_seconds",
        "gauge",
        "When the last checkpoint was written (0 = none since start).",
        stats.last_checkpoint_unix_seconds.to_string(),
    );
    single(
        "segd_freq_log_records_total",
        "counter",
        "Frequency log records written since start.",
        stats.records_written.to_string(),
    );
    single(
        "segd_freq_log_write_failures_total",
        "counter",
        "Failed frequency log batches since start.",
        stats.write_failures.to_string(),
    );
    single(
        "segd_freq_fsyncs_total",
        "counter",
        "fsyncs of frequency log segments since start.",
        stats.fsync_count.to_string(),
    );
    single(
        "segd_freq_fsync_seconds_total",
        "counter",
        "Time spent in those fsyncs.",
        (stats.fsync_total_micros as f64 / 1e6).to_string(),
    );
    single(
        "segd_freq_fsync_failures_total",
        "counter",
        "Failed fsyncs since start.",
        stats.fsync_failures.to_string(),
    );
    single(
        "segd_freq_recorded_impressions_total",
        "counter",
        "Impressions recorded since start.",
        stats.recorded_impressions.to_string(),
    );
    single(
        "segd_freq_duplicate_impressions_total",
        "counter",
        "Impressions refused as duplicates (same impression id) since start.",
        stats.duplicate_impressions.to_string(),
    );
}

// ---------------------------------------------------------------------------
// The HTTP endpoint.

/// Longest request head read; a scrape's is a few hundred bytes.
const MAX_REQUEST_HEAD_BYTES: usize = 8 << 10;
/// A connection that has not sent its request by then is closed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers `GET /metrics` on `listener` until `shutdown` completes. One
/// request per connection (`Connection: close`), which is all Prometheus needs.
pub async fn serve_http(
    listener: TcpListener,
    source: Arc<MetricsSource>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %error, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, source)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(peer = %peer, error = %error, "metrics request failed")
                }
                Err(_) => tracing::debug!(peer = %peer, "metrics request timed out"),
            }
        });
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, source: Arc<MetricsSource>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST_HEAD_BYTES {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
            )
            .await;
        }
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let request_line = head
        .split(|&byte| byte == b'\r')
        .next()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let body =
                tokio::task::spawn_blocking(move || source.render(crate::unix_now_seconds()))
                    .await
                    .map_err(std::io::Error::other)?;
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
            .await
        }
        ("GET", "/") => {
            respond(
                &mut stream,
                "200 OK",
                "text/plain",
                "segd metrics: GET /metrics\n",
            )
            .await
        }
        ("GET", _) => respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await,
        _ => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                "only GET\n",
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_methods() {
        assert_eq!(
            RpcMethod::from_path("/segd.v1.Segments/Lookup"),
            Some(RpcMethod::Lookup)
        );
        assert_eq!(
            RpcMethod::from_path("/segd.v1.Admin/DropPack"),
            Some(RpcMethod::DropPack)
        );
        assert_eq!(RpcMethod::from_path("/segd.v1.Admin/Lookup"), None);
        assert_eq!(RpcMethod::from_path("/grpc.health.v1.Health/Check"), None);
        for (index, method) in RpcMethod::ALL.into_iter().enumerate() {
            assert_eq!(method as usize, index);
        }
    }

    #[test]
    fn latency_lands_in_its_bucket() {
        let metrics = Metrics::new();
        metrics.record_rpc(RpcMethod::Lookup, Code::Ok, Duration::from_micros(3));
        metrics.record_rpc(RpcMethod::Lookup, Code::Ok, Duration::from_micros(7));
        metrics.record_rpc(
            RpcMethod::Lookup,
            Code::InvalidArgument,
            Duration::from_secs(5),
        );
        let buckets = &metrics.rpc[RpcMethod::Lookup as usize].latency_buckets;
        assert_eq!(buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(buckets[1].load(Ordering::Relaxed), 1);
        assert_eq!(
            buckets[LATENCY_BOUNDS_NANOS.len()].load(Ordering::Relaxed),
            1
        );
        assert_eq!(metrics.rpc_count(RpcMethod::Lookup, Code::Ok), 2);
        let mut out = String::new();
        render_rpc(&mut out, &metrics);
        assert!(out.contains(
            "segd_rpc_duration_seconds_bucket{service=\"segd.v1.Segments\",method=\"Lookup\",le=\"0.00001\"} 2"
        ));
        assert!(out.contains(
            "segd_rpc_requests_total{service=\"segd.v1.Segments\",method=\"Lookup\",code=\"INVALID_ARGUMENT\"} 1"
        ));
    }

    #[test]
    fn refusal_reasons_cover_catalog_errors() {
        let errors = [
            CatalogError::InvalidPackName("x".into()),
            CatalogError::NoSuchPack("x".into()),
            CatalogError::NoPreviousVersion("x".into()),
        ];
        for error in errors {
            assert!(REFUSAL_REASONS.contains(&error.reason_code()));
        }
        assert_eq!(kind_category("Retargeting"), "retargeting");
        assert_eq!(kind_category(""), "other");
        assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }
}
