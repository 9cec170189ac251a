//! The single-node [`ImpressionSink`] (the local write-ahead log, off the
//! runtime) and the deadline a recording call has: the client's
//! `grpc-timeout` or `--request-timeout-ms`, whichever is sooner.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::freq::{FreqError, FreqStore, ImpressionSink, NewImpression, RecordFuture};

/// Records into the local log; `record` blocks until durable per `--fsync`.
pub struct LocalLogSink(pub Arc<FreqStore>);

impl ImpressionSink for LocalLogSink {
    fn record(&self, impressions: Vec<NewImpression>, _deadline: Instant) -> RecordFuture<'_> {
        let store = self.0.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.record(&impressions))
                .await
                .map_err(|join_error| {
                    FreqError::storage("record task", std::io::Error::other(join_error.to_string()))
                })?
        })
    }
}

/// When a call started now must be answered: the sooner of the client's
/// `grpc-timeout` and `server_timeout`, less a tenth so the answer (and an
/// UNAVAILABLE in particular) reaches the client before it gives up.
pub fn call_deadline(metadata: &tonic::metadata::MetadataMap, server_timeout: Duration) -> Instant {
    let client_timeout = metadata
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout);
    let timeout = client_timeout.map_or(server_timeout, |client| client.min(server_timeout));
    Instant::now() + timeout - timeout / 10
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3_600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_junk_is_ignored() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3_600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }
}
