//! What the fleet counts: plain atomics, rendered in the Prometheus text
//! format by [`FleetMetrics::render`] and read by `Status`. Kept here, not in
//! the metrics registry, so the registry only needs one call to expose them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Upper bounds (seconds) of the apply-lag histogram buckets.
pub const LAG_BUCKETS_SECONDS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The fleet's figures. Every field is updated without locks.
#[derive(Debug)]
pub struct FleetMetrics {
    pub replica_id: String,
    pub stream: String,
    /// True while the NATS connection is up.
    pub connected: AtomicBool,
    /// True once the start-up catch-up reached the stream's last sequence.
    pub caught_up: AtomicBool,
    /// The last stream sequence applied to the local counters.
    pub applied_sequence: AtomicU64,
    /// The highest stream sequence this replica knows of (acks and consumer).
    pub stream_sequence: AtomicU64,
    /// Messages of this replica's subject after the last one applied.
    pub messages_behind: AtomicU64,
    /// Recording calls that failed to publish (UNAVAILABLE).
    pub publish_failures: AtomicU64,
    /// Batches acknowledged by JetStream from this replica.
    pub published_batches: AtomicU64,
    /// Batches stored after their request's deadline, skipped by every replica.
    pub late_batches_skipped: AtomicU64,
    /// Messages that failed to decode, skipped.
    pub undecodable_messages: AtomicU64,
    /// Times the stream consumer was (re)created.
    pub consumer_starts: AtomicU64,
    /// The apply lag of the last applied message, in nanoseconds.
    pub last_lag_nanos: AtomicU64,
    lag_bucket_counts: [AtomicU64; LAG_BUCKETS_SECONDS.len() + 1],
    lag_sum_nanos: AtomicU64,
    lag_count: AtomicU64,
}

impl FleetMetrics {
    pub fn new(replica_id: String, stream: String) -> Self {
        Self {
            replica_id,
            stream,
            connected: AtomicBool::new(false),
            caught_up: AtomicBool::new(false),
            applied_sequence: AtomicU64::new(0),
            stream_sequence: AtomicU64::new(0),
            messages_behind: AtomicU64::new(0),
            publish_failures: AtomicU64::new(0),
            published_batches: AtomicU64::new(0),
            late_batches_skipped: AtomicU64::new(0),
            undecodable_messages: AtomicU64::new(0),
            consumer_starts: AtomicU64::new(0),
            last_lag_nanos: AtomicU64::new(0),
            lag_bucket_counts: Default::default(),
            lag_sum_nanos: AtomicU64::new(0),
            lag_count: AtomicU64::new(0),
        }
    }

    /// Counts one applied message's lag (origin stamp to local apply); a
    /// negative lag (clock skew) counts as 0.
    pub fn observe_lag_nanos(&self, lag_nanos: i64) {
        let lag_nanos = lag_nanos.max(0) as u64;
        let lag_seconds = lag_nanos as f64 / 1e9;
        let bucket = LAG_BUCKETS_SECONDS
            .iter()
            .position(|&bound| lag_seconds <= bound)
            .unwrap_or(LAG_BUCKETS_SECONDS.len());
        self.lag_bucket_counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.lag_sum_nanos.fetch_add(lag_nanos, Ordering::Relaxed);
        self.lag_count.fetch_add(1, Ordering::Relaxed);
        self.last_lag_nanos.store(lag_nanos, Ordering::Relaxed);
    }

    /// Raises the known stream sequence to `sequence`.
    pub fn saw_stream_sequence(&self, sequence: u64) {
        self.stream_sequence.fetch_max(sequence, Ordering::Relaxed);
    }

    /// Appends the `segd_fleet_*` families to `out`.
    pub fn render(&self, out: &mut String) {
        let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
        let labels = format!(
            "replica=\"{}\",stream=\"{}\"",
            escape(&self.replica_id),
            escape(&self.stream)
        );
        let figures: [(&str, &str, &str, u64); 9] = [
            (
                "segd_fleet_connected",
                "gauge",
                "1 while the NATS connection is up.",
                u64::from(self.connected.load(Ordering::Relaxed)),
            ),
            (
                "segd_fleet_caught_up",
                "gauge",
                "1 once the start-up catch-up reached the stream's last sequence.",
                u64::from(self.caught_up.load(Ordering::Relaxed)),
            ),
            (
                "segd_fleet_applied_sequence",
                "gauge",
                "Last stream sequence applied to the local counters.",
                load(&self.applied_sequence),
            ),
            (
                "segd_fleet_stream_sequence",
                "gauge",
                "Highest stream sequence this replica knows of.",
                load(&self.stream_sequence),
            ),
            (
                "segd_fleet_messages_behind",
                "gauge",
                "Messages of this replica's subject not yet applied.",
                load(&self.messages_behind),
            ),
            (
                "segd_fleet_publish_failures_total",
                "counter",
                "RecordImpressions calls answered UNAVAILABLE because JetStream did not take the batch.",
                load(&self.publish_failures),
            ),
            (
                "segd_fleet_published_batches_total",
                "counter",
                "Batches JetStream acknowledged from this replica.",
                load(&self.published_batches),
            ),
            (
                "segd_fleet_skipped_messages_total",
                "counter",
                "Stream messages skipped: stored after their deadline, or undecodable.",
                load(&self.late_batches_skipped) + load(&self.undecodable_messages),
            ),
            (
                "segd_fleet_consumer_starts_total",
                "counter",
                "Times the stream consumer was created (start-up, reconnects, gaps).",
                load(&self.consumer_starts),
            ),
        ];
        for (name, kind, help, value) in figures {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
        let name = "segd_fleet_apply_lag_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Seconds from the recording replica's stamp to the local apply, per stream message.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (index, bound) in LAG_BUCKETS_SECONDS.iter().enumerate() {
            cumulative += load(&self.lag_bucket_counts[index]);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += load(&self.lag_bucket_counts[LAG_BUCKETS_SECONDS.len()]);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            load(&self.lag_sum_nanos) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", load(&self.lag_count));
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_lands_in_cumulative_buckets() {
        let metrics = FleetMetrics::new("a".to_owned(), "S".to_owned());
        metrics.observe_lag_nanos(300_000);
        metrics.observe_lag_nanos(15_000_000);
        metrics.observe_lag_nanos(-5);
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(
            out.contains(
                "segd_fleet_apply_lag_seconds_bucket{replica=\"a\",stream=\"S\",le=\"0.0005\"} 2"
            ),
            "{out}"
        );
        assert!(out.contains("le=\"0.02\"} 3"), "{out}");
        assert!(out.contains("segd_fleet_apply_lag_seconds_count{replica=\"a\",stream=\"S\"} 3"));
    }
}
