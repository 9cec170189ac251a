//! The per-RPC counters: requests by gRPC status code and a latency
//! histogram for every method of `proto/`, and the tower layer that feeds
//! them. Method names come from the descriptor set (build.rs), so a new RPC
//! is counted without touching this file.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use prometheus_client::encoding::NoLabelSet;
use tonic::Code;
use tonic::codegen::http;

use super::{Collector, DescriptorEncoder, MetricType};

include!(concat!(env!("OUT_DIR"), "/rpc_methods.rs"));

/// gRPC status codes 0..=16.
const CODES: usize = 17;

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

/// One RPC of the segd services: an index into [`RPC_METHODS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcMethod(usize);

impl RpcMethod {
    /// The method a gRPC request path names; `None` for health, reflection
    /// and anything else, which are not counted.
    pub fn from_path(path: &str) -> Option<Self> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        RPC_METHODS
            .iter()
            .position(|&(known_service, known_method)| {
                known_service == service && known_method == method
            })
            .map(Self)
    }

    /// Every method, in the order of `proto/`.
    pub fn all() -> impl Iterator<Item = RpcMethod> {
        (0..RPC_METHODS.len()).map(Self)
    }

    /// The full service name, e.g. `segd.v1.Segments`.
    pub fn service(self) -> &'static str {
        RPC_METHODS[self.0].0
    }

    pub fn name(self) -> &'static str {
        RPC_METHODS[self.0].1
    }
}

/// The label of a gRPC code as the spec spells it (`INVALID_ARGUMENT`),
/// from tonic's variant name (`InvalidArgument`).
fn code_label(code: Code) -> String {
    let mut label = String::new();
    for (index, character) in format!("{code:?}").chars().enumerate() {
        if character.is_ascii_uppercase() && index > 0 {
            label.push('_');
        }
        label.push(character.to_ascii_uppercase());
    }
    label
}

/// Counters of one RPC method.
struct MethodCounters {
    /// Indexed by gRPC code.
    by_code: [AtomicU64; CODES],
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

/// Requests and latency of every RPC, fed by [`RpcMetricsLayer`].
pub struct RpcCounters {
    methods: [MethodCounters; RPC_METHODS.len()],
}

impl Default for RpcCounters {
    fn default() -> Self {
        Self {
            methods: std::array::from_fn(|_| MethodCounters::new()),
        }
    }
}

impl std::fmt::Debug for RpcCounters {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("RpcCounters")
    }
}

impl RpcCounters {
    /// Counts one finished RPC: its status code and server-side duration.
    pub fn record(&self, method: RpcMethod, code: Code, elapsed: Duration) {
        let counters = &self.methods[method.0];
        let code_index = (code as usize).min(CODES - 1);
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

    /// Requests of `method` answered with `code` so far.
    pub fn count(&self, method: RpcMethod, code: Code) -> u64 {
        self.methods[method.0].by_code[(code as usize).min(CODES - 1)].load(Ordering::Relaxed)
    }

    fn encode_requests(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "segd_rpc_requests",
            "RPCs answered, by method and gRPC status code.",
            None,
            MetricType::Counter,
        )?;
        for method in RpcMethod::all() {
            let counters = &self.methods[method.0];
            for (index, count) in counters.by_code.iter().enumerate() {
                let count = count.load(Ordering::Relaxed);
                // OK is always listed so rates start at zero; other codes once seen.
                if count == 0 && index != 0 {
                    continue;
                }
                let code = code_label(Code::from(index as i32));
                let labels = [
                    ("service", method.service()),
                    ("method", method.name()),
                    ("code", code.as_str()),
                ];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
            }
        }
        Ok(())
    }

    fn encode_latency(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "segd_rpc_duration_seconds",
            "Server-side RPC duration, until the last response frame.",
            None,
            MetricType::Histogram,
        )?;
        for method in RpcMethod::all() {
            let counters = &self.methods[method.0];
            // Per-bucket counts: the encoding cumulates them.
            let buckets: Vec<(f64, u64)> = counters
                .latency_buckets
                .iter()
                .enumerate()
                .map(|(index, bucket)| {
                    let bound = LATENCY_BOUNDS_NANOS
                        .get(index)
                        .map_or(f64::INFINITY, |&nanos| seconds(nanos));
                    (bound, bucket.load(Ordering::Relaxed))
                })
                .collect();
            let count = buckets.iter().map(|&(_, count)| count).sum();
            let sum = seconds(counters.latency_sum_nanos.load(Ordering::Relaxed));
            let labels = [("service", method.service()), ("method", method.name())];
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

impl Collector for RpcCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_requests(&mut encoder)?;
        self.encode_latency(&mut encoder)
    }
}

fn seconds(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

// ---------------------------------------------------------------------------
// The RPC layer.

/// A tower layer counting every Segments and Admin RPC by status code, with
/// its server-side duration (until the last frame of the response). Put it
/// outermost, so refusals by interceptors and load shedding are counted too.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    counters: Arc<RpcCounters>,
}

impl RpcMetricsLayer {
    pub fn new(counters: Arc<RpcCounters>) -> Self {
        Self { counters }
    }
}

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            counters: self.counters.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    counters: Arc<RpcCounters>,
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
            counters: self.counters.clone(),
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
    counters: Arc<RpcCounters>,
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
        self.counters
            .record(self.method, code, self.started.elapsed());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{Registry, encode};

    #[test]
    fn paths_name_methods() {
        let lookup = RpcMethod::from_path("/segd.v1.Segments/Lookup").unwrap();
        assert_eq!(
            (lookup.service(), lookup.name()),
            ("segd.v1.Segments", "Lookup")
        );
        let drop = RpcMethod::from_path("/segd.v1.Admin/DropPack").unwrap();
        assert_eq!((drop.service(), drop.name()), ("segd.v1.Admin", "DropPack"));
        assert_eq!(RpcMethod::from_path("/segd.v1.Admin/Lookup"), None);
        assert_eq!(RpcMethod::from_path("/grpc.health.v1.Health/Check"), None);
        assert!(RpcMethod::all().any(|method| method.name() == "PutLineItems"));
    }

    #[test]
    fn codes_are_labelled_as_the_spec_spells_them() {
        assert_eq!(code_label(Code::Ok), "OK");
        assert_eq!(code_label(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_label(Code::DataLoss), "DATA_LOSS");
        assert_eq!(code_label(Code::Unauthenticated), "UNAUTHENTICATED");
    }

    #[test]
    fn latency_lands_in_its_bucket() {
        let counters = Arc::new(RpcCounters::default());
        let lookup = RpcMethod::from_path("/segd.v1.Segments/Lookup").unwrap();
        counters.record(lookup, Code::Ok, Duration::from_micros(3));
        counters.record(lookup, Code::Ok, Duration::from_micros(7));
        counters.record(lookup, Code::InvalidArgument, Duration::from_secs(5));
        let buckets = &counters.methods[lookup.0].latency_buckets;
        assert_eq!(buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(buckets[1].load(Ordering::Relaxed), 1);
        assert_eq!(
            buckets[LATENCY_BOUNDS_NANOS.len()].load(Ordering::Relaxed),
            1
        );
        assert_eq!(counters.count(lookup, Code::Ok), 2);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(counters));
        let text = encode(&registry);
        let labels = "service=\"segd.v1.Segments\",method=\"Lookup\"";
        for expected in [
            format!("segd_rpc_duration_seconds_bucket{{{labels},le=\"1e-05\"}} 2"),
            format!("segd_rpc_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 3"),
            format!("segd_rpc_duration_seconds_count{{{labels}}} 3"),
            format!("segd_rpc_requests_total{{{labels},code=\"INVALID_ARGUMENT\"}} 1"),
            format!("segd_rpc_requests_total{{{labels},code=\"OK\"}} 2"),
        ] {
            assert!(text.contains(&expected), "{expected} missing from:\n{text}");
        }
    }
}
