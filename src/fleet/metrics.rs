//! What the fleet counts: plain atomics, written without locks on the apply
//! and publish paths, read by `Status`, and encoded at scrape time as a
//! collector the composition root registers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::NoLabelSet;

use crate::telemetry::{Collector, DescriptorEncoder, MetricType};

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
    /// Times the stream was found to end before the applied sequence.
    pub stream_rewinds: AtomicU64,
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
            stream_rewinds: AtomicU64::new(0),
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
}

/// A gauge or counter: name (counters without `_total`, which the encoding
/// appends), help, value.
type Figure = (&'static str, &'static str, u64);

impl FleetMetrics {
    fn gauges(&self) -> [Figure; 5] {
        let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
        [
            (
                "segd_fleet_connected",
                "1 while the NATS connection is up.",
                u64::from(self.connected.load(Ordering::Relaxed)),
            ),
            (
                "segd_fleet_caught_up",
                "1 once the start-up catch-up reached the stream's last sequence.",
                u64::from(self.caught_up.load(Ordering::Relaxed)),
            ),
            (
                "segd_fleet_applied_sequence",
                "Last stream sequence applied to the local counters.",
                load(&self.applied_sequence),
            ),
            (
                "segd_fleet_stream_sequence",
                "Highest stream sequence this replica knows of.",
                load(&self.stream_sequence),
            ),
            (
                "segd_fleet_messages_behind",
                "Messages of this replica's subject not yet applied.",
                load(&self.messages_behind),
            ),
        ]
    }

    fn counters(&self) -> [Figure; 5] {
        let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
        [
            (
                "segd_fleet_publish_failures",
                "RecordImpressions calls answered UNAVAILABLE because JetStream did not take (or this replica did not apply) the batch in time.",
                load(&self.publish_failures),
            ),
            (
                "segd_fleet_published_batches",
                "Batches JetStream acknowledged from this replica.",
                load(&self.published_batches),
            ),
            (
                "segd_fleet_skipped_messages",
                "Stream messages skipped: stored after their deadline, or undecodable.",
                load(&self.late_batches_skipped) + load(&self.undecodable_messages),
            ),
            (
                "segd_fleet_stream_rewinds",
                "Times the stream ended before the applied sequence (lost tail or recreated stream); counting went on from its end.",
                load(&self.stream_rewinds),
            ),
            (
                "segd_fleet_consumer_starts",
                "Times the stream consumer was created (start-up, reconnects, delivery gaps).",
                load(&self.consumer_starts),
            ),
        ]
    }

    fn encode_lag(
        &self,
        encoder: &mut DescriptorEncoder,
        labels: &[(&str, &str); 2],
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "segd_fleet_apply_lag_seconds",
            "Seconds from the recording replica's stamp to the local apply, per stream message.",
            None,
            MetricType::Histogram,
        )?;
        // Per-bucket counts: the encoding cumulates them.
        let buckets: Vec<(f64, u64)> = self
            .lag_bucket_counts
            .iter()
            .enumerate()
            .map(|(index, count)| {
                let bound = LAG_BUCKETS_SECONDS
                    .get(index)
                    .copied()
                    .unwrap_or(f64::INFINITY);
                (bound, count.load(Ordering::Relaxed))
            })
            .collect();
        let sum = self.lag_sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let count = self.lag_count.load(Ordering::Relaxed);
        family
            .encode_family(labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

impl Collector for FleetMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let labels = [
            ("replica", self.replica_id.as_str()),
            ("stream", self.stream.as_str()),
        ];
        for (name, help, value) in self.gauges() {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_family(&labels)?
                .encode_gauge(&(value as i64))?;
        }
        for (name, help, value) in self.counters() {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        self.encode_lag(&mut encoder, &labels)
    }
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
        let mut registry = crate::telemetry::Registry::default();
        registry.register_collector(Box::new(std::sync::Arc::new(metrics)));
        let out = crate::telemetry::encode(&registry);
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
