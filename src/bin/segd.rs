//! `segd`: the audience server. Parses flags, sets up logging, binds, serves.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use segd::app::App;
use segd::server::{self, Listeners};
use segd::settings::ServeConfig;

/// mimalloc instead of glibc malloc: a 50-candidate `Decide` decodes ~350
/// small strings and vectors and frees them again, and under glibc malloc
/// and free were ~30 % of the server's CPU in a profile (`perf record` on a
/// loaded server: `_int_malloc`, `_int_free`, `malloc_consolidate`), its
/// per-thread cache holding only 7 chunks per size. See BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bid-time audience server: segment membership with recency, and frequency
/// caps, over gRPC.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the packs in --data-dir on the query and admin ports.
    Serve(ServeConfig),
}

fn main() -> anyhow::Result<()> {
    segd::memory::keep_freed_heap_memory();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_env("SEGD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("segd-worker")
        .build()?;
    match cli.command {
        Command::Serve(config) => runtime.block_on(run_serve(config)),
    }
}

async fn run_serve(config: ServeConfig) -> anyhow::Result<()> {
    let app = App::open(config)?;
    let config = app.settings();
    let listeners = Listeners::bind(config).await?;
    let query_addr = listeners.query_addr();
    let metrics_addr = listeners
        .metrics_addr()
        .map_or_else(|| "off".to_owned(), |addr| addr.to_string());
    tracing::info!(
        query = %query_addr,
        admin = %listeners.admin_addr(),
        metrics = %metrics_addr,
        data_dir = %config.data_dir.display(),
        "segd listening"
    );
    // One plain line on stdout with the bound addresses (port 0 picks one),
    // for scripts and tests that start segd.
    println!(
        "segd listening: query {query_addr} admin {} metrics {metrics_addr}",
        listeners.admin_addr()
    );
    if config.demo {
        println!("{}", segd::demo::demo_queries(&query_addr.to_string()));
    }
    server::serve_app(app, listeners, shutdown_signal()).await
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("install the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutdown signal received, draining");
}
