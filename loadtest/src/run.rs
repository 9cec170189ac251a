//! `loadtest run`: the driver. Schedules requests, measures them, reports.
//!
//! **Open loop** (`--rps N`): request `i` is *intended* to start at
//! `i / N` seconds. Workers (`--concurrency` per connection) take the next slot
//! from a shared counter. A worker that is ahead of schedule sleeps until the
//! slot; a worker that takes a slot whose time has already passed — because
//! every worker was busy waiting on slow replies — measures from the intended
//! time, so a stall is charged to every request it delayed (coordinated
//! omission corrected, as in wrk2). When the worker was early, the start is the
//! moment it actually sends: tokio's timer wakes on 1 ms ticks, and that lag is
//! the generator's, not the server's.
//!
//! **Closed loop** (`--rps 0`): each worker sends as soon as its previous reply
//! arrives and records service time.
//!
//! Requests that *start* (intended start in open loop) during the warm-up are
//! not counted. Stats are kept per connection behind a std Mutex held for a few
//! hundred nanoseconds, never across an `.await`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::chart;
use crate::cli::{RunArgs, Target, Workload};
use crate::executor::{self, Executor};
use crate::machine_cpu::MachineCpuSampler;
use crate::redis_target;
use crate::report::{self, FleetLag, Report, record_micros};
use crate::swap::{SwapThread, SwapWindows};
use crate::workload::{Dataset, Generator, GeneratorConfig};

mod slowest;
mod stats;

use stats::{ConnectionStats, build_report, lock, progress};

/// After the last scheduled second, how long in-flight and backlogged requests
/// may take before the run is cut.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// When requests are due, shared by every worker.
struct Schedule {
    run_start: Instant,
    /// `run_start` on the wall clock, to lay the run against server logs.
    run_start_unix_seconds: f64,
    warmup_ns: u64,
    end_ns: u64,
    /// Open loop only: nanoseconds between intended starts.
    interval_ns: Option<f64>,
    next_slot: AtomicU64,
    hard_stop: Instant,
}

impl Schedule {
    fn new(args: &RunArgs) -> Schedule {
        let total_seconds = args.warmup + args.duration;
        // A short lead so every worker is spawned before slot 0 is due.
        let lead = Duration::from_millis(50);
        let run_start = Instant::now() + lead;
        let run_start_unix_seconds = (std::time::SystemTime::now() + lead)
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        Schedule {
            run_start,
            run_start_unix_seconds,
            warmup_ns: args.warmup * 1_000_000_000,
            end_ns: total_seconds * 1_000_000_000,
            interval_ns: (args.rps > 0).then(|| 1e9 / args.rps as f64),
            next_slot: AtomicU64::new(0),
            hard_stop: run_start + Duration::from_secs(total_seconds) + DRAIN_LIMIT,
        }
    }

    fn elapsed_ns(&self) -> u64 {
        self.run_start.elapsed().as_nanos() as u64
    }
}

fn validate(args: &RunArgs) -> Result<()> {
    if args.duration == 0 {
        bail!("--duration must be at least 1 second");
    }
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.workload == Workload::Batch && args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if matches!(args.workload, Workload::Decide | Workload::Mixed) && args.candidates == 0 {
        bail!("--candidates must be at least 1");
    }
    if matches!(args.workload, Workload::Record | Workload::Mixed) && args.record_batch == 0 {
        bail!("--record-batch must be at least 1");
    }
    if args.target == Target::Redis && args.swap_every.is_some() {
        bail!("--swap-every pushes segd packs; it does not apply to --target redis");
    }
    Ok(())
}

/// Registers the data set's line items on segd (Admin/PutLineItems), so
/// Decide can name them by id.
async fn register_line_items(args: &RunArgs, dataset: &Dataset) -> Result<()> {
    use segd::proto::PutLineItemsRequest;
    use segd::proto::admin_client::AdminClient;
    let channel = tonic::transport::Endpoint::from_shared(args.admin_addr.clone())
        .with_context(|| format!("--admin-addr {:?}", args.admin_addr))?
        .connect()
        .await
        .with_context(|| format!("connect to --admin-addr {}", args.admin_addr))?;
    let mut admin = AdminClient::new(channel);
    let mut request = tonic::Request::new(PutLineItemsRequest {
        version: format!("loadtest-{}", dataset.line_items.len()),
        line_items: dataset.line_items.clone(),
    });
    if let Some(token) = &args.token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .context("--token must be printable ASCII")?,
        );
    }
    let reply = admin
        .put_line_items(request)
        .await
        .map_err(|status| {
            anyhow::anyhow!("PutLineItems: {:?}: {}", status.code(), status.message())
        })?
        .into_inner();
    eprintln!(
        "registered {} line items (version {}{})",
        reply.line_items,
        reply.version,
        if reply.unchanged {
            ", already registered"
        } else {
            ""
        }
    );
    Ok(())
}

/// The segd query addresses, in shard order: --shard-addrs, else --addr.
fn grpc_addrs(args: &RunArgs) -> Vec<String> {
    if args.shard_addrs.is_empty() {
        vec![args.addr.clone()]
    } else {
        args.shard_addrs.clone()
    }
}

pub async fn run(args: RunArgs) -> Result<()> {
    validate(&args)?;
    let dataset = Arc::new(Dataset::load(&args)?);
    let executors = connect_executors(&args, &dataset).await?;
    let swap_plan = SwapThread::prepare(&args).await?;
    let swap_window_after_push = swap_plan
        .as_ref()
        .map(SwapThread::window_after_push_seconds);
    let swap_windows = Arc::new(SwapWindows::new());

    let total_seconds = args.warmup + args.duration;
    let cpu_at_start = report::process_cpu_seconds();
    let wall_at_start = Instant::now();
    let schedule = Arc::new(Schedule::new(&args));
    let run_start = schedule.run_start;
    let generator_config = generator_config(&args);
    if generator_config.registered_line_items {
        register_line_items(&args, &dataset).await?;
    }
    let run_nonce = run_nonce();

    let track_swaps = swap_plan.is_some().then(|| swap_windows.clone());
    let (connection_stats, mut workers) = spawn_workers(
        &args,
        executors,
        &dataset,
        &generator_config,
        run_nonce,
        &schedule,
        track_swaps,
    );
    let swap_task = swap_plan.map(|plan| {
        let run_end = run_start + Duration::from_secs(total_seconds);
        plan.start(swap_windows.clone(), run_start, run_end)
    });
    let lag_task = spawn_lag_probe(&args, run_start, run_nonce);
    let machine_cpu = MachineCpuSampler::start(run_start);
    // The server's CPU over the measured window only (not the warm-up).
    let server_cpu_at_measure_start = args.server_pid.map(|pid| {
        let measure_from = run_start + Duration::from_secs(args.warmup);
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            report::process_cpu_seconds_of(pid)
        })
    });
    let timeline = progress(&connection_stats, &schedule, args.warmup, total_seconds).await;
    let server_cpu_at_measure_end = args.server_pid.and_then(report::process_cpu_seconds_of);
    let server_cpu_at_measure_start = match server_cpu_at_measure_start {
        Some(task) => task.await.ok().flatten(),
        None => None,
    };

    drain(&mut workers, &schedule).await;
    let swaps = match swap_task {
        Some(task) => task.await?,
        None => Vec::new(),
    };

    let generator_cpu_cores = match (cpu_at_start, report::process_cpu_seconds()) {
        (Some(start), Some(end)) => {
            Some((end - start) / wall_at_start.elapsed().as_secs_f64().max(1e-9))
        }
        _ => None,
    };
    let redis_used_memory_bytes = match args.target {
        Target::Redis => Some(redis_target::used_memory_bytes(&args.redis_url).await?),
        Target::Grpc => None,
    };
    let mut report = build_report(
        &args,
        &connection_stats,
        timeline,
        swaps,
        swap_window_after_push,
        redis_used_memory_bytes,
    );
    report.generator_cpu_cores = generator_cpu_cores;
    report.run_started_at_unix_seconds = schedule.run_start_unix_seconds;
    report.machine_cpu = machine_cpu.and_then(|sampler| {
        let measured = args.warmup as f64..total_seconds as f64;
        sampler.finish(measured, &report.swap_windows())
    });
    if let (Some(start), Some(end)) = (server_cpu_at_measure_start, server_cpu_at_measure_end) {
        report.server_cpu_seconds = Some(end - start);
        report.server_cpu_us_per_request =
            Some((end - start) * 1e6 / report.requests.max(1) as f64);
    }
    if let Some(lag_task) = lag_task {
        report.fleet_lag = Some(lag_task.await.context("lag probe panicked")??);
    }
    write_outputs(&args, &report)
}

/// One executor per `--connections`.
async fn connect_executors(args: &RunArgs, dataset: &Dataset) -> Result<Vec<Executor>> {
    let ttl_by_segment = Arc::new(dataset.ttl_by_segment.clone());
    let mut executors = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        executors.push(match args.target {
            Target::Grpc => executor::connect_grpc(&grpc_addrs(args)).await?,
            Target::Redis => {
                executor::connect_redis(&args.redis_url, ttl_by_segment.clone()).await?
            }
        });
    }
    Ok(executors)
}

fn generator_config(args: &RunArgs) -> GeneratorConfig {
    GeneratorConfig {
        workload: args.workload,
        lookup_segments: args.lookup_segments,
        batch_size: args.batch_size,
        candidates: args.candidates,
        record_batch: args.record_batch,
        max_age_seconds: args.max_age_seconds,
        line_items: args.line_items,
        registered_line_items: args.registered_line_items && args.target == Target::Grpc,
    }
}

/// Keeps generated users and impression ids unique across runs against the
/// same server.
fn run_nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_nanos() as u64)
        .unwrap_or(0)
}

/// `--concurrency` workers per connection, sharing that connection's stats.
fn spawn_workers(
    args: &RunArgs,
    executors: Vec<Executor>,
    dataset: &Arc<Dataset>,
    generator_config: &GeneratorConfig,
    run_nonce: u64,
    schedule: &Arc<Schedule>,
    track_swaps: Option<Arc<SwapWindows>>,
) -> (Vec<Arc<Mutex<ConnectionStats>>>, tokio::task::JoinSet<()>) {
    let mut connection_stats = Vec::with_capacity(args.connections);
    let mut workers = tokio::task::JoinSet::new();
    for (connection_index, executor) in executors.into_iter().enumerate() {
        let stats = Arc::new(Mutex::new(ConnectionStats::new()));
        connection_stats.push(stats.clone());
        for worker_in_connection in 0..args.concurrency {
            let worker_index = connection_index * args.concurrency + worker_in_connection;
            let generator = Generator::new(
                dataset.clone(),
                generator_config.clone(),
                args.seed,
                worker_index,
                run_nonce,
            );
            workers.spawn(worker(
                executor.clone(),
                generator,
                stats.clone(),
                schedule.clone(),
                track_swaps.clone(),
            ));
        }
    }
    (connection_stats, workers)
}

/// `--observe-addr`: the cross-replica lag probe over the measured window.
fn spawn_lag_probe(
    args: &RunArgs,
    run_start: Instant,
    run_nonce: u64,
) -> Option<tokio::task::JoinHandle<Result<FleetLag>>> {
    let observe_addr = args.observe_addr.clone()?;
    let record_addr = args.addr.clone();
    let interval = Duration::from_millis(args.observe_interval_ms.max(1));
    let measure_from = run_start + Duration::from_secs(args.warmup);
    let until = run_start + Duration::from_secs(args.warmup + args.duration);
    Some(tokio::spawn(async move {
        crate::fleet_lag::probe(
            &record_addr,
            &observe_addr,
            interval,
            measure_from,
            until,
            run_nonce,
        )
        .await
    }))
}

/// Waits for the workers until the hard stop; then cuts what is still in flight.
async fn drain(workers: &mut tokio::task::JoinSet<()>, schedule: &Schedule) {
    let drained = tokio::time::timeout_at(schedule.hard_stop.into(), async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!("warning: requests still in flight {DRAIN_LIMIT:?} after the end; cut");
        workers.abort_all();
    }
}

/// The text summary on stdout, then `--json` and `--chart` if asked for.
fn write_outputs(args: &RunArgs, report: &Report) -> Result<()> {
    print!("{}", report.to_text());
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(report)?;
        std::fs::write(path, json).with_context(|| format!("writing --json {}", path.display()))?;
    }
    if let Some(path) = &args.chart {
        std::fs::write(path, chart::render(report))
            .with_context(|| format!("writing --chart {}", path.display()))?;
    }
    Ok(())
}

async fn worker(
    mut executor: Executor,
    mut generator: Generator,
    stats: Arc<Mutex<ConnectionStats>>,
    schedule: Arc<Schedule>,
    swap_windows: Option<Arc<SwapWindows>>,
) {
    loop {
        // Built before the clock starts: generating is the client's cost.
        let request = generator.next_request();
        let user_lookups = request.user_lookups();
        let (start_ns, send_ns) = match schedule.interval_ns {
            Some(interval_ns) => {
                let slot = schedule.next_slot.fetch_add(1, Ordering::Relaxed);
                let intended_ns = (slot as f64 * interval_ns) as u64;
                if intended_ns >= schedule.end_ns || Instant::now() >= schedule.hard_stop {
                    return;
                }
                let now_ns = schedule.elapsed_ns();
                if intended_ns > now_ns {
                    tokio::time::sleep_until(
                        (schedule.run_start + Duration::from_nanos(intended_ns)).into(),
                    )
                    .await;
                    let woke_ns = schedule.elapsed_ns();
                    (woke_ns, woke_ns)
                } else {
                    (intended_ns, now_ns)
                }
            }
            None => {
                let now_ns = schedule.elapsed_ns();
                if now_ns >= schedule.end_ns {
                    return;
                }
                (now_ns, now_ns)
            }
        };
        let result = executor.execute(request).await;
        let end_ns = schedule.elapsed_ns();
        let measured = start_ns >= schedule.warmup_ns;
        let during_swap = swap_windows
            .as_ref()
            .map(|windows| windows.overlaps(start_ns, end_ns));
        let latency_micros = end_ns.saturating_sub(start_ns) / 1_000;
        let service_micros = end_ns.saturating_sub(send_ns) / 1_000;

        let mut connection = lock(&stats);
        match result {
            Ok(outcome) => {
                record_micros(&mut connection.interval, latency_micros);
                if !measured {
                    continue;
                }
                connection.completed += 1;
                connection.user_lookups += user_lookups;
                record_micros(&mut connection.latency, latency_micros);
                record_micros(&mut connection.service_time, service_micros);
                connection.slowest.offer(latency_micros, start_ns);
                match during_swap {
                    Some(true) => record_micros(&mut connection.during_swaps, latency_micros),
                    Some(false) => record_micros(&mut connection.outside_swaps, latency_micros),
                    None => {}
                }
                if let Some(generation) = outcome.generation {
                    connection.generations_seen = Some(match connection.generations_seen {
                        Some((lowest, highest)) => {
                            (lowest.min(generation), highest.max(generation))
                        }
                        None => (generation, generation),
                    });
                }
            }
            Err(failure) => {
                connection.interval_errors += 1;
                if !measured {
                    continue;
                }
                connection.completed += 1;
                *connection
                    .errors_by_code
                    .entry(failure.code.clone())
                    .or_default() += 1;
                if connection.first_error.is_none() {
                    connection.first_error = Some(format!("{}: {}", failure.code, failure.message));
                }
                match during_swap {
                    Some(true) => connection.during_swaps_errors += 1,
                    Some(false) => connection.outside_swaps_errors += 1,
                    None => {}
                }
            }
        }
    }
}
