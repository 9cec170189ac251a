//! Wires the parts into a running server. [`serve`] is what `segd serve` and
//! the integration tests call: it takes bound listeners, the flags and a
//! shutdown future, serves the query and admin ports (each with health and
//! reflection), loads the data directory off the runtime, and flips health to
//! SERVING once everything is loaded.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::api::admin::StatusExtras;
use crate::api::auth::AdminAuth;
use crate::api::outcomes::{DecideCounters, PackChanges};
use crate::api::{AdminService, RequestLimits, SegmentsService};
use crate::config::{FsyncMode, ServeConfig};
use crate::connections::{self, ConnectionActivityLayer, Connections};
use crate::fleet::{Fleet, FleetMetrics, FleetStart};
use crate::freq::telemetry::FreqMetrics;
use crate::freq::{FreqConfig, FreqStore, FsyncPolicy, ImpressionSink};
use crate::line_items::LineItemRegistry;
use crate::overload::{ConcurrencyShedLayer, OverloadCounters, TooLargeIsResourceExhaustedLayer};
use crate::proto::admin_server::AdminServer;
use crate::proto::segments_server::SegmentsServer;
use crate::realtime::metrics::RealtimeMetrics;
use crate::realtime::{Realtime, RealtimeConfig, RealtimeWrites};
use crate::store::catalog::Catalog;
use crate::store::telemetry::StoreMetrics;
use crate::store::{FreshnessPolicy, Store};
use crate::telemetry::{Deferred, Registry, RpcCounters, RpcMetricsLayer};

/// The bound sockets the server answers on.
pub struct Listeners {
    pub query: TcpListener,
    pub admin: TcpListener,
    /// The Prometheus endpoint; `None` with `--metrics-listen off`.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of the flags (port 0 picks a free port).
    pub async fn bind(config: &ServeConfig) -> anyhow::Result<Self> {
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

/// Refuses configurations that would be unsafe to run; returns the admin
/// token (from --admin-token or --admin-token-file).
pub fn check_config(config: &ServeConfig) -> anyhow::Result<Option<String>> {
    let admin_token = config.resolve_admin_token()?;
    if !config.admin_listen.ip().is_loopback() && admin_token.is_none() {
        bail!(
            "--admin-listen {} is not a loopback address: set --admin-token, SEGD_ADMIN_TOKEN or --admin-token-file so pushes need a token",
            config.admin_listen
        );
    }
    if let Some(watch_dir) = &config.watch_dir {
        crate::watch::check_watch_dir(watch_dir, &config.data_dir)?;
    }
    Ok(admin_token)
}

/// TLS settings of one port from the flags, or `None` for plaintext.
fn tls_config(config: &ServeConfig, admin_port: bool) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert_path), Some(key_path)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let read = |path: &std::path::Path, flag: &str| {
        std::fs::read(path).with_context(|| format!("read {flag} {}", path.display()))
    };
    let identity = Identity::from_pem(read(cert_path, "--tls-cert")?, read(key_path, "--tls-key")?);
    let mut tls = ServerTlsConfig::new().identity(identity);
    if admin_port && let Some(ca_path) = &config.admin_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca_path, "--admin-client-ca")?));
    }
    Ok(Some(tls))
}

/// A server builder with the flags' HTTP/2, timeout and TLS settings. The
/// request timeout applies to the query port only: a push of a large pack
/// legitimately streams for minutes.
fn server_builder(config: &ServeConfig, admin_port: bool) -> anyhow::Result<Server> {
    let keepalive = (config.http2_keepalive_seconds > 0)
        .then(|| Duration::from_secs(config.http2_keepalive_seconds));
    let mut builder = Server::builder();
    if !admin_port {
        builder = builder.timeout(Duration::from_millis(config.request_timeout_ms.max(1)));
    }
    let mut builder = builder
        .max_concurrent_streams(config.max_concurrent_streams)
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = tls_config(config, admin_port)? {
        let port = if admin_port { "admin" } else { "query" };
        builder = builder
            .tls_config(tls)
            .with_context(|| format!("TLS settings of the {port} port"))?;
    }
    Ok(builder)
}

/// Serves until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish and returns.
pub async fn serve(
    listeners: Listeners,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let admin_token = check_config(&config)?;
    let store = Arc::new(Store::with_freshness(config.freshness_policy()));
    // Every owner registers its own figures; the services hold the same Arcs.
    let mut registry = Registry::default();
    let rpc_counters = Arc::new(RpcCounters::default());
    registry.register_collector(Box::new(rpc_counters.clone()));
    let decisions = Arc::new(DecideCounters::default());
    registry.register_collector(Box::new(decisions.clone()));
    let changes = Arc::new(PackChanges::default());
    registry.register_collector(Box::new(changes.clone()));
    registry.register_collector(Box::new(StoreMetrics(store.clone())));
    // One bound on open connections for both gRPC ports: they share the fds.
    let connections = Connections::new(&config.connections);
    registry.register_collector(Box::new(connections.clone()));
    let freq_metrics = Deferred::<FreqMetrics>::default();
    registry.register_collector(Box::new(freq_metrics.clone()));
    let catalog = Arc::new(
        Catalog::open(&config.data_dir, store.clone())
            .with_context(|| format!("open --data-dir {}", config.data_dir.display()))?
            .with_shard(config.sharding.shard),
    );

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health_reporter
        .set_not_serving::<SegmentsServer<SegmentsService>>()
        .await;
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .context("build the reflection service")?;
    // grpcurl before 1.8.8 and many other tools only speak v1alpha.
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .context("build the reflection service (v1alpha)")?;

    let (stop_sender, stop_receiver) = watch::channel(false);
    let stop_sender = Arc::new(stop_sender);
    let shutdown_sender = stop_sender.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_sender.send(true);
    });
    let stopped = |mut receiver: watch::Receiver<bool>| async move {
        let _ = receiver.wait_for(|stop| *stop).await;
    };

    let counters: Arc<OnceLock<Arc<FreqStore>>> = Arc::new(OnceLock::new());
    let impression_sink: Arc<OnceLock<Arc<dyn ImpressionSink>>> = Arc::new(OnceLock::new());
    let fleet_metrics = config.fleet.enabled().then(|| {
        Arc::new(FleetMetrics::new(
            config.fleet.resolved_replica_id(),
            config.fleet.fleet_stream.clone(),
        ))
    });
    if let Some(fleet_metrics) = &fleet_metrics {
        registry.register_collector(Box::new(fleet_metrics.clone()));
    }
    // Fleet mode: set once joined; admin changes then reach every replica.
    let fleet_changes: Arc<OnceLock<Arc<crate::fleet::pack_sync::PackSync>>> =
        Arc::new(OnceLock::new());
    let line_items = Arc::new(LineItemRegistry::open(&config.data_dir).with_context(|| {
        format!(
            "load line items from --data-dir {}",
            config.data_dir.display()
        )
    })?);
    let limits = RequestLimits::from_config(&config);
    // Set once the real-time journal is replayed (with the data directory).
    let realtime: Arc<OnceLock<Arc<Realtime>>> = Arc::new(OnceLock::new());
    let realtime_writes: Arc<OnceLock<Arc<dyn RealtimeWrites>>> = Arc::new(OnceLock::new());
    let realtime_metrics = Deferred::<RealtimeMetrics>::default();
    registry.register_collector(Box::new(realtime_metrics.clone()));
    let segments = SegmentsServer::new(
        SegmentsService::new(
            store.clone(),
            counters.clone(),
            line_items.clone(),
            limits.clone(),
            decisions,
        )
        .with_shard(config.sharding.shard)
        .with_impression_sink(
            impression_sink.clone(),
            Duration::from_millis(config.request_timeout_ms.max(1)),
        ),
    )
    .max_decoding_message_size(config.max_request_bytes);
    let overload_counters = Arc::new(OverloadCounters::default());
    registry.register_collector(Box::new(overload_counters.clone()));
    // Outermost first: the metrics layer also counts what the shedder refuses.
    let query_server = server_builder(&config, false)?
        .layer(ConnectionActivityLayer)
        .layer(RpcMetricsLayer::new(rpc_counters.clone()))
        .layer(ConcurrencyShedLayer::new(
            config.max_in_flight,
            overload_counters.clone(),
        ))
        .add_service(health_service.clone())
        .add_service(reflection.clone())
        .add_service(reflection_v1alpha.clone())
        .add_service(segments)
        .serve_with_incoming_shutdown(
            connections::incoming(listeners.query, connections.clone()),
            stopped(stop_receiver.clone()),
        );

    let auth = AdminAuth::new(admin_token.as_deref());
    // Chunks of a pushed pack are small; the whole pack is capped by --max-push-bytes.
    let mut admin_service = AdminService::new(
        catalog.clone(),
        line_items.clone(),
        limits,
        config.max_push_bytes,
        Arc::new(ServerStatusExtras {
            counters: counters.clone(),
            fsync: config.fsync,
            retention_days: config.freq_retention_days,
            freshness: config.freshness_policy(),
            realtime: realtime.clone(),
            fleet: fleet_metrics.clone(),
        }),
        changes,
    )
    .with_realtime(
        realtime_writes.clone(),
        config.realtime.max_updates_per_request,
    )
    .with_shard(config.sharding.shard);
    if config.fleet.enabled() {
        admin_service = admin_service.with_fleet_changes(fleet_changes.clone());
    }
    let admin = InterceptedService::new(
        AdminServer::new(admin_service).max_decoding_message_size(config.admin_max_message_bytes),
        move |request| auth.check(request),
    );
    let admin_server = server_builder(&config, true)?
        .layer(ConnectionActivityLayer)
        .layer(RpcMetricsLayer::new(rpc_counters.clone()))
        .layer(TooLargeIsResourceExhaustedLayer::new(
            "--admin-max-message-bytes",
            config.admin_max_message_bytes,
        ))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            connections::incoming(listeners.admin, connections),
            stopped(stop_receiver.clone()),
        );

    let query_task = tokio::spawn(query_server);
    let admin_task = tokio::spawn(admin_server);
    let watch_counters = config
        .watch_dir
        .as_ref()
        .map(|_| Arc::new(crate::watch::WatchCounters::default()));
    if let Some(watch_counters) = &watch_counters {
        registry.register_collector(Box::new(watch_counters.clone()));
    }
    let registry = Arc::new(registry);
    let metrics_task = listeners.metrics.map(|listener| {
        tokio::spawn(crate::telemetry::serve(
            listener,
            crate::telemetry::router(registry.clone()),
            stopped(stop_receiver.clone()),
        ))
    });

    let demo = config.demo;
    let load_catalog = catalog.clone();
    let freq_config = freq_config(&config);
    let load_counters = counters.clone();
    let load_sink = impression_sink.clone();
    let fleet_mode = config.fleet.enabled();
    let realtime_config = realtime_config(&config);
    let load_realtime = realtime.clone();
    let load_freq_metrics = freq_metrics.clone();
    let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        if demo && load_catalog.is_empty()? {
            crate::demo::write_demo_pack(load_catalog.packs_dir())?;
        }
        let realtime_dir = realtime_config.dir.clone();
        // Before the packs (their fold horizons) and the frequency store (its
        // replay leaves forgotten users out).
        let (realtime, forgotten) = Realtime::open(
            realtime_config,
            load_catalog.store().clone(),
            crate::unix_now_seconds(),
        )
        .with_context(|| format!("open the real-time journal in {}", realtime_dir.display()))?;
        let _ = load_realtime.set(realtime);
        let generation = load_catalog.load_all(crate::unix_now_seconds())?;
        let freq_dir = freq_config.dir.clone();
        let (store, report) = FreqStore::open_forgetting(freq_config, &forgotten)
            .with_context(|| format!("open the frequency store in {}", freq_dir.display()))?;
        info!(
            checkpoint_events = report.checkpoint_events,
            replayed_records = report.replayed_records,
            torn_tail_bytes = report.torn_tail_bytes,
            "frequency store recovered"
        );
        if !fleet_mode {
            let _ = load_sink.set(Arc::new(crate::api::record_sink::LocalLogSink(
                store.clone(),
            )));
        }
        load_freq_metrics.set(FreqMetrics(store.clone()));
        let _ = load_counters.set(store);
        Ok(generation)
    })
    .await
    .context("data directory loader failed")
    .and_then(|result| result)
    .with_context(|| format!("load --data-dir {}", config.data_dir.display()));
    let loaded = match loaded {
        Ok(generation) => join_fleet(
            &config,
            &counters,
            &impression_sink,
            fleet_metrics,
            &stop_receiver,
        )
        .await
        .map(|fleet| (generation, fleet)),
        Err(error) => Err(error),
    };
    let (generation, mut fleet) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            // Stop the listeners already serving health before reporting.
            let _ = stop_sender.send(true);
            let _ = tokio::join!(query_task, admin_task);
            if let Some(metrics_task) = metrics_task {
                let _ = metrics_task.await;
            }
            shutdown_realtime(&realtime).await?;
            shutdown_counters(&counters).await?;
            return Err(error);
        }
    };
    let pack_sync_task = match &fleet {
        Some(joined) => Some(
            crate::fleet::pack_sync::join(
                joined,
                &config.fleet,
                config.sharding.shard,
                catalog.clone(),
                line_items.clone(),
                &fleet_changes,
                stop_receiver.clone(),
            )
            .await
            .context("share packs and line items with the fleet")?,
        ),
        None => None,
    };
    if let (Some(realtime), Some(counters)) = (realtime.get(), counters.get()) {
        realtime.set_counters(counters.clone());
        realtime.start_maintenance();
        realtime_metrics.set(RealtimeMetrics(realtime.clone()));
        let _ = realtime_writes.set(realtime.clone());
    }
    let state = store.load_full();
    info!(
        generation,
        packs = state.packs().len(),
        "data directory loaded, serving"
    );
    drop(state);
    health_reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    health_reporter
        .set_serving::<SegmentsServer<SegmentsService>>()
        .await;
    let freshness_task = tokio::spawn(crate::freshness::watch(
        catalog.clone(),
        stopped(stop_receiver.clone()),
    ));

    // Started only now, so a watched file never races the start-up load.
    let watcher =
        config
            .watch_dir
            .clone()
            .zip(watch_counters)
            .map(|(watch_dir, watch_counters)| {
                crate::watch::spawn(
                    watch_dir,
                    Duration::from_millis(config.watch_poll_ms),
                    catalog.clone(),
                    watch_counters,
                    stop_receiver.clone(),
                )
            });

    let abort_query = query_task.abort_handle();
    let abort_admin = admin_task.abort_handle();
    let servers = async { tokio::join!(query_task, admin_task) };
    tokio::pin!(servers);
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let mut stop_watch = stop_receiver.clone();
    let drain_deadline = async move {
        let _ = stop_watch.wait_for(|stop| *stop).await;
        tokio::time::sleep(grace).await;
    };
    let (query_result, admin_result) = tokio::select! {
        results = &mut servers => results,
        () = drain_deadline => {
            warn!(grace_seconds = grace.as_secs(), "requests still in flight after the grace period, closing their connections");
            abort_query.abort();
            abort_admin.abort();
            servers.await
        }
    };
    let query_result = ignore_cancelled(query_result);
    let admin_result = ignore_cancelled(admin_result);
    let _ = freshness_task.await;
    if let Some(watcher) = watcher {
        let _ = watcher.await;
    }
    if let Some(metrics_task) = metrics_task {
        let _ = metrics_task.await;
    }
    // In-flight requests have drained: stop applying the fleet's stream, then
    // flush the logs and checkpoint even if a listener failed, then report.
    if let Some(pack_sync_task) = pack_sync_task {
        let _ = pack_sync_task.await;
    }
    if let Some(fleet) = fleet.as_mut() {
        fleet.stop().await;
    }
    shutdown_realtime(&realtime).await?;
    shutdown_counters(&counters).await?;
    query_result
        .context("query server task")?
        .context("query server")?;
    admin_result
        .context("admin server task")?
        .context("admin server")?;
    info!("server stopped");
    Ok(())
}

/// In fleet mode, joins the fleet (connect, check the stream, catch up with it)
/// and records through it from then on; `None` on a single node.
async fn join_fleet(
    config: &ServeConfig,
    counters: &OnceLock<Arc<FreqStore>>,
    impression_sink: &OnceLock<Arc<dyn ImpressionSink>>,
    fleet_metrics: Option<Arc<FleetMetrics>>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Option<Fleet>> {
    let (Some(metrics), Some(store)) = (fleet_metrics, counters.get()) else {
        return Ok(None);
    };
    let start = FleetStart {
        settings: &config.fleet,
        shard: config.sharding.shard.index,
        retention: Duration::from_secs(config.freq_retention_seconds() as u64),
        store: store.clone(),
        metrics,
    };
    let fleet = Fleet::start(start, stop.clone()).await.with_context(|| {
        format!(
            "join the fleet through --fleet-nats {}",
            config.fleet.fleet_nats.join(",")
        )
    })?;
    let _ = impression_sink.set(fleet.sink.clone());
    Ok(Some(fleet))
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

/// Flushes and fsyncs the frequency log and writes a checkpoint.
async fn shutdown_counters(counters: &Arc<OnceLock<Arc<FreqStore>>>) -> anyhow::Result<()> {
    let Some(store) = counters.get().cloned() else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || store.shutdown())
        .await
        .context("frequency shutdown task")?
        .context("flush the frequency store")?;
    info!("frequency log flushed and checkpointed");
    Ok(())
}

/// Stops real-time maintenance and fsyncs the journal.
async fn shutdown_realtime(realtime: &Arc<OnceLock<Arc<Realtime>>>) -> anyhow::Result<()> {
    let Some(realtime) = realtime.get().cloned() else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || realtime.shutdown())
        .await
        .context("real-time shutdown task")?
        .context("flush the real-time journal")?;
    Ok(())
}

/// The real-time journal's settings from the flags.
pub fn realtime_config(config: &ServeConfig) -> RealtimeConfig {
    let freq = freq_config(config);
    RealtimeConfig {
        dir: config.data_dir.join("realtime"),
        fsync: freq.fsync,
        fsync_interval: freq.fsync_interval,
        max_overlay_entries: config.realtime.max_overlay_entries,
        forget_retention_seconds: config.realtime.forget_retention_seconds(),
    }
}

/// The frequency store's settings from the flags.
pub fn freq_config(config: &ServeConfig) -> FreqConfig {
    FreqConfig {
        dir: config.data_dir.join("freq"),
        fsync: match config.fsync {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Interval => FsyncPolicy::Interval,
            FsyncMode::Never => FsyncPolicy::Never,
        },
        fsync_interval: Duration::from_millis(config.fsync_interval_ms.max(1)),
        retention_seconds: config.freq_retention_seconds(),
        checkpoint_interval: Duration::from_secs(config.checkpoint_interval_seconds.max(1)),
        sweep_interval: Duration::from_secs(60),
        recover_corrupt_log: config.recover_corrupt_log,
        replicated: config.fleet.enabled(),
    }
}

/// The parts of Admin/Status owned by the frequency store.
struct ServerStatusExtras {
    counters: Arc<OnceLock<Arc<FreqStore>>>,
    fsync: FsyncMode,
    retention_days: u32,
    freshness: FreshnessPolicy,
    realtime: Arc<OnceLock<Arc<Realtime>>>,
    fleet: Option<Arc<FleetMetrics>>,
}

impl StatusExtras for ServerStatusExtras {
    fn frequency(&self) -> Option<crate::proto::FrequencyStatus> {
        let stats = self.counters.get()?.stats();
        Some(crate::proto::FrequencyStatus {
            entries: stats.entries,
            events: stats.events,
            log_bytes: stats.log_bytes,
            fsync_policy: format!("{:?}", self.fsync).to_lowercase(),
            retention_days: self.retention_days,
            last_checkpoint_unix_seconds: stats.last_checkpoint_unix_seconds,
        })
    }

    fn is_stale(&self, pack: &str, built_at_unix_seconds: i64, now_unix_seconds: i64) -> bool {
        self.freshness
            .is_stale(pack, built_at_unix_seconds, now_unix_seconds)
    }

    fn fleet(&self) -> Option<crate::proto::FleetStatus> {
        self.fleet.as_deref().map(crate::fleet::status_of)
    }

    fn realtime(&self) -> Option<crate::proto::RealtimeStatus> {
        let realtime = self.realtime.get()?;
        let figures = realtime.figures();
        Some(crate::proto::RealtimeStatus {
            overlay_entries: figures.overlay_entries,
            max_overlay_entries: figures.max_overlay_entries,
            forgotten_users: figures.forgotten_users,
            forgotten_users_in_packs: figures.forgotten_users_in_packs,
            journal_bytes: figures.journal_bytes,
            forget_retention_days: realtime.forget_retention_days(),
        })
    }
}
