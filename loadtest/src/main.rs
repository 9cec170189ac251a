//! `loadtest`: the load tester of segd.
//!
//! # Layout
//!
//! - [`cli`]: the flags of every subcommand.
//! - [`r#gen`] (`gen.rs`; `gen` is reserved in edition 2024): the synthetic data
//!   set (`loadtest gen`).
//! - [`workload`]: the request generator shared by every target.
//! - [`executor`]: sends one request to the target of the run: segd over gRPC
//!   ([`grpc_target`]) or Redis ([`redis_target`]); [`outcome`] is what a
//!   request came to, shared by both.
//! - [`run`]: the open/closed-loop driver and progress line (`loadtest run`).
//! - [`swap`]: snapshot pushes during a run and their windows.
//! - [`report`]: histograms, the final report and its JSON form.
//! - [`chart`]: the SVG chart, built by hand.
//! - [`grpc_wire`]: the generator's gRPC codec: requests as pre-built bytes,
//!   replies read only as far as their shape.
//! - [`redis_target`]: the Redis baseline: `loadtest redis-load` and the Redis
//!   side of `loadtest run --target redis`.
//! - [`update`]: `loadtest update`: real-time updates and forgets through the
//!   admin port.
//! - [`sink`]: `loadtest sink`: receives `run --swap-raw-tcp` pushes, the
//!   control for what a push costs the machine without segd's push path.

#![forbid(unsafe_code)]

/// mimalloc, as `segd` uses: under glibc malloc, allocating and freeing the
/// requests and decoded responses was ~25 % of the generator's CPU (`perf
/// record` of a `decide --registered-line-items` run), CPU taken from the
/// server under test on a small box (BENCHMARKS.md, "The load generator
/// allocates with mimalloc").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod chart;
mod cli;
mod executor;
mod fleet_lag;
mod r#gen;
mod grpc_target;
mod grpc_wire;
mod machine_cpu;
mod outcome;
mod redis_target;
mod report;
mod run;
mod sink;
mod swap;
mod update;
mod workload;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    keep_the_generators_memory_still();
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Gen(args) => r#gen::run(&args),
        cli::Command::Run(args) => runtime()?.block_on(run::run(*args)),
        cli::Command::RedisLoad(args) => runtime()?.block_on(redis_target::load(&args)),
        cli::Command::Update(args) => runtime()?.block_on(update::run(args)),
        cli::Command::Sink(args) => sink::run(&args),
    }
}

/// The generator stands in for ad servers on other hosts: its own page
/// faults must not be charged to the server. The worst stall of one swap run
/// was the generator's: 14 ms in which a worker spent 4.4 ms in a
/// transparent-huge-page fault (zeroing 2 MiB of fresh heap), and another
/// was 7 ms of mimalloc giving freed memory back, with the replies they were
/// to time waiting (BENCHMARKS.md, "Tenth session"). So freed
/// memory is kept for reuse and the heap is in 4 KiB pages. Both are
/// best-effort: a refusal only leaves the defaults.
fn keep_the_generators_memory_still() {
    segd::memory::keep_freed_heap_memory();
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// A multi-threaded runtime sized to the machine: the generator must not be the
/// bottleneck, but on a 2-core box it shares the cores with the server.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
