//! Load shedding for the query port: a server-wide limit on requests in
//! flight. A request over the limit is answered at once with
//! `RESOURCE_EXHAUSTED` instead of queueing without bound, so an overloaded
//! server stays fast for the requests it does take and recovers as soon as
//! the burst passes. Also maps tonic's "message too large" (`OUT_OF_RANGE`)
//! to `RESOURCE_EXHAUSTED`, the code gRPC specifies for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tokio::sync::Semaphore;
use tonic::body::Body;
use tower::{Layer, Service};

/// Counts of what the layer did, exported at `GET /metrics`.
#[derive(Debug, Default)]
pub struct OverloadCounters {
    pub shed: AtomicU64,
}

impl crate::telemetry::Collector for OverloadCounters {
    fn encode(
        &self,
        mut encoder: crate::telemetry::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        crate::telemetry::counter(
            &mut encoder,
            "segd_overload_shed_requests",
            "Query-port requests refused with RESOURCE_EXHAUSTED at once because --max-in-flight requests were in flight.",
            self.shed.load(Ordering::Relaxed),
        )
    }
}

#[derive(Clone)]
pub struct ConcurrencyShedLayer {
    permits: Arc<Semaphore>,
    counters: Arc<OverloadCounters>,
}

impl ConcurrencyShedLayer {
    pub fn new(max_in_flight: usize, counters: Arc<OverloadCounters>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            counters,
        }
    }
}

impl<S> Layer<S> for ConcurrencyShedLayer {
    type Service = ConcurrencyShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyShed {
            inner,
            permits: self.permits.clone(),
            counters: self.counters.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ConcurrencyShed<S> {
    inner: S,
    permits: Arc<Semaphore>,
    counters: Arc<OverloadCounters>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, RequestBody> Service<Request<RequestBody>> for ConcurrencyShed<S>
where
    S: Service<Request<RequestBody>, Response = Response<Body>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.counters.shed.fetch_add(1, Ordering::Relaxed);
            let status = tonic::Status::resource_exhausted(
                "server overloaded: too many requests in flight, retry with backoff",
            );
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            drop(permit);
            relabel_message_too_large(&mut response);
            Ok(response)
        })
    }
}

/// tonic reports a request over the size limit as `OUT_OF_RANGE`; gRPC's
/// status-code guide says `RESOURCE_EXHAUSTED`. Rewrite it in the
/// trailers-only response tonic sends for it.
fn relabel_message_too_large(response: &mut Response<Body>) {
    let headers = response.headers_mut();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() == b"11");
    let too_large = headers.get("grpc-message").is_some_and(|message| {
        message.to_str().is_ok_and(|message| {
            message.contains("message%20length%20too%20large")
                || message.contains("message length too large")
        })
    });
    if out_of_range && too_large {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
    }
}
