//! Accepted TCP connections, bounded, so idle connections cannot exhaust the
//! process's file descriptors and shut every new client out.
//!
//! [`incoming`] is the accept loop handed to tonic's `serve_with_incoming`
//! for both gRPC ports. It
//!
//! - holds at most `--max-connections` connections (both ports together;
//!   by default derived from the open-files limit, leaving room for pack
//!   files, logs and listeners). At the bound, a new connection makes room by
//!   closing the longest-idle one, so a new client is served within moments
//!   while a flood of idle connections is held;
//! - backs off when `accept` fails for want of descriptors (`EMFILE`,
//!   `ENFILE`), closing the longest-idle connection, instead of spinning on
//!   the error; counted and logged at most every 10 s;
//! - closes connections with no request in flight for
//!   `--idle-connection-timeout-seconds`.
//!
//! "In flight" is counted by [`ConnectionActivityLayer`] from the request
//! until its response body ends, so a long push or a health `Watch` stream
//! is never idle, whatever the traffic; HTTP/2 pings do not count as activity.
//! A connection is closed by making its socket read as end-of-stream, so
//! hyper drops it cleanly. This module knows nothing of the services.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::{Request, Response};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

/// Connection flags, flattened into `segd serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionFlags {
    /// Most TCP connections held open on the query and admin ports together;
    /// 0 = derived from the open-files limit (RLIMIT_NOFILE), leaving a
    /// quarter of it (at least 64) for files. At the bound the longest-idle
    /// connection is closed to make room for a new one.
    #[arg(long, env = "SEGD_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Close a connection with no request in flight for this many seconds
    /// (0 = never). Open streams (a push, a health Watch) keep it open.
    #[arg(
        long,
        env = "SEGD_IDLE_CONNECTION_TIMEOUT_SECONDS",
        default_value_t = 300
    )]
    pub idle_connection_timeout_seconds: u64,
}

/// Descriptors kept for files when the bound is derived: this, or a quarter
/// of the limit when larger.
const RESERVED_DESCRIPTORS: u64 = 64;
/// Accept back-off after running out of descriptors: first and longest wait.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_LONGEST: Duration = Duration::from_secs(1);
/// Idle connections closed each time `accept` runs out of descriptors: a few,
/// so a backlog of new clients drains in a few back-off rounds.
const CLOSED_WHEN_OUT_OF_DESCRIPTORS: usize = 4;
/// At most one "out of descriptors" warning this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The bound implied by the open-files limit (soft), or 1,024 connections
/// when it cannot be read.
pub fn derived_max_connections() -> usize {
    let soft_limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match soft_limit {
        Some(limit) => limit
            .saturating_sub((limit / 4).max(RESERVED_DESCRIPTORS))
            .max(1) as usize,
        None => 1_024,
    }
}

/// Every live connection of both ports, and what happened to them.
#[derive(Debug)]
pub struct Connections {
    live: Mutex<HashMap<u64, Arc<ConnectionState>>>,
    next_id: AtomicU64,
    max_connections: usize,
    epoch: Instant,
    counters: ConnectionCounters,
}

#[derive(Debug, Default)]
struct ConnectionCounters {
    accepted: AtomicU64,
    closed_to_make_room: AtomicU64,
    closed_idle: AtomicU64,
    refused_at_bound: AtomicU64,
    accept_out_of_descriptors: AtomicU64,
    /// Milliseconds after `epoch` of the last warning, +1 (0 = never).
    last_warning_ms: AtomicU64,
}

/// One connection as the accept loop, the layer and the reaper see it.
#[derive(Debug)]
pub struct ConnectionState {
    id: u64,
    /// The `Connections`' epoch.
    epoch: Instant,
    /// Milliseconds after the epoch the last request started or ended.
    last_active_ms: AtomicU64,
    in_flight: AtomicU32,
    closing: AtomicBool,
    /// Woken to make a pending read see the close.
    reader: Mutex<Option<Waker>>,
}

impl ConnectionState {
    fn touch(&self) {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        self.last_active_ms.store(now_ms, Ordering::Relaxed);
    }

    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        if let Some(waker) = self.reader.lock().take() {
            waker.wake();
        }
    }
}

impl Connections {
    /// Bounds from the flags; the idle reaper runs while this lives.
    pub fn new(flags: &ConnectionFlags) -> Arc<Self> {
        let max_connections = match flags.max_connections {
            0 => derived_max_connections(),
            max => max,
        };
        let idle_timeout = (flags.idle_connection_timeout_seconds > 0)
            .then(|| Duration::from_secs(flags.idle_connection_timeout_seconds));
        let connections = Arc::new(Self {
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            max_connections,
            epoch: Instant::now(),
            counters: ConnectionCounters::default(),
        });
        if let Some(idle_timeout) = idle_timeout {
            tokio::spawn(reap_idle(Arc::downgrade(&connections), idle_timeout));
        }
        tracing::info!(
            max_connections,
            idle_timeout_seconds = flags.idle_connection_timeout_seconds,
            "connections bounded"
        );
        connections
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Tracks a new connection, closing the longest-idle one when at the
    /// bound; `None` (the socket is dropped) when every one is busy.
    fn admit(self: &Arc<Self>, io: TcpStream) -> Option<TrackedStream> {
        let mut live = self.live.lock();
        if live.len() >= self.max_connections {
            if Self::close_longest_idle(&mut live).is_none() {
                self.counters
                    .refused_at_bound
                    .fetch_add(1, Ordering::Relaxed);
                return None;
            }
            self.counters
                .closed_to_make_room
                .fetch_add(1, Ordering::Relaxed);
        }
        let state = Arc::new(ConnectionState {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            epoch: self.epoch,
            last_active_ms: AtomicU64::new(self.now_ms()),
            in_flight: AtomicU32::new(0),
            closing: AtomicBool::new(false),
            reader: Mutex::new(None),
        });
        live.insert(state.id, state.clone());
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        Some(TrackedStream {
            io,
            state,
            connections: Arc::downgrade(self),
        })
    }

    /// Closes (and forgets) the connection idle the longest with nothing in
    /// flight; returns its id.
    fn close_longest_idle(live: &mut HashMap<u64, Arc<ConnectionState>>) -> Option<u64> {
        let victim = live
            .values()
            .filter(|state| state.in_flight.load(Ordering::Acquire) == 0)
            .min_by_key(|state| state.last_active_ms.load(Ordering::Relaxed))?
            .clone();
        live.remove(&victim.id);
        victim.close();
        Some(victim.id)
    }

    /// `accept` failed for want of descriptors: free one, warn now and then.
    fn out_of_descriptors(&self, error: &io::Error) {
        let failures = self
            .counters
            .accept_out_of_descriptors
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let mut live = self.live.lock();
        for _ in 0..CLOSED_WHEN_OUT_OF_DESCRIPTORS {
            if Self::close_longest_idle(&mut live).is_none() {
                break;
            }
            self.counters
                .closed_to_make_room
                .fetch_add(1, Ordering::Relaxed);
        }
        drop(live);
        let now_ms = self.now_ms();
        let last = self.counters.last_warning_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms + 1 >= last + WARN_EVERY.as_millis() as u64;
        if due
            && self
                .counters
                .last_warning_ms
                .compare_exchange(last, now_ms + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                error = %error,
                failures,
                live_connections = self.live.lock().len(),
                max_connections = self.max_connections,
                "accept failed: out of file descriptors; backing off and closing the longest-idle connection (raise the open-files limit or lower --max-connections)"
            );
        }
    }

    fn forget(&self, id: u64) {
        self.live.lock().remove(&id);
    }
}

/// Closes connections idle longer than `idle_timeout`, until the
/// `Connections` are dropped.
async fn reap_idle(connections: Weak<Connections>, idle_timeout: Duration) {
    let period = (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(period);
    loop {
        ticks.tick().await;
        let Some(connections) = connections.upgrade() else {
            return;
        };
        let deadline_ms = connections
            .now_ms()
            .saturating_sub(idle_timeout.as_millis() as u64);
        let mut live = connections.live.lock();
        let idle: Vec<u64> = live
            .values()
            .filter(|state| {
                state.in_flight.load(Ordering::Acquire) == 0
                    && state.last_active_ms.load(Ordering::Relaxed) < deadline_ms
            })
            .map(|state| state.id)
            .collect();
        for id in idle {
            if let Some(state) = live.remove(&id) {
                state.close();
                connections
                    .counters
                    .closed_idle
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The accept loop for `listener` as a stream of tracked connections, for
/// `serve_with_incoming`. It ends when the server drops the stream.
pub fn incoming(
    listener: TcpListener,
    connections: Arc<Connections>,
) -> ReceiverStream<io::Result<TrackedStream>> {
    let (accepted, stream) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut backoff = BACKOFF_FIRST;
        loop {
            let result = tokio::select! {
                () = accepted.closed() => return,
                result = listener.accept() => result,
            };
            match result {
                Ok((io, _peer)) => {
                    backoff = BACKOFF_FIRST;
                    // Nagle off: a reply larger than one segment must not wait
                    // for the client's delayed ACK (~40 ms).
                    let _ = io.set_nodelay(true);
                    let Some(tracked) = connections.admit(io) else {
                        continue;
                    };
                    if accepted.send(Ok(tracked)).await.is_err() {
                        return;
                    }
                }
                Err(error) if is_out_of_descriptors(&error) => {
                    connections.out_of_descriptors(&error);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_LONGEST);
                }
                // A peer that reset before accept: nothing to do.
                Err(error) if is_transient(&error) => {}
                Err(error) => {
                    tracing::debug!(error = %error, "accept failed");
                    tokio::time::sleep(BACKOFF_FIRST).await;
                }
            }
        }
    });
    ReceiverStream::new(stream)
}

fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// A TCP connection the [`Connections`] track.
pub struct TrackedStream {
    io: TcpStream,
    state: Arc<ConnectionState>,
    connections: Weak<Connections>,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        if let Some(connections) = self.connections.upgrade() {
            connections.forget(self.state.id);
        }
    }
}

/// What tonic puts in each request's extensions for this connection.
#[derive(Clone)]
pub struct ConnectionInfo {
    pub tcp: TcpConnectInfo,
    state: Arc<ConnectionState>,
}

impl Connected for TrackedStream {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectionInfo {
            tcp: self.io.connect_info(),
            state: self.state.clone(),
        }
    }
}

/// Counts requests in flight per connection (from the request until its
/// response body ends), which is what keeps a connection from being idle.
#[derive(Clone, Default)]
pub struct ConnectionActivityLayer;

impl<S> Layer<S> for ConnectionActivityLayer {
    type Service = ConnectionActivity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConnectionActivity { inner }
    }
}

#[derive(Clone)]
pub struct ConnectionActivity<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, RequestBody, ResponseBody> Service<Request<RequestBody>> for ConnectionActivity<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResponseBody: http_body::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    ResponseBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = Response<CountedBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let extensions = request.extensions();
        let state = extensions
            .get::<ConnectionInfo>()
            .or_else(|| {
                extensions
                    .get::<TlsConnectInfo<ConnectionInfo>>()
                    .map(TlsConnectInfo::get_ref)
            })
            .map(|info| info.state.clone());
        let in_flight = state.map(InFlight::start);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| CountedBody {
                body: Body::new(body),
                _in_flight: in_flight,
            }))
        })
    }
}

/// One request in flight on a connection; starting and ending it mark activity.
struct InFlight {
    state: Arc<ConnectionState>,
}

impl InFlight {
    fn start(state: Arc<ConnectionState>) -> Self {
        state.touch();
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        Self { state }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.touch();
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that ends the request's in-flight count when it ends.
pub struct CountedBody {
    body: Body,
    _in_flight: Option<InFlight>,
}

impl http_body::Body for CountedBody {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl crate::telemetry::Collector for Connections {
    fn encode(
        &self,
        mut encoder: crate::telemetry::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use crate::telemetry::{counter, gauge};
        let counters = &self.counters;
        let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
        gauge(
            &mut encoder,
            "segd_connections_open",
            "TCP connections open on the query and admin ports.",
            self.live.lock().len() as i64,
        )?;
        gauge(
            &mut encoder,
            "segd_connections_max",
            "The bound on open connections (--max-connections or derived from the open-files limit).",
            self.max_connections as i64,
        )?;
        counter(
            &mut encoder,
            "segd_connections_accepted",
            "TCP connections accepted.",
            load(&counters.accepted),
        )?;
        counter(
            &mut encoder,
            "segd_connections_closed_to_make_room",
            "Idle connections closed to make room at the bound or when out of descriptors.",
            load(&counters.closed_to_make_room),
        )?;
        counter(
            &mut encoder,
            "segd_connections_closed_idle",
            "Connections closed after --idle-connection-timeout-seconds with no request in flight.",
            load(&counters.closed_idle),
        )?;
        counter(
            &mut encoder,
            "segd_connections_refused_at_bound",
            "New connections dropped at the bound because every open one had a request in flight.",
            load(&counters.refused_at_bound),
        )?;
        counter(
            &mut encoder,
            "segd_accept_out_of_descriptors",
            "accept() failures for want of file descriptors (EMFILE, ENFILE); each backs off.",
            load(&counters.accept_out_of_descriptors),
        )
    }
}

// The stream's reads and writes: `connections/stream_io.rs`.
mod stream_io;

#[cfg(test)]
mod tests;
