//! The whole machine's CPU time during a run, from `/proc/stat` (Linux;
//! absent elsewhere), split like the latencies: inside swap windows and
//! outside them.
//!
//! Why: on a shared box the readers' tail during a push is bounded by what
//! the whole machine does then — the generator, the pushing client, the
//! server and the kernel's writeback share the cores — and, in a virtual
//! machine, by what the hypervisor takes (steal). A swap row that carries
//! how busy the machine was and how much was stolen, inside and outside the
//! windows, says which of those moved; the server's own CPU (`--server-pid`)
//! cannot.
//!
//! A thread reads the aggregate `cpu` line every [`SAMPLE_INTERVAL`]; each
//! interval counts towards the window its midpoint falls in. The kernel
//! counts in USER_HZ ticks (100 a second per CPU), so an interval of 100 ms
//! on 2 CPUs is about 20 ticks: fine over seconds, coarse per interval.

use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// The `cpu` line's counters, summed into the four shares reported.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct CpuTicks {
    /// user + nice + system + irq + softirq (guest time is inside user).
    busy: u64,
    iowait: u64,
    steal: u64,
    idle: u64,
}

impl CpuTicks {
    /// Parses `cpu  user nice system idle iowait irq softirq steal ...`.
    fn parse(line: &str) -> Option<CpuTicks> {
        let mut fields = line.strip_prefix("cpu ")?.split_whitespace();
        let mut next = || -> Option<u64> { fields.next()?.parse().ok() };
        let (user, nice, system, idle) = (next()?, next()?, next()?, next()?);
        let (iowait, irq, softirq, steal) = (next()?, next()?, next()?, next()?);
        Some(CpuTicks {
            busy: user + nice + system + irq + softirq,
            iowait,
            steal,
            idle,
        })
    }

    fn read() -> Option<CpuTicks> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        CpuTicks::parse(stat.lines().next()?)
    }

    /// `self - earlier`, saturating: a counter never runs backwards, but a
    /// guest's idle and iowait counters have been seen to on CPU hotplug.
    fn since(self, earlier: CpuTicks) -> CpuTicks {
        CpuTicks {
            busy: self.busy.saturating_sub(earlier.busy),
            iowait: self.iowait.saturating_sub(earlier.iowait),
            steal: self.steal.saturating_sub(earlier.steal),
            idle: self.idle.saturating_sub(earlier.idle),
        }
    }

    fn add(&mut self, other: CpuTicks) {
        self.busy += other.busy;
        self.iowait += other.iowait;
        self.steal += other.steal;
        self.idle += other.idle;
    }
}

/// One reading: seconds since the run's start, and the counters then.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_seconds: f64,
    ticks: CpuTicks,
}

/// Shares of the machine's CPU time over some part of the run, in percent of
/// all CPUs' time (so 50 % busy on 2 CPUs is one core's worth).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MachineCpuShares {
    /// Wall seconds these shares cover.
    pub seconds: f64,
    pub busy_percent: f64,
    pub iowait_percent: f64,
    /// Time the hypervisor ran something else while this guest had work.
    pub steal_percent: f64,
    pub idle_percent: f64,
}

impl MachineCpuShares {
    fn text(&self) -> String {
        format!(
            "busy {:.1} %, iowait {:.1} %, steal {:.1} %, idle {:.1} % ({:.0} s)",
            self.busy_percent,
            self.iowait_percent,
            self.steal_percent,
            self.idle_percent,
            self.seconds
        )
    }

    fn of(ticks: CpuTicks, seconds: f64) -> MachineCpuShares {
        let total = (ticks.busy + ticks.iowait + ticks.steal + ticks.idle).max(1) as f64;
        let percent = |part: u64| (1000.0 * part as f64 / total).round() / 10.0;
        MachineCpuShares {
            seconds: (seconds * 10.0).round() / 10.0,
            busy_percent: percent(ticks.busy),
            iowait_percent: percent(ticks.iowait),
            steal_percent: percent(ticks.steal),
            idle_percent: percent(ticks.idle),
        }
    }
}

/// The machine's CPU over the measured window, and split by swap windows
/// when the run pushed.
#[derive(Debug, Clone, Serialize)]
pub struct MachineCpu {
    pub cpus: usize,
    pub measured: MachineCpuShares,
    pub during_swaps: Option<MachineCpuShares>,
    pub outside_swaps: Option<MachineCpuShares>,
}

impl MachineCpu {
    /// `machine CPU (2 CPUs, /proc/stat): busy .. %, iowait .. %, steal ..
    /// %, idle .. % (.. s)`, then the same during and outside swaps.
    pub fn write_text(&self, text: &mut String) {
        let _ = writeln!(
            text,
            "machine CPU ({} CPUs, /proc/stat): {}",
            self.cpus,
            self.measured.text()
        );
        if let (Some(during), Some(outside)) = (&self.during_swaps, &self.outside_swaps) {
            let _ = writeln!(text, "  during swaps:  {}", during.text());
            let _ = writeln!(text, "  outside swaps: {}", outside.text());
        }
    }
}

/// Reads `/proc/stat` on a thread of its own until [`MachineCpuSampler::finish`].
pub struct MachineCpuSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

impl MachineCpuSampler {
    /// Starts sampling, with times measured from `run_start`; `None` where
    /// `/proc/stat` cannot be read (not Linux) or the thread cannot start.
    pub fn start(run_start: Instant) -> Option<MachineCpuSampler> {
        CpuTicks::read()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("loadtest-cpu".into())
            .spawn(move || {
                let mut samples = Vec::new();
                while !stopped.load(Ordering::Relaxed) {
                    if let Some(ticks) = CpuTicks::read() {
                        let at_seconds = signed_seconds_since(run_start);
                        samples.push(Sample { at_seconds, ticks });
                    }
                    std::thread::sleep(SAMPLE_INTERVAL);
                }
                samples
            })
            .ok()?;
        Some(MachineCpuSampler { stop, thread })
    }

    /// Stops sampling and splits the readings over `measured` (seconds since
    /// the run's start) by `windows` (the same clock; empty when no swaps).
    pub fn finish(self, measured: Range<f64>, windows: &[Range<f64>]) -> Option<MachineCpu> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.thread.join().ok()?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Some(split(&samples, cpus, measured, windows))
    }
}

/// Seconds from `start` to now, negative before it (sampling begins during
/// the run's lead-in).
fn signed_seconds_since(start: Instant) -> f64 {
    let now = Instant::now();
    match now.checked_duration_since(start) {
        Some(after) => after.as_secs_f64(),
        None => -(start - now).as_secs_f64(),
    }
}

fn split(
    samples: &[Sample],
    cpus: usize,
    measured: Range<f64>,
    windows: &[Range<f64>],
) -> MachineCpu {
    let mut parts = [(CpuTicks::default(), 0.0); 2]; // [outside, during]
    for pair in samples.windows(2) {
        let (earlier, later) = (pair[0], pair[1]);
        let midpoint = (earlier.at_seconds + later.at_seconds) / 2.0;
        if !measured.contains(&midpoint) {
            continue;
        }
        let during = windows.iter().any(|window| window.contains(&midpoint));
        let part = &mut parts[usize::from(during)];
        part.0.add(later.ticks.since(earlier.ticks));
        part.1 += later.at_seconds - earlier.at_seconds;
    }
    let [(outside, outside_seconds), (during, during_seconds)] = parts;
    let mut all = outside;
    all.add(during);
    let swapped = !windows.is_empty();
    MachineCpu {
        cpus,
        measured: MachineCpuShares::of(all, outside_seconds + during_seconds),
        during_swaps: swapped.then(|| MachineCpuShares::of(during, during_seconds)),
        outside_swaps: swapped.then(|| MachineCpuShares::of(outside, outside_seconds)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_seconds: f64, busy: u64, steal: u64, idle: u64) -> Sample {
        let ticks = CpuTicks {
            busy,
            iowait: 0,
            steal,
            idle,
        };
        Sample { at_seconds, ticks }
    }

    #[test]
    fn parses_the_aggregate_cpu_line() {
        let line = "cpu  127129 4161 37188 217620 7994 0 4677 7992 0 0";
        let ticks = CpuTicks::parse(line).unwrap();
        assert_eq!(
            ticks,
            CpuTicks {
                busy: 127129 + 4161 + 37188 + 4677,
                iowait: 7994,
                steal: 7992,
                idle: 217620,
            }
        );
        assert_eq!(CpuTicks::parse("cpu0 1 2 3 4 5 6 7 8 0 0"), None);
        assert_eq!(CpuTicks::parse("cpu  1 2 3"), None);
    }

    #[test]
    fn intervals_count_where_their_midpoint_falls() {
        // 0-1 s: all idle; 1-2 s (a swap window): all busy but a quarter
        // stolen; 2-3 s: idle again; 3-4 s lies past the measured window.
        let samples = [
            sample(0.0, 0, 0, 0),
            sample(1.0, 0, 0, 200),
            sample(2.0, 150, 50, 200),
            sample(3.0, 150, 50, 400),
            sample(4.0, 350, 50, 400),
        ];
        let cpu = split(&samples, 2, 0.0..3.0, &[1.0..2.0]);
        let during = cpu.during_swaps.as_ref().unwrap();
        assert_eq!((during.busy_percent, during.steal_percent), (75.0, 25.0));
        assert_eq!(during.seconds, 1.0);
        let outside = cpu.outside_swaps.as_ref().unwrap();
        assert_eq!((outside.idle_percent, outside.seconds), (100.0, 2.0));
        assert_eq!(cpu.measured.busy_percent, 25.0);
        assert_eq!(cpu.measured.seconds, 3.0);
        let mut text = String::new();
        cpu.write_text(&mut text);
        assert_eq!(
            text,
            "machine CPU (2 CPUs, /proc/stat): busy 25.0 %, iowait 0.0 %, steal 8.3 %, idle 66.7 % (3 s)\n  \
             during swaps:  busy 75.0 %, iowait 0.0 %, steal 25.0 %, idle 0.0 % (1 s)\n  \
             outside swaps: busy 0.0 %, iowait 0.0 %, steal 0.0 %, idle 100.0 % (2 s)\n"
        );
    }

    #[test]
    fn without_swaps_only_the_measured_window_is_reported() {
        let samples = [sample(0.0, 0, 0, 0), sample(1.0, 100, 0, 100)];
        let cpu = split(&samples, 2, 0.0..1.0, &[]);
        assert_eq!(cpu.measured.busy_percent, 50.0);
        assert!(cpu.during_swaps.is_none() && cpu.outside_swaps.is_none());
    }

    #[test]
    fn the_sampler_reads_this_machine() {
        let start = Instant::now();
        let Some(sampler) = MachineCpuSampler::start(start) else {
            return; // no /proc/stat: not Linux
        };
        std::thread::sleep(Duration::from_millis(350));
        let cpu = sampler.finish(0.0..10.0, &[]).unwrap();
        let shares = &cpu.measured;
        let sum = shares.busy_percent
            + shares.iowait_percent
            + shares.steal_percent
            + shares.idle_percent;
        assert!(shares.seconds > 0.1, "{shares:?}");
        assert!((sum - 100.0).abs() < 0.5, "shares sum to {sum}: {shares:?}");
    }
}
