//! `segctl`: build, inspect and push packs; query and operate a running segd.

/// `println!` that returns an error instead of panicking when stdout is
/// closed (`segctl status | head`); `main` then exits quietly.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
}

mod candidate_syntax;
mod client;
mod fleet_status;
mod pack_commands;
mod realtime_commands;
mod routing;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Build, inspect and push segd packs; query and operate a running server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    tls: client::TlsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a pack file from membership TSV (user_id<TAB>segment_id[<TAB>last_seen_unix]).
    Build(pack_commands::BuildArgs),
    /// Print a pack file's header, counts and segment table (verifies the whole file).
    Inspect {
        /// The pack file.
        file: PathBuf,
    },
    /// Push a pack file to a server through Admin/PushSnapshot.
    Push {
        #[command(flatten)]
        admin: AdminArgs,
        /// Serve this version even if it sorts before the one served (a deliberate downgrade).
        #[arg(long)]
        allow_older_version: bool,
        /// The pack file.
        file: PathBuf,
    },
    /// Which segments a user is in, recently enough (Segments/Lookup).
    Lookup(client::LookupArgs),
    /// Targeting plus frequency caps for candidate line items (Segments/Decide).
    Decide(client::DecideArgs),
    /// Register line items by id for Decide --line-item (Admin/PutLineItems).
    PutLineItems(client::PutLineItemsArgs),
    /// Record impressions toward frequency caps (Segments/RecordImpressions).
    Record(client::RecordArgs),
    /// Real-time adds and removes from TSV (user_id<TAB>segment_id<TAB>add|remove[<TAB>last_seen[<TAB>expires_at]]),
    /// in batches (Admin/UpdateMembers).
    Update(realtime_commands::UpdateArgs),
    /// Forget users: out of every segment, frequency counters gone (Admin/ForgetUsers).
    Forget(realtime_commands::ForgetArgs),
    /// Packs, versions, counts, generation and frequency-store figures (Admin/Status).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Every segment served: id, name, kind, pack, members, TTL (Admin/ListSegments).
    Segments {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Serve the previous version of a pack again (Admin/Rollback).
    Rollback {
        #[command(flatten)]
        admin: AdminArgs,
        /// The pack name.
        pack: String,
    },
    /// Stop serving a pack; a later rollback brings it back (Admin/DropPack).
    Drop {
        #[command(flatten)]
        admin: AdminArgs,
        /// The pack name.
        pack: String,
    },
    /// One table of every replica's shard, generation, health, impression-stream
    /// lag, line items and pack versions, flagging disagreement within a shard
    /// or with the fleet's intended versions, lag and lost NATS (exit 1 when any).
    FleetStatus(fleet_status::FleetStatusArgs),
    /// Exit 0 when the server reports SERVING (grpc.health.v1), 1 otherwise.
    Health {
        /// Server address (query or admin port).
        #[arg(long, env = "SEGD_ADDR", default_value = "http://127.0.0.1:7400")]
        addr: String,
        /// Seconds to wait for an answer.
        #[arg(long, default_value_t = 3)]
        timeout_seconds: u64,
    },
}

/// How to reach the admin port.
#[derive(Args, Clone)]
pub struct AdminArgs {
    /// Admin address of the server.
    #[arg(long, env = "SEGD_ADMIN_ADDR", default_value = "http://127.0.0.1:7401")]
    pub admin_addr: String,
    /// Admin bearer token.
    #[arg(long, env = "SEGD_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli) {
        if is_broken_pipe(&error) {
            // The reader went away (`| head`): nothing left to tell anyone.
            return;
        }
        eprintln!("segctl: {error:#}");
        std::process::exit(1);
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io_error| io_error.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    client::set_tls(cli.tls)?;
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Command::Build(args) => pack_commands::build(args),
        Command::Inspect { file } => pack_commands::inspect(&file),
        Command::Push {
            admin,
            allow_older_version,
            file,
        } => runtime()?.block_on(client::push(admin, allow_older_version, file)),
        Command::Lookup(args) => runtime()?.block_on(client::lookup(args)),
        Command::Decide(args) => runtime()?.block_on(client::decide(args)),
        Command::Record(args) => runtime()?.block_on(client::record(args)),
        Command::Update(args) => runtime()?.block_on(realtime_commands::update(args)),
        Command::Forget(args) => runtime()?.block_on(realtime_commands::forget(args)),
        Command::PutLineItems(args) => runtime()?.block_on(client::put_line_items(args)),
        Command::Status { admin } => runtime()?.block_on(client::status(admin)),
        Command::Segments { admin } => runtime()?.block_on(client::list_segments(admin)),
        Command::Rollback { admin, pack } => runtime()?.block_on(client::rollback(admin, pack)),
        Command::Drop { admin, pack } => runtime()?.block_on(client::drop_pack(admin, pack)),
        Command::FleetStatus(args) => runtime()?.block_on(fleet_status::fleet_status(args)),
        Command::Health {
            addr,
            timeout_seconds,
        } => {
            let serving = runtime()?.block_on(client::health(addr, timeout_seconds))?;
            if !serving {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
