//! Latency histograms and the final report: its text table and its JSON form.
//!
//! Latencies are recorded in microseconds in HdrHistograms with 3 significant
//! digits (0.1 % error) from 1 µs to one minute. This module only formats numbers
//! the driver measured; it knows nothing of the network.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::machine_cpu::MachineCpu;

pub type Histogram = hdrhistogram::Histogram<u64>;

/// One minute, in microseconds: anything slower saturates rather than failing.
/// (An hour would triple the histogram's size for nothing a run can show.)
const HIGHEST_TRACKABLE_MICROS: u64 = 60_000_000;

pub fn new_histogram() -> Histogram {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, HIGHEST_TRACKABLE_MICROS, 3).expect("valid histogram bounds")
}

/// Records `micros`, counting sub-microsecond answers as 1 µs.
pub fn record_micros(histogram: &mut Histogram, micros: u64) {
    histogram.saturating_record(micros.max(1));
}

/// The summary numbers of one histogram, in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: histogram.len(),
            mean_us: (histogram.mean() * 10.0).round() / 10.0,
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            p9999_us: histogram.value_at_quantile(0.9999),
            max_us: histogram.max(),
        }
    }
}

/// One point of the latency-percentile curve.
#[derive(Debug, Clone, Serialize)]
pub struct CurvePoint {
    /// 0 .. 99.99.
    pub percentile: f64,
    pub latency_us: u64,
}

/// Points evenly spaced on the "nines" axis, from 0 % to 99.99 %.
pub fn percentile_curve(histogram: &Histogram) -> Vec<CurvePoint> {
    if histogram.is_empty() {
        return Vec::new();
    }
    const STEPS: u32 = 160;
    (0..=STEPS)
        .map(|step| {
            let nines = 4.0 * f64::from(step) / f64::from(STEPS);
            let quantile = 1.0 - 10f64.powf(-nines);
            CurvePoint {
                percentile: quantile * 100.0,
                latency_us: histogram.value_at_quantile(quantile),
            }
        })
        .collect()
}

/// One second of the run, by completion time.
#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    /// Seconds since the start of the run (warm-up included); this point covers
    /// the second ending here.
    pub second: u64,
    /// False during the warm-up.
    pub measured: bool,
    pub requests: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// One of the run's slowest measured requests.
#[derive(Debug, Clone, Serialize)]
pub struct SlowRequest {
    /// When it started (its intended start in open loop), in seconds since
    /// the start of the run, warm-up included: the clock of `swaps`.
    pub started_at_seconds: f64,
    pub latency_us: u64,
}

/// One snapshot push during the run.
#[derive(Debug, Clone, Serialize)]
pub struct SwapEvent {
    /// Seconds since the start of the run.
    pub started_at_seconds: f64,
    pub finished_at_seconds: f64,
    pub pack_file: String,
    pub version: String,
    pub generation: u64,
    /// The server already served this version: nothing was swapped.
    pub unchanged: bool,
    pub error: Option<String>,
}

/// Requests that overlapped a swap window against all the others.
#[derive(Debug, Clone, Serialize)]
pub struct SwapSplit {
    /// A request overlaps when it ran between a push's start and its end plus this.
    pub window_after_push_seconds: f64,
    pub during_swaps: Percentiles,
    pub during_swaps_errors: u64,
    pub outside_swaps: Percentiles,
    pub outside_swaps_errors: u64,
    pub during_swaps_curve: Vec<CurvePoint>,
    pub outside_swaps_curve: Vec<CurvePoint>,
}

/// What the `--observe-addr` probes found (see `fleet_lag`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetLag {
    pub observe_addr: String,
    /// Probes seen on the observer; lag from the recording acknowledgement.
    pub lag: Percentiles,
    /// Probes not seen within 5 s (or whose recording failed).
    pub lost: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: String,
    pub target: String,
    pub addr: String,
    /// "open" (fixed rate, latency from intended send time) or "closed".
    pub mode: String,
    pub offered_rps: Option<u64>,
    /// When second 0 of the run was, on the wall clock (Unix seconds): every
    /// `..._seconds` offset below is from it.
    pub run_started_at_unix_seconds: f64,
    pub warmup_seconds: u64,
    pub duration_seconds: u64,
    pub connections: usize,
    pub concurrency_per_connection: usize,
    pub requests: u64,
    pub achieved_rps: f64,
    pub user_lookups_per_second: f64,
    /// Impressions acknowledged per second (record workload).
    pub impressions_per_second: f64,
    /// Cross-replica visibility lag (`--observe-addr`).
    pub fleet_lag: Option<FleetLag>,
    pub errors: u64,
    /// gRPC status code names (or `redis:...`) to counts.
    pub errors_by_code: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    /// Open loop: from intended send time (coordinated omission corrected).
    /// Closed loop: service time.
    pub latency: Percentiles,
    /// Always from the actual send.
    pub service_time: Percentiles,
    pub swaps: Vec<SwapEvent>,
    pub swap_split: Option<SwapSplit>,
    /// Smallest and largest serving generation seen in responses.
    pub generations_seen: Option<(u64, u64)>,
    pub redis_used_memory_bytes: Option<u64>,
    /// CPU the load generator itself used, in cores (user + system over wall
    /// time, whole run): on a 2-core box it competes with the server.
    pub generator_cpu_cores: Option<f64>,
    /// CPU seconds the server process (`--server-pid`) used in the measured
    /// window, and that per request.
    pub server_cpu_seconds: Option<f64>,
    pub server_cpu_us_per_request: Option<f64>,
    /// The whole machine's CPU time (all processes, the kernel, steal) over
    /// the measured window, and inside and outside swap windows.
    pub machine_cpu: Option<MachineCpu>,
    pub timeline: Vec<TimelinePoint>,
    pub percentile_curve: Vec<CurvePoint>,
    /// The slowest measured successful requests, slowest first.
    pub slowest_requests: Vec<SlowRequest>,
}

/// User + system CPU seconds of this process, from `/proc/self/stat` (Linux;
/// `None` elsewhere). Fields 14 and 15 are in USER_HZ ticks, 100 a second.
pub fn process_cpu_seconds() -> Option<f64> {
    cpu_seconds_from("/proc/self/stat")
}

/// [`process_cpu_seconds`] of another process on this machine.
pub fn process_cpu_seconds_of(pid: u32) -> Option<f64> {
    cpu_seconds_from(&format!("/proc/{pid}/stat"))
}

fn cpu_seconds_from(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may contain spaces; fields resume after ')'.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user_ticks: f64 = fields.next()?.parse().ok()?;
    let system_ticks: f64 = fields.next()?.parse().ok()?;
    Some((user_ticks + system_ticks) / 100.0)
}

pub fn format_micros(micros: u64) -> String {
    if micros >= 1_000_000 {
        format!("{:.2} s", micros as f64 / 1e6)
    } else if micros >= 100_000 {
        format!("{:.0} ms", micros as f64 / 1e3)
    } else if micros >= 10_000 {
        format!("{:.1} ms", micros as f64 / 1e3)
    } else if micros >= 1_000 {
        format!("{:.2} ms", micros as f64 / 1e3)
    } else {
        format!("{micros} µs")
    }
}

fn percentile_row(label: &str, percentiles: &Percentiles) -> String {
    format!(
        "  {label:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  (n={})\n",
        format_micros(percentiles.p50_us),
        format_micros(percentiles.p90_us),
        format_micros(percentiles.p99_us),
        format_micros(percentiles.p999_us),
        format_micros(percentiles.p9999_us),
        format_micros(percentiles.max_us),
        percentiles.count,
    )
}

impl Report {
    /// Each swap's window on the run's clock: its push, plus the time after
    /// it during which requests still count as overlapping it.
    pub fn swap_windows(&self) -> Vec<std::ops::Range<f64>> {
        let after = self
            .swap_split
            .as_ref()
            .map_or(0.0, |split| split.window_after_push_seconds);
        self.swaps
            .iter()
            .map(|swap| swap.started_at_seconds..swap.finished_at_seconds + after)
            .collect()
    }

    pub fn to_text(&self) -> String {
        let mut text = String::new();
        self.write_rates(&mut text);
        self.write_latencies(&mut text);
        self.write_errors_and_swaps(&mut text);
        self.write_resources(&mut text);
        text
    }

    /// The run line and the achieved rates, with a warning when an open loop fell behind.
    fn write_rates(&self, text: &mut String) {
        let offered = match self.offered_rps {
            Some(rps) => format!("{rps} req/s offered (open loop)"),
            None => "closed loop".to_owned(),
        };
        let _ = writeln!(
            text,
            "workload {} -> {} {} | {offered} | {} s measured after {} s warm-up | {} conn x {} in flight",
            self.workload,
            self.target,
            self.addr,
            self.duration_seconds,
            self.warmup_seconds,
            self.connections,
            self.concurrency_per_connection,
        );
        let _ = write!(
            text,
            "achieved {:.0} req/s ({} requests)",
            self.achieved_rps, self.requests
        );
        if self.user_lookups_per_second > 0.0 {
            let _ = write!(text, ", {:.0} user lookups/s", self.user_lookups_per_second);
        }
        if self.impressions_per_second > 0.0 {
            let _ = write!(text, ", {:.0} impressions/s", self.impressions_per_second);
        }
        text.push('\n');
        if let Some(offered) = self.offered_rps
            && self.achieved_rps < offered as f64 * 0.95
        {
            let _ = writeln!(
                text,
                "WARNING: achieved rate is below 95 % of offered: the target (or the generator) is saturated"
            );
        }
    }

    /// The percentile table: latency, service time, cross-replica lag, swap split.
    fn write_latencies(&self, text: &mut String) {
        let _ = writeln!(
            text,
            "  {:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency", "p50", "p90", "p99", "p99.9", "p99.99", "max"
        );
        let latency_label = if self.offered_rps.is_some() {
            "from intended"
        } else {
            "service time"
        };
        text.push_str(&percentile_row(latency_label, &self.latency));
        if self.offered_rps.is_some() {
            text.push_str(&percentile_row("service time", &self.service_time));
        }
        if let Some(fleet_lag) = &self.fleet_lag {
            text.push_str(&percentile_row("seen on other", &fleet_lag.lag));
            let _ = writeln!(
                text,
                "  (cross-replica lag: recorded on {}, seen by Decide on {}; {} probes lost)",
                self.addr, fleet_lag.observe_addr, fleet_lag.lost
            );
        }
        if let Some(split) = &self.swap_split {
            text.push_str(&percentile_row("during swaps", &split.during_swaps));
            text.push_str(&percentile_row("outside swaps", &split.outside_swaps));
            let _ = writeln!(
                text,
                "  errors during swaps {}, outside {} (window: push start .. end + {} s)",
                split.during_swaps_errors,
                split.outside_swaps_errors,
                split.window_after_push_seconds
            );
        }
    }

    /// Errors by code and every swap the run made.
    fn write_errors_and_swaps(&self, text: &mut String) {
        let _ = writeln!(text, "errors {}", self.errors);
        for (code, count) in &self.errors_by_code {
            let _ = writeln!(text, "  {code}: {count}");
        }
        if let Some(first_error) = &self.first_error {
            let _ = writeln!(text, "  first error: {first_error}");
        }
        for swap in &self.swaps {
            let _ = writeln!(
                text,
                "swap at {:.1} s took {:.0} ms: {} version {} generation {}{}{}",
                swap.started_at_seconds,
                (swap.finished_at_seconds - swap.started_at_seconds) * 1e3,
                swap.pack_file,
                swap.version,
                swap.generation,
                if swap.unchanged {
                    " (unchanged: already served)"
                } else {
                    ""
                },
                swap.error
                    .as_ref()
                    .map(|error| format!(" FAILED: {error}"))
                    .unwrap_or_default(),
            );
        }
    }

    /// Generations seen and what the generator, server and Redis used.
    fn write_resources(&self, text: &mut String) {
        if let Some((lowest, highest)) = self.generations_seen {
            let _ = writeln!(text, "generations seen {lowest} .. {highest}");
        }
        if let Some(cores) = self.generator_cpu_cores {
            let _ = writeln!(text, "load generator used {cores:.2} cores");
        }
        if let (Some(seconds), Some(per_request)) =
            (self.server_cpu_seconds, self.server_cpu_us_per_request)
        {
            let _ = writeln!(
                text,
                "server CPU {per_request:.1} µs per request ({seconds:.2} CPU seconds over the measured window)"
            );
        }
        if let Some(machine) = &self.machine_cpu {
            machine.write_text(text);
        }
        if let Some(bytes) = self.redis_used_memory_bytes {
            let _ = writeln!(
                text,
                "redis used_memory {bytes} bytes ({:.1} MiB)",
                bytes as f64 / (1 << 20) as f64
            );
        }
    }
}
