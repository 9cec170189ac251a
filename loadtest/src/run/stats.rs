//! What a run measured: each connection's histograms and counts, the
//! once-a-second progress line and timeline, and the report they add up to.
//! Owns the merging of per-connection figures; must never hold a
//! connection's stats lock across an `.await` or send a request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::slowest::Slowest;
use super::{Schedule, grpc_addrs};
use crate::cli::{RunArgs, Target, Workload, flag_name};
use crate::report::{
    self, Histogram, Percentiles, Report, SwapSplit, TimelinePoint, new_histogram,
};

/// Measurements of one connection's workers.
pub(super) struct ConnectionStats {
    /// Successful requests completed since the last progress tick (warm-up included).
    pub(super) interval: Histogram,
    pub(super) interval_errors: u64,
    pub(super) latency: Histogram,
    pub(super) service_time: Histogram,
    pub(super) during_swaps: Histogram,
    pub(super) outside_swaps: Histogram,
    pub(super) during_swaps_errors: u64,
    pub(super) outside_swaps_errors: u64,
    /// Measured requests, successful or not.
    pub(super) completed: u64,
    pub(super) user_lookups: u64,
    pub(super) errors_by_code: BTreeMap<String, u64>,
    pub(super) first_error: Option<String>,
    pub(super) generations_seen: Option<(u64, u64)>,
    pub(super) slowest: Slowest,
}

impl ConnectionStats {
    pub(super) fn new() -> ConnectionStats {
        ConnectionStats {
            interval: new_histogram(),
            interval_errors: 0,
            latency: new_histogram(),
            service_time: new_histogram(),
            during_swaps: new_histogram(),
            outside_swaps: new_histogram(),
            during_swaps_errors: 0,
            outside_swaps_errors: 0,
            completed: 0,
            user_lookups: 0,
            errors_by_code: BTreeMap::new(),
            first_error: None,
            generations_seen: None,
            slowest: Slowest::new(),
        }
    }
}

pub(super) fn lock(stats: &Mutex<ConnectionStats>) -> MutexGuard<'_, ConnectionStats> {
    // A worker that panicked mid-update leaves counts that are still usable.
    stats
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Prints one line a second and returns the per-second timeline.
pub(super) async fn progress(
    connection_stats: &[Arc<Mutex<ConnectionStats>>],
    schedule: &Schedule,
    warmup_seconds: u64,
    total_seconds: u64,
) -> Vec<TimelinePoint> {
    let mut timeline = Vec::with_capacity(total_seconds as usize);
    let mut second_histogram = new_histogram();
    for second in 1..=total_seconds {
        tokio::time::sleep_until((schedule.run_start + Duration::from_secs(second)).into()).await;
        second_histogram.reset();
        let mut errors = 0;
        for stats in connection_stats {
            let mut stats = lock(stats);
            // Same bounds on both sides: merging cannot fail.
            let _ = second_histogram.add(&stats.interval);
            stats.interval.reset();
            errors += std::mem::take(&mut stats.interval_errors);
        }
        let point = TimelinePoint {
            second,
            measured: second > warmup_seconds,
            requests: second_histogram.len() + errors,
            errors,
            p50_us: second_histogram.value_at_quantile(0.5),
            p99_us: second_histogram.value_at_quantile(0.99),
            max_us: second_histogram.max(),
        };
        eprintln!(
            "[{second:>4}s] {:>8} req/s  p50 {:>9}  p99 {:>9}  max {:>9}  errors {}{}",
            point.requests,
            report::format_micros(point.p50_us),
            report::format_micros(point.p99_us),
            report::format_micros(point.max_us),
            point.errors,
            if point.measured { "" } else { "  (warm-up)" },
        );
        timeline.push(point);
    }
    timeline
}

pub(super) fn build_report(
    args: &RunArgs,
    connection_stats: &[Arc<Mutex<ConnectionStats>>],
    timeline: Vec<TimelinePoint>,
    swaps: Vec<crate::report::SwapEvent>,
    swap_window_after_push: Option<f64>,
    redis_used_memory_bytes: Option<u64>,
) -> Report {
    let mut latency = new_histogram();
    let mut service_time = new_histogram();
    let mut during_swaps = new_histogram();
    let mut outside_swaps = new_histogram();
    let (mut completed, mut user_lookups, mut during_errors, mut outside_errors) = (0, 0, 0, 0);
    let mut errors_by_code: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_error = None;
    let mut generations_seen: Option<(u64, u64)> = None;
    let locked: Vec<_> = connection_stats.iter().map(|stats| lock(stats)).collect();
    for stats in &locked {
        // Same bounds everywhere: merging cannot fail.
        let _ = latency.add(&stats.latency);
        let _ = service_time.add(&stats.service_time);
        let _ = during_swaps.add(&stats.during_swaps);
        let _ = outside_swaps.add(&stats.outside_swaps);
        completed += stats.completed;
        user_lookups += stats.user_lookups;
        during_errors += stats.during_swaps_errors;
        outside_errors += stats.outside_swaps_errors;
        for (code, count) in &stats.errors_by_code {
            *errors_by_code.entry(code.clone()).or_default() += count;
        }
        if first_error.is_none() {
            first_error = stats.first_error.clone();
        }
        if let Some((lowest, highest)) = stats.generations_seen {
            generations_seen = Some(match generations_seen {
                Some((low, high)) => (low.min(lowest), high.max(highest)),
                None => (lowest, highest),
            });
        }
    }
    let duration_seconds = args.duration as f64;
    let workload = flag_name(args.workload);
    let target = flag_name(args.target);
    Report {
        workload,
        addr: match args.target {
            Target::Grpc => grpc_addrs(args).join(","),
            Target::Redis => args.redis_url.clone(),
        },
        target,
        mode: if args.rps > 0 { "open" } else { "closed" }.to_owned(),
        offered_rps: (args.rps > 0).then_some(args.rps),
        warmup_seconds: args.warmup,
        run_started_at_unix_seconds: 0.0,
        duration_seconds: args.duration,
        connections: args.connections,
        concurrency_per_connection: args.concurrency,
        requests: completed,
        achieved_rps: completed as f64 / duration_seconds,
        user_lookups_per_second: user_lookups as f64 / duration_seconds,
        impressions_per_second: match args.workload {
            Workload::Record => {
                let failed: u64 = errors_by_code.values().sum();
                completed.saturating_sub(failed) as f64 * args.record_batch as f64
                    / duration_seconds
            }
            _ => 0.0,
        },
        fleet_lag: None,
        errors: errors_by_code.values().sum(),
        errors_by_code,
        first_error,
        latency: Percentiles::of(&latency),
        service_time: Percentiles::of(&service_time),
        swap_split: swap_window_after_push.map(|window| SwapSplit {
            window_after_push_seconds: window,
            during_swaps: Percentiles::of(&during_swaps),
            during_swaps_curve: report::percentile_curve(&during_swaps),
            outside_swaps_curve: report::percentile_curve(&outside_swaps),
            during_swaps_errors: during_errors,
            outside_swaps: Percentiles::of(&outside_swaps),
            outside_swaps_errors: outside_errors,
        }),
        swaps,
        generations_seen,
        redis_used_memory_bytes,
        generator_cpu_cores: None,
        server_cpu_seconds: None,
        server_cpu_us_per_request: None,
        machine_cpu: None,
        timeline,
        percentile_curve: report::percentile_curve(&latency),
        slowest_requests: Slowest::merged(locked.iter().map(|stats| &stats.slowest)),
    }
}
