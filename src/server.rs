//! Runs a server: [`serve`] is what `segd serve` and the integration tests
//! call. It takes bound listeners, the settings and a shutdown future, and
//! reads as the life of a server: open the app, serve the ports (health
//! NOT_SERVING), load the data directory, SERVING, wait for the shutdown,
//! drain. What is served is composed by [`App`](crate::app::App).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin_runtime::AdminRuntime;
use crate::app::App;
use crate::settings::ServeConfig;

/// The bound sockets the server answers on.
pub struct Listeners {
    pub query: TcpListener,
    pub admin: TcpListener,
    /// The Prometheus endpoint; `None` with `--metrics-listen off`.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of the flags (port 0 picks a free port).
    pub async fn bind(settings: &ServeConfig) -> anyhow::Result<Self> {
        let config = &settings.network;
        let query = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("bind --listen {}", config.listen))?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("bind --admin-listen {}", config.admin_listen))?;
        let metrics = match config.metrics_listen.0 {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("bind --metrics-listen {address}"))?,
            ),
            None => None,
        };
        Ok(Self {
            query,
            admin,
            metrics,
        })
    }

    /// The metrics address, `None` when metrics are off.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|listener| {
            listener
                .local_addr()
                .expect("bound listener has an address")
        })
    }

    pub fn query_addr(&self) -> SocketAddr {
        self.query
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound listener has an address")
    }
}

/// Serves until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish (up to --shutdown-grace-seconds), flushes the frequency
/// log and returns.
pub async fn serve(
    listeners: Listeners,
    settings: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_app(App::open(settings)?, listeners, shutdown).await
}

/// [`serve`] for an app already opened (the binary opens it before binding,
/// so bad settings fail before anything listens).
pub async fn serve_app(
    app: App,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let stop_on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop_on_signal.cancel();
    });

    app.report_loading().await;
    let ports = Ports::start(&app, listeners, &stop)?;
    let loaded = match app.load().await {
        Ok(generation) => app.join_fleet(&stop).await.map(|()| generation),
        Err(error) => Err(error),
    };
    let generation = match loaded {
        Ok(generation) => generation,
        Err(error) => {
            // Stop the listeners already serving health before reporting.
            stop.cancel();
            let _ = ports.join().await;
            app.shutdown().await?;
            return Err(error);
        }
    };
    app.report_serving(generation).await;
    let tasks = app.spawn_tasks(&stop);

    stop.cancelled().await;
    let grace = Duration::from_secs(app.settings().shutdown_grace_seconds);
    let served = ports.drain(grace).await;
    for task in tasks {
        let _ = task.await;
    }
    // In-flight requests have drained: flush the log and checkpoint even if a
    // listener failed, then report.
    app.shutdown().await?;
    served?;
    info!("server stopped");
    Ok(())
}

type ServerTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// The running ports: query, admin and (unless off) metrics.
struct Ports {
    query: ServerTask,
    admin: ServerTask,
    metrics: Option<JoinHandle<std::io::Result<()>>>,
    /// Where the admin port runs; outlives its task, dropped with the ports.
    _admin_runtime: AdminRuntime,
}

impl Ports {
    /// Serves the app's routers on the listeners until `stop` is cancelled.
    fn start(app: &App, listeners: Listeners, stop: &CancellationToken) -> anyhow::Result<Ports> {
        let stopped = |token: &CancellationToken| token.clone().cancelled_owned();
        let query = app.query_router()?.serve_with_incoming_shutdown(
            crate::connections::incoming(listeners.query, app.connections()),
            stopped(stop),
        );
        let admin_runtime = AdminRuntime::start(app.settings().limits.admin_nice)
            .context("start the admin port's runtime")?;
        let admin = {
            // The listener, its accept loop and the connections it accepts
            // belong to the admin runtime's reactor and worker.
            let _on_admin_runtime = admin_runtime.handle().enter();
            let listener = TcpListener::from_std(listeners.admin.into_std()?)?;
            let server = app.admin_router()?.serve_with_incoming_shutdown(
                crate::connections::incoming(listener, app.connections()),
                stopped(stop),
            );
            tokio::spawn(server)
        };
        let metrics = listeners.metrics.map(|listener| {
            tokio::spawn(crate::telemetry::serve(
                listener,
                app.metrics_route(),
                stopped(stop),
            ))
        });
        Ok(Ports {
            query: tokio::spawn(query),
            admin,
            metrics,
            _admin_runtime: admin_runtime,
        })
    }

    /// Waits for the ports to stop after the token was cancelled; requests
    /// still in flight after `grace` have their connections closed.
    async fn drain(self, grace: Duration) -> anyhow::Result<()> {
        let abort_query = self.query.abort_handle();
        let abort_admin = self.admin.abort_handle();
        let joined = self.join();
        tokio::pin!(joined);
        tokio::select! {
            result = &mut joined => result,
            () = tokio::time::sleep(grace) => {
                warn!(grace_seconds = grace.as_secs(), "requests still in flight after the grace period, closing their connections");
                abort_query.abort();
                abort_admin.abort();
                joined.await
            }
        }
    }

    /// Waits for every port; the first failure is the result.
    async fn join(self) -> anyhow::Result<()> {
        let (query, admin) = tokio::join!(self.query, self.admin);
        if let Some(metrics) = self.metrics {
            let _ = metrics.await;
        }
        ignore_cancelled(query)
            .context("query server task")?
            .context("query server")?;
        ignore_cancelled(admin)
            .context("admin server task")?
            .context("admin server")?;
        Ok(())
    }
}

/// A server task aborted after the grace period ended as intended.
fn ignore_cancelled(
    result: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<Result<(), tonic::transport::Error>, tokio::task::JoinError> {
    match result {
        Err(join_error) if join_error.is_cancelled() => Ok(Ok(())),
        other => other,
    }
}
