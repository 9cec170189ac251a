//! Operational metrics, served at `GET /metrics` on `--metrics-listen` in the
//! Prometheus text exposition format (0.0.4).
//!
//! What it owns: the [`Registry`] the composition root hands to every owner of
//! figures, the encoding (prometheus-client), the HTTP route (axum, over the
//! hyper already in the tree through tonic), and the per-RPC counters with the
//! tower layer that feeds them ([`rpc`]).
//!
//! What it must never do: know the domain. The store, the frequency store,
//! the watcher, the load shedder and the services register their own
//! collectors; this module only encodes what they write. Nor may it cost a
//! lock or an allocation per request: hot-path counters are relaxed atomics
//! in preallocated arrays, and all formatting happens at scrape time, on a
//! blocking thread (some collectors read the disk).

pub mod rpc;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::DescriptorEncoder;
pub use prometheus_client::metrics::MetricType;
pub use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use rpc::{RpcCounters, RpcMethod, RpcMetricsLayer};

/// The exposition text of everything registered in `registry`. Collectors may
/// read the disk: call it off the async runtime.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::with_capacity(16 << 10);
    // Writing into a String cannot fail; a collector that fails leaves its
    // family out rather than failing the scrape.
    if let Err(error) = prometheus_client::encoding::prometheus_text::encode(&mut text, registry) {
        tracing::warn!(error = %error, "a metrics collector failed to encode");
    }
    text
}

/// The metrics HTTP routes: `GET /metrics` and a hint at `GET /`.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    match tokio::task::spawn_blocking(move || encode(&registry)).await {
                        Ok(text) => Ok((
                            [(
                                CONTENT_TYPE,
                                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                            )],
                            text,
                        )),
                        Err(join_error) => {
                            tracing::warn!(error = %join_error, "metrics scrape failed");
                            Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
                        }
                    }
                }
            }),
        )
        .route("/", get(|| async { "segd metrics: GET /metrics\n" }))
}

/// Serves `router` on `listener` until `shutdown` completes, then lets
/// in-flight scrapes finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Encodes one unlabelled gauge.
pub fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl prometheus_client::encoding::EncodeGaugeValue,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

/// Encodes one unlabelled counter; `name` without `_total`, which the
/// encoding appends.
pub fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl prometheus_client::encoding::EncodeCounterValue,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&value, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Answer;

    impl Collector for Answer {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            counter(&mut encoder, "segd_answers", "Answers given.", 42u64)?;
            gauge(&mut encoder, "segd_answer", "The answer.", 42i64)
        }
    }

    #[test]
    fn collectors_encode_in_the_text_format() {
        let mut registry = Registry::default();
        assert_eq!(encode(&registry), "");
        registry.register_collector(Box::new(Answer));
        assert_eq!(
            encode(&registry),
            "# HELP segd_answers_total Answers given.\n\
             # TYPE segd_answers_total counter\n\
             segd_answers_total 42\n\
             # HELP segd_answer The answer.\n\
             # TYPE segd_answer gauge\n\
             segd_answer 42\n"
        );
    }
}
