//! Snapshot pushes during a run, and the record of when they happened.
//!
//! Every `--swap-every` seconds the next `--pack` file (rotating) is streamed to
//! `Admin/PushSnapshot` in 1 MiB chunks. Pushes set `allow_older_version` so a
//! rotation v1 → v2 → v1 is a real swap each time rather than a refusal. With
//! `--swap-raw-tcp` the same bytes go to a `loadtest sink` instead (`sink`):
//! the control that tells what segd's push path adds to a push's cost. Workers
//! ask [`SwapWindows::overlaps`] whether their request ran during a swap window,
//! so the report can compare tail latency there against the rest.
//!
//! The pushes run on a thread of their own, with a one-thread runtime and
//! their own connection. Streaming a 1 GB pack is seconds of message encoding
//! and socket writes; on the workers' runtime it would hold up the polling of
//! the very replies being timed, a stall of the generator that the report
//! would charge to the server (a real push comes from a batch host, not from
//! the ad server's process). The thread still competes for the machine's
//! cores like any other process, which is the cost the swap rows are about;
//! `--swap-nice` lowers its priority, standing in for a push from another host.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use prost::bytes::Bytes;
use segd::proto::SnapshotChunk;
use segd::proto::admin_client::AdminClient;
use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::cli::RunArgs;
use crate::report::SwapEvent;

const CHUNK_BYTES: usize = 1 << 20;
const NO_SWAP: (u64, u64) = (u64::MAX, u64::MAX);

/// The latest swap window, in nanoseconds since the run's start.
///
/// A std Mutex: held for two loads, never across an `.await`. Only the latest
/// window is kept: requests last milliseconds and swaps are seconds apart.
pub struct SwapWindows {
    /// (start, end); end is `u64::MAX` while a push is in flight.
    latest: Mutex<(u64, u64)>,
}

impl SwapWindows {
    pub fn new() -> SwapWindows {
        SwapWindows {
            latest: Mutex::new(NO_SWAP),
        }
    }

    /// Whether a request that ran from `start_ns` to `end_ns` overlapped the window.
    pub fn overlaps(&self, start_ns: u64, end_ns: u64) -> bool {
        let (window_start, window_end) = *self.latest.lock().unwrap_or_else(|e| e.into_inner());
        window_start != u64::MAX && start_ns <= window_end && end_ns >= window_start
    }

    fn begin(&self, start_ns: u64) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = (start_ns, u64::MAX);
    }

    fn finish(&self, end_ns: u64) {
        self.latest.lock().unwrap_or_else(|e| e.into_inner()).1 = end_ns;
    }
}

/// Everything a swap needs, loaded and connected before the run starts so that
/// reading files never lands inside the measurement.
struct SwapPlan {
    every: Duration,
    window_after_push: Duration,
    packs: Vec<(PathBuf, Bytes)>,
    target: PushTarget,
}

/// Where pushes go.
enum PushTarget {
    /// segd's `Admin/PushSnapshot`.
    Admin {
        admin: AdminClient<Channel>,
        authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    },
    /// A `loadtest sink` (`--swap-raw-tcp`), one connection per push.
    RawTcp(String),
}

/// What the server said of a push.
struct Pushed {
    version: String,
    generation: u64,
    unchanged: bool,
}

/// When the run starts and ends, and where to mark the windows.
struct SwapStart {
    windows: Arc<SwapWindows>,
    run_start: Instant,
    run_end: Instant,
}

/// The pushing thread, connected and waiting for [`SwapThread::start`].
pub struct SwapThread {
    window_after_push: Duration,
    start: mpsc::Sender<SwapStart>,
    events: oneshot::Receiver<Vec<SwapEvent>>,
}

impl SwapThread {
    /// Reads the packs, spawns the thread and connects it to `--admin-addr`;
    /// `None` without `--swap-every`. Dropping it unstarted stops the thread.
    pub async fn prepare(args: &RunArgs) -> Result<Option<SwapThread>> {
        let Some(plan) = SwapPlan::read(args)? else {
            return Ok(None);
        };
        let (connected_tx, connected) = oneshot::channel();
        let (start, start_rx) = mpsc::channel::<SwapStart>();
        let (events_tx, events) = oneshot::channel();
        let window_after_push = plan.window_after_push;
        let sender_nice = args.swap_nice;
        if sender_nice > 0 {
            println!("swap pushes are sent from a thread at nice {sender_nice} (--swap-nice)");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the swap thread's runtime")?;
        std::thread::Builder::new()
            .name("loadtest-swap".into())
            .spawn(move || {
                segd::background::lower_this_threads_priority(sender_nice);
                runtime.block_on(async move {
                    let plan = match plan.connect().await {
                        Ok(plan) => plan,
                        Err(error) => {
                            let _ = connected_tx.send(Err(error));
                            return;
                        }
                    };
                    let _ = connected_tx.send(Ok(()));
                    // A blocking wait is fine: nothing else runs on this thread.
                    let Ok(SwapStart {
                        windows,
                        run_start,
                        run_end,
                    }) = start_rx.recv()
                    else {
                        return;
                    };
                    let _ = events_tx.send(plan.run(&windows, run_start, run_end).await);
                })
            })
            .context("spawning the swap thread")?;
        connected
            .await
            .context("the swap thread stopped before connecting")??;
        Ok(Some(SwapThread {
            window_after_push,
            start,
            events,
        }))
    }

    pub fn window_after_push_seconds(&self) -> f64 {
        self.window_after_push.as_secs_f64()
    }

    /// Starts the pushes; the returned future yields what happened once the
    /// run has ended.
    pub fn start(
        self,
        windows: Arc<SwapWindows>,
        run_start: Instant,
        run_end: Instant,
    ) -> impl std::future::Future<Output = Result<Vec<SwapEvent>>> {
        let sent = self.start.send(SwapStart {
            windows,
            run_start,
            run_end,
        });
        async move {
            sent.map_err(|_| anyhow::anyhow!("the swap thread stopped before the run"))?;
            self.events
                .await
                .context("the swap thread stopped during the run")
        }
    }
}

/// What [`SwapPlan::read`] loaded, before its thread connects.
struct UnconnectedPlan {
    every: Duration,
    window_after_push: Duration,
    packs: Vec<(PathBuf, Bytes)>,
    admin_addr: String,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    raw_tcp: Option<String>,
}

impl UnconnectedPlan {
    async fn connect(self) -> Result<SwapPlan> {
        let target = match self.raw_tcp {
            Some(addr) => PushTarget::RawTcp(addr),
            None => PushTarget::Admin {
                admin: connect_admin(&self.admin_addr).await?,
                authorization: self.authorization,
            },
        };
        Ok(SwapPlan {
            every: self.every,
            window_after_push: self.window_after_push,
            packs: self.packs,
            target,
        })
    }
}

async fn connect_admin(admin_addr: &str) -> Result<AdminClient<Channel>> {
    let channel = Endpoint::from_shared(admin_addr.to_string())
        .with_context(|| format!("--admin-addr {admin_addr} is not a valid URL"))?
        .connect()
        .await
        .with_context(|| format!("connecting to --admin-addr {admin_addr}"))?;
    Ok(AdminClient::new(channel)
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20))
}

impl PushTarget {
    async fn push(&mut self, bytes: &Bytes) -> Result<Pushed, String> {
        match self {
            PushTarget::Admin {
                admin,
                authorization,
            } => push_snapshot(admin, authorization.as_ref(), bytes).await,
            PushTarget::RawTcp(addr) => send_raw(addr, bytes)
                .await
                .map_err(|error| format!("--swap-raw-tcp {addr}: {error:#}")),
        }
    }
}

async fn push_snapshot(
    admin: &mut AdminClient<Channel>,
    authorization: Option<&MetadataValue<tonic::metadata::Ascii>>,
    bytes: &Bytes,
) -> Result<Pushed, String> {
    // Chunks are slices of the one file buffer: a push allocates, copies and
    // frees nothing per chunk (freeing 1 MiB copies of a 1.2 GB pack held
    // this process's mmap_lock for up to 467 ms, stalling its own readers:
    // BENCHMARKS.md, "Pushed chunks as `Bytes`").
    let chunks: Vec<SnapshotChunk> = (0..bytes.len())
        .step_by(CHUNK_BYTES)
        .map(|start| SnapshotChunk {
            data: bytes.slice(start..bytes.len().min(start + CHUNK_BYTES)),
            allow_older_version: true,
        })
        .collect();
    let mut request = tonic::Request::new(tokio_stream::iter(chunks));
    if let Some(authorization) = authorization {
        request
            .metadata_mut()
            .insert("authorization", authorization.clone());
    }
    match admin.push_snapshot(request).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            Ok(Pushed {
                version: reply.version,
                generation: reply.generation,
                unchanged: reply.unchanged,
            })
        }
        Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// The bytes, then the end of the stream; the sink answers with the count it
/// wrote and synced.
async fn send_raw(addr: &str, bytes: &Bytes) -> Result<Pushed> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .context("connecting")?;
    stream.write_all(bytes).await.context("sending")?;
    stream.shutdown().await.context("ending the stream")?;
    let written = stream.read_u64_le().await.context("reading the answer")?;
    if written != bytes.len() as u64 {
        bail!("the sink wrote {written} bytes of {}", bytes.len());
    }
    Ok(Pushed {
        version: "raw".into(),
        generation: 0,
        unchanged: false,
    })
}

impl SwapPlan {
    fn read(args: &RunArgs) -> Result<Option<UnconnectedPlan>> {
        let Some(every_seconds) = args.swap_every else {
            if !args.pack.is_empty() {
                bail!("--pack is only used with --swap-every");
            }
            if args.swap_raw_tcp.is_some() {
                bail!("--swap-raw-tcp is only used with --swap-every");
            }
            return Ok(None);
        };
        if every_seconds == 0 {
            bail!("--swap-every must be at least 1 second");
        }
        if args.pack.is_empty() {
            bail!("--swap-every needs at least one --pack FILE");
        }
        if !args.swap_window.is_finite() || args.swap_window < 0.0 {
            bail!("--swap-window must be a non-negative number of seconds");
        }
        if args.pack.len() == 1 && args.swap_raw_tcp.is_none() {
            eprintln!(
                "warning: one --pack: after the first push the server already serves its version, \
                 so later pushes are no-ops; give --pack several times with different versions"
            );
        }
        let mut packs = Vec::new();
        for path in &args.pack {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading --pack {}", path.display()))?;
            packs.push((path.clone(), Bytes::from(bytes)));
        }
        let authorization = match &args.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .context("--token is not a valid header value")?,
            ),
            None => None,
        };
        Ok(Some(UnconnectedPlan {
            every: Duration::from_secs(every_seconds),
            window_after_push: Duration::from_secs_f64(args.swap_window),
            packs,
            admin_addr: args.admin_addr.clone(),
            authorization,
            raw_tcp: args.swap_raw_tcp.clone(),
        }))
    }

    /// Pushes until `run_end`, marking windows as it goes; returns what happened.
    async fn run(
        mut self,
        windows: &SwapWindows,
        run_start: Instant,
        run_end: Instant,
    ) -> Vec<SwapEvent> {
        let mut events = Vec::new();
        let mut next_push = run_start + self.every;
        let mut pack_index = 0;
        while next_push < run_end {
            let (path, bytes) = &self.packs[pack_index % self.packs.len()];
            pack_index += 1;
            tokio::time::sleep_until(next_push.into()).await;
            let started = Instant::now();
            windows.begin(nanos_since(run_start, started));
            let result = self.target.push(bytes).await;
            let finished = Instant::now();
            windows.finish(nanos_since(run_start, finished + self.window_after_push));
            let mut event = SwapEvent {
                started_at_seconds: (started - run_start).as_secs_f64(),
                finished_at_seconds: (finished - run_start).as_secs_f64(),
                pack_file: path.display().to_string(),
                version: String::new(),
                generation: 0,
                unchanged: false,
                error: None,
            };
            match result {
                Ok(pushed) => {
                    event.version = pushed.version;
                    event.generation = pushed.generation;
                    event.unchanged = pushed.unchanged;
                }
                Err(error) => event.error = Some(error),
            }
            eprintln!(
                "swap: {} version {} in {:.0} ms{}",
                event.pack_file,
                event.version,
                (finished - started).as_secs_f64() * 1e3,
                event
                    .error
                    .as_ref()
                    .map(|error| format!(" FAILED {error}"))
                    .unwrap_or_default()
            );
            events.push(event);
            next_push += self.every;
        }
        events
    }
}

fn nanos_since(start: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(start).as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn run_args(extra: &[&str]) -> RunArgs {
        let argv = ["loadtest", "run"].iter().chain(extra);
        match crate::cli::Cli::try_parse_from(argv)
            .expect("arguments parse")
            .command
        {
            crate::cli::Command::Run(args) => *args,
            other => panic!("not a run: {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unreachable_admin_port_fails_before_the_run_from_the_swap_thread() {
        let pack =
            std::env::temp_dir().join(format!("loadtest-swap-{}.segpack", std::process::id()));
        std::fs::write(&pack, b"any bytes: nothing is pushed").unwrap();
        // A port that was just free and is now closed: the connect is refused.
        let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let admin_addr = format!("http://127.0.0.1:{closed_port}");
        let args = run_args(&[
            "--swap-every",
            "1",
            "--pack",
            pack.to_str().unwrap(),
            "--admin-addr",
            &admin_addr,
        ]);
        let error = SwapThread::prepare(&args).await.err().expect("refused");
        std::fs::remove_file(&pack).unwrap();
        assert!(
            format!("{error:#}").contains(&format!("connecting to --admin-addr {admin_addr}")),
            "{error:#}"
        );
    }

    #[tokio::test]
    async fn a_raw_push_lands_whole_in_the_sinks_file() {
        let dir = std::env::temp_dir().join(format!("loadtest-raw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("upload");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let target = file.clone();
        std::thread::spawn(move || crate::sink::serve(listener, Some(&target)));
        let bytes = Bytes::from((0..3_000_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let mut push = PushTarget::RawTcp(addr);
        let pushed = push.push(&bytes).await.expect("pushed");
        assert_eq!(pushed.version, "raw");
        assert_eq!(std::fs::read(&file).unwrap(), bytes);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_raw_push_to_a_closed_port_is_a_failed_swap_naming_the_flag() {
        let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut push = PushTarget::RawTcp(format!("127.0.0.1:{closed_port}"));
        let error = push.push(&Bytes::from_static(b"x")).await.err().unwrap();
        assert!(error.starts_with("--swap-raw-tcp 127.0.0.1:"), "{error}");
    }

    #[tokio::test]
    async fn swap_raw_tcp_needs_swap_every() {
        let args = run_args(&["--swap-raw-tcp", "127.0.0.1:1"]);
        let error = SwapThread::prepare(&args).await.err().expect("refused");
        assert!(format!("{error:#}").contains("--swap-raw-tcp is only used with --swap-every"));
    }

    #[tokio::test]
    async fn no_swap_every_means_no_thread() {
        assert!(SwapThread::prepare(&run_args(&[])).await.unwrap().is_none());
    }

    #[test]
    fn no_window_before_the_first_swap() {
        let windows = SwapWindows::new();
        assert!(!windows.overlaps(0, u64::MAX - 1));
    }

    #[test]
    fn requests_overlapping_an_open_or_closed_window_count() {
        let windows = SwapWindows::new();
        windows.begin(1_000);
        assert!(!windows.overlaps(100, 999), "ended before the push started");
        assert!(windows.overlaps(900, 1_100), "straddles the start");
        assert!(windows.overlaps(5_000, 6_000), "push still in flight");
        windows.finish(2_000);
        assert!(windows.overlaps(1_500, 1_600));
        assert!(!windows.overlaps(2_001, 2_500), "after the window");
    }
}
