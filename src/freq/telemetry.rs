//! The frequency store's figures for `GET /metrics`, from
//! [`FreqStore::stats`] at scrape time (which lists the log directory: the
//! scrape runs on a blocking thread).

use std::sync::Arc;

use super::{FreqStats, FreqStore};
use crate::ready::Ready;
use crate::telemetry::{Collector, DescriptorEncoder, counter, gauge};

/// The frequency store's collector: nothing until the store is open.
pub struct FreqMetrics(pub Ready<Arc<FreqStore>>);

impl std::fmt::Debug for FreqMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("FreqMetrics")
    }
}

/// A figure: name, help, how to read it from the stats.
type Figure<T> = (&'static str, &'static str, fn(&FreqStats) -> T);

/// Gauges.
const GAUGES: [Figure<i64>; 8] = [
    (
        "segd_freq_users",
        "Users with at least one frequency counter.",
        |stats| stats.users as i64,
    ),
    (
        "segd_freq_entries",
        "Frequency counters (user, cap key).",
        |stats| stats.entries as i64,
    ),
    (
        "segd_freq_events",
        "Impressions held for frequency caps.",
        |stats| stats.events as i64,
    ),
    (
        "segd_freq_impression_ids",
        "Impression ids remembered for idempotency.",
        |stats| stats.impression_ids as i64,
    ),
    // Was segd_freq_counter_bytes: a name holding a metric type ("counter")
    // misleads, and promtool flags it.
    (
        "segd_freq_memory_bytes",
        "Estimated memory of the frequency counters (maps and heap, without impression ids).",
        |stats| stats.approximate_counter_bytes as i64,
    ),
    (
        "segd_freq_log_bytes",
        "Bytes of live frequency log segments.",
        |stats| stats.log_bytes as i64,
    ),
    (
        "segd_freq_log_segments",
        "Live frequency log segments.",
        |stats| stats.log_segments as i64,
    ),
    (
        "segd_freq_last_checkpoint_timestamp_seconds",
        "When the last checkpoint was written (0 = none since start).",
        |stats| stats.last_checkpoint_unix_seconds,
    ),
];

/// Counters, named without `_total`, which the encoding appends.
const COUNTERS: [Figure<u64>; 6] = [
    (
        "segd_freq_log_records",
        "Frequency log records written since start.",
        |stats| stats.records_written,
    ),
    (
        "segd_freq_log_write_failures",
        "Failed frequency log batches since start.",
        |stats| stats.write_failures,
    ),
    (
        "segd_freq_fsyncs",
        "fsyncs of frequency log segments since start.",
        |stats| stats.fsync_count,
    ),
    (
        "segd_freq_fsync_failures",
        "Failed fsyncs since start.",
        |stats| stats.fsync_failures,
    ),
    (
        "segd_freq_recorded_impressions",
        "Impressions recorded since start.",
        |stats| stats.recorded_impressions,
    ),
    (
        "segd_freq_duplicate_impressions",
        "Impressions refused as duplicates (same impression id) since start.",
        |stats| stats.duplicate_impressions,
    ),
];

impl Collector for FreqMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(store) = self.0.get() else {
            return Ok(());
        };
        let stats = store.stats();
        for (name, help, value) in GAUGES {
            gauge(&mut encoder, name, help, value(&stats))?;
        }
        for (name, help, value) in COUNTERS {
            counter(&mut encoder, name, help, value(&stats))?;
        }
        counter(
            &mut encoder,
            "segd_freq_fsync_seconds",
            "Time spent in those fsyncs.",
            stats.fsync_total_micros as f64 / 1e6,
        )
    }
}
