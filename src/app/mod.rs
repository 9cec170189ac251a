//! The composition root. [`App::open`] builds every long-lived part from the
//! typed settings, once: the serving store with its freshness policy, the
//! catalog over the data directory, the registered line items, the metrics
//! registry each owner registers into, and health. It then hands out what
//! the server runs: the query router, the admin router and the metrics
//! route, and the background tasks, each stopped by the one shutdown token.
//!
//! What it must never do: hold domain logic or serve anything itself. The
//! loop of a running server (bind, serve, drain) is `server::serve`.

pub mod status;
pub mod transport;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tower::layer::util::{Identity, Stack};
use tracing::info;

use crate::api::auth::AdminAuth;
use crate::api::outcomes::{DecideCounters, PackChanges};
use crate::api::push::PushLimits;
use crate::api::wire::generated::segments_server::SegmentsServer;
use crate::api::{AdminService, RequestLimits, SegmentsService};
use crate::connections::{ConnectionActivityLayer, Connections};
use crate::fleet::pack_sync::PackSync;
use crate::fleet::{Fleet, FleetMetrics, FleetStart};
use crate::freq::telemetry::FreqMetrics;
use crate::freq::{FreqConfig, FreqStore, FsyncPolicy, ImpressionSink};
use crate::line_items::LineItemRegistry;
use crate::overload::{ConcurrencyShedLayer, OverloadCounters, TooLargeIsResourceExhaustedLayer};
use crate::proto::admin_server::AdminServer;
use crate::ready::Ready;
use crate::realtime::metrics::RealtimeMetrics;
use crate::realtime::{Realtime, RealtimeConfig, RealtimeWrites};
use crate::settings::{FsyncMode, ServeConfig};
use crate::store::Store;
use crate::store::catalog::Catalog;
use crate::store::telemetry::StoreMetrics;
use crate::telemetry::{Registry, RpcCounters, RpcMetricsLayer};
use crate::watch::WatchCounters;
use transport::{Port, server_builder};

/// The query port's tower stack, outermost first: the metrics layer also
/// counts what the shedder refuses.
pub type QueryLayers =
    Stack<ConcurrencyShedLayer, Stack<RpcMetricsLayer, Stack<ConnectionActivityLayer, Identity>>>;
/// The admin port's tower stack.
pub type AdminLayers = Stack<
    TooLargeIsResourceExhaustedLayer,
    Stack<RpcMetricsLayer, Stack<ConnectionActivityLayer, Identity>>,
>;

/// The counters the request path writes; registered in the registry too.
struct Counters {
    rpc: Arc<RpcCounters>,
    decisions: Arc<DecideCounters>,
    changes: Arc<PackChanges>,
    overload: Arc<OverloadCounters>,
    watch: Option<Arc<WatchCounters>>,
}

/// The real-time side, provided by [`App::load`]: the journal itself (for
/// status and shutdown), the writes the admin service makes, its figures.
#[derive(Default)]
struct RealtimeParts {
    store: Ready<Arc<Realtime>>,
    writes: Ready<Arc<dyn RealtimeWrites>>,
    metrics: Ready<RealtimeMetrics>,
}

pub struct App {
    settings: ServeConfig,
    admin_token: Option<String>,
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    line_items: Arc<LineItemRegistry>,
    /// Provided by [`App::load`]: the log is replayed with the data directory.
    freq: Ready<Arc<FreqStore>>,
    /// Provided by [`App::load`]: the real-time journal, replayed first.
    realtime: RealtimeParts,
    /// Where `RecordImpressions` sends a batch, set by [`App::load`]: the
    /// local log, or (fleet mode) the fleet's stream.
    sink: Ready<Arc<dyn ImpressionSink>>,
    /// Fleet mode only: its figures from the start, the membership once joined.
    fleet_metrics: Option<Arc<FleetMetrics>>,
    fleet: tokio::sync::Mutex<Option<Fleet>>,
    /// Fleet mode: set once joined; pushes, rollbacks, drops and line items
    /// then reach every replica of the shard.
    fleet_changes: Arc<OnceLock<Arc<PackSync>>>,
    /// The fleet's pack and line-item watcher, until the stop token.
    pack_sync_task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    /// One bound on open connections for both gRPC ports: they share the fds.
    connections: Arc<Connections>,
    counters: Counters,
    registry: Arc<Registry>,
    health: HealthReporter,
}

impl App {
    /// Checks the settings and opens everything that is cheap to open; the
    /// data directory itself is loaded by [`App::load`].
    pub fn open(settings: ServeConfig) -> anyhow::Result<App> {
        let admin_token = check_settings(&settings)?;
        let store = Arc::new(Store::with_freshness(settings.freshness.policy()));
        let data_dir = &settings.data_dir;
        let catalog = Arc::new(
            Catalog::open(data_dir, store.clone())
                .with_context(|| format!("open --data-dir {}", data_dir.display()))?
                .with_shard(settings.sharding.shard),
        );
        let line_items =
            Arc::new(LineItemRegistry::open(data_dir).with_context(|| {
                format!("load line items from --data-dir {}", data_dir.display())
            })?);
        let freq = Ready::default();
        let realtime = RealtimeParts::default();
        let counters = Counters {
            rpc: Arc::default(),
            decisions: Arc::default(),
            changes: Arc::default(),
            overload: Arc::default(),
            watch: settings.watch.watch_dir.as_ref().map(|_| Arc::default()),
        };
        let fleet_metrics = settings.fleet.enabled().then(|| {
            Arc::new(FleetMetrics::new(
                settings.fleet.resolved_replica_id(),
                settings.fleet.fleet_stream.clone(),
            ))
        });
        let mut registry = registry(&counters, &store, &freq);
        registry.register_collector(Box::new(realtime.metrics.clone()));
        if let Some(fleet_metrics) = &fleet_metrics {
            registry.register_collector(Box::new(fleet_metrics.clone()));
        }
        let connections = Connections::new(&settings.connections);
        registry.register_collector(Box::new(connections.clone()));
        let registry = Arc::new(registry);
        Ok(App {
            settings,
            admin_token,
            store,
            catalog,
            line_items,
            freq,
            realtime,
            sink: Ready::default(),
            fleet_metrics,
            fleet: tokio::sync::Mutex::new(None),
            fleet_changes: Arc::default(),
            pack_sync_task: tokio::sync::Mutex::new(None),
            connections,
            counters,
            registry,
            health: HealthReporter::new(),
        })
    }

    pub fn settings(&self) -> &ServeConfig {
        &self.settings
    }

    /// The connection bound both gRPC ports accept through.
    pub fn connections(&self) -> Arc<Connections> {
        self.connections.clone()
    }

    /// `segd.v1.Segments` with health and reflection, behind the metrics
    /// layer and the load shedder.
    pub fn query_router(&self) -> anyhow::Result<Router<QueryLayers>> {
        let segments = SegmentsServer::new(
            SegmentsService::new(
                self.store.clone(),
                self.freq.clone(),
                self.line_items.clone(),
                self.limits(),
                self.counters.decisions.clone(),
            )
            .with_shard(self.settings.sharding.shard)
            .with_impression_sink(
                self.sink.clone(),
                Duration::from_millis(self.settings.limits.request_timeout_ms.max(1)),
            ),
        )
        .max_decoding_message_size(self.settings.limits.max_request_bytes);
        let (reflection, reflection_v1alpha) = reflection()?;
        Ok(server_builder(&self.settings, Port::Query)?
            .layer(ConnectionActivityLayer)
            .layer(RpcMetricsLayer::new(self.counters.rpc.clone()))
            .layer(ConcurrencyShedLayer::new(
                self.settings.limits.max_in_flight,
                self.counters.overload.clone(),
            ))
            .add_service(self.health_service())
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(segments))
    }

    /// `segd.v1.Admin` (behind the token check) with health and reflection.
    pub fn admin_router(&self) -> anyhow::Result<Router<AdminLayers>> {
        let extras = status::ServerStatusExtras {
            counters: self.freq.clone(),
            fsync: self.settings.frequency.fsync,
            retention_days: self.settings.frequency.freq_retention_days,
            realtime: self.realtime.store.clone(),
            fleet: self.fleet_metrics.clone(),
        };
        let mut service = AdminService::new(
            self.catalog.clone(),
            self.line_items.clone(),
            self.limits(),
            PushLimits::from(&self.settings.limits),
            Arc::new(extras),
            self.counters.changes.clone(),
        )
        .with_realtime(
            self.realtime.writes.clone(),
            self.settings.realtime.max_updates_per_request,
        )
        .with_shard(self.settings.sharding.shard);
        if self.settings.fleet.enabled() {
            service = service.with_fleet_changes(self.fleet_changes.clone());
        }
        let auth = AdminAuth::new(self.admin_token.as_deref());
        // Chunks of a pushed pack are small; the whole pack is capped by --max-push-bytes.
        let max_message_bytes = self.settings.limits.admin_max_message_bytes;
        let admin = InterceptedService::new(
            AdminServer::new(service).max_decoding_message_size(max_message_bytes),
            move |request| auth.check(request),
        );
        let (reflection, reflection_v1alpha) = reflection()?;
        Ok(server_builder(&self.settings, Port::Admin)?
            .layer(ConnectionActivityLayer)
            .layer(RpcMetricsLayer::new(self.counters.rpc.clone()))
            .layer(TooLargeIsResourceExhaustedLayer::new(
                "--admin-max-message-bytes",
                max_message_bytes,
            ))
            .add_service(self.health_service())
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(admin))
    }

    /// `GET /metrics` over everything registered.
    pub fn metrics_route(&self) -> axum::Router {
        crate::telemetry::router(self.registry.clone())
    }

    /// Health before the load: NOT_SERVING, overall and for Segments.
    pub async fn report_loading(&self) {
        self.set_health(ServingStatus::NotServing).await;
    }

    /// Loads the data directory on a blocking thread: the demo pack if asked
    /// for, the real-time journal, every pack, then the frequency store's
    /// recovery. Returns the generation then served.
    pub async fn load(&self) -> anyhow::Result<u64> {
        let loader = Loader {
            demo: self.settings.demo,
            catalog: self.catalog.clone(),
            freq_config: freq_config(&self.settings),
            realtime_config: realtime_config(&self.settings),
        };
        let data_dir = self.settings.data_dir.clone();
        let (generation, freq, realtime) = tokio::task::spawn_blocking(move || loader.load())
            .await
            .context("data directory loader failed")?
            .with_context(|| format!("load --data-dir {}", data_dir.display()))?;
        realtime.set_counters(freq.clone());
        realtime.start_maintenance();
        if !self.settings.fleet.enabled() {
            self.sink
                .set(Arc::new(crate::api::record_sink::LocalLogSink(
                    freq.clone(),
                )));
        }
        self.freq.set(freq);
        self.realtime.metrics.set(RealtimeMetrics(realtime.clone()));
        // In a fleet, changes go through the stream once joined (`join_fleet`).
        if !self.settings.fleet.enabled() {
            self.realtime.writes.set(realtime.clone());
        }
        self.realtime.store.set(realtime);
        Ok(generation)
    }

    /// Health after the load: SERVING.
    pub async fn report_serving(&self, generation: u64) {
        let packs = self.store.load().packs().len();
        info!(generation, packs, "data directory loaded, serving");
        self.set_health(ServingStatus::Serving).await;
    }

    /// The background tasks of a loaded server, each until `stop`: the pack
    /// freshness watcher and the `--watch-dir` poller. Started only after the
    /// load, so a watched file never races it.
    pub fn spawn_tasks(&self, stop: &CancellationToken) -> Vec<JoinHandle<()>> {
        let mut tasks = vec![tokio::spawn(crate::freshness::watch(
            self.catalog.clone(),
            stop.clone(),
        ))];
        if let (Some(dir), Some(counters)) = (&self.settings.watch.watch_dir, &self.counters.watch)
        {
            tasks.push(crate::watch::spawn(
                dir.clone(),
                Duration::from_millis(self.settings.watch.watch_poll_ms),
                self.catalog.clone(),
                counters.clone(),
                stop.clone(),
            ));
        }
        tasks
    }

    /// In fleet mode, joins the fleet once the data directory is loaded
    /// (connect, check the stream, catch up with it, until `stop`) and
    /// records through it from then on; nothing on a single node.
    pub async fn join_fleet(&self, stop: &CancellationToken) -> anyhow::Result<()> {
        let (Some(metrics), Some(store), Some(realtime)) = (
            self.fleet_metrics.clone(),
            self.freq.get(),
            self.realtime.store.get(),
        ) else {
            return Ok(());
        };
        let settings = &self.settings;
        if settings.realtime.forget_retention_seconds() > settings.frequency.retention_seconds() {
            tracing::warn!(
                forget_retention_days = settings.realtime.forget_retention_days,
                freq_retention_days = settings.frequency.freq_retention_days,
                "the fleet stream keeps forgets for --freq-retention-days only: a replica started later learns no older forget"
            );
        }
        let start = FleetStart {
            settings: &settings.fleet,
            shard: settings.sharding.shard.index,
            retention: Duration::from_secs(settings.frequency.retention_seconds() as u64),
            store: store.clone(),
            realtime: realtime.clone(),
            request_timeout: Duration::from_millis(settings.limits.request_timeout_ms.max(1)),
            metrics,
        };
        let fleet = Fleet::start(start, stop.clone()).await.with_context(|| {
            format!(
                "join the fleet through --fleet-nats {}",
                settings.fleet.fleet_nats.join(",")
            )
        })?;
        let pack_sync = crate::fleet::pack_sync::join(
            &fleet,
            &settings.fleet,
            settings.sharding.shard,
            self.catalog.clone(),
            self.line_items.clone(),
            &self.fleet_changes,
            stop.clone(),
        )
        .await
        .context("share packs and line items with the fleet")?;
        *self.pack_sync_task.lock().await = Some(pack_sync);
        self.sink.set(fleet.sink.clone());
        self.realtime.writes.set(fleet.realtime.clone());
        *self.fleet.lock().await = Some(fleet);
        Ok(())
    }

    /// Stops applying the fleet's stream (fleet mode), fsyncs the real-time
    /// journal, then flushes and fsyncs the frequency log and writes a
    /// checkpoint (what was opened). Call once requests have drained.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        if let Some(pack_sync) = self.pack_sync_task.lock().await.take() {
            let _ = pack_sync.await;
        }
        if let Some(fleet) = self.fleet.lock().await.as_mut() {
            fleet.stop().await;
        }
        if let Some(realtime) = self.realtime.store.get().cloned() {
            tokio::task::spawn_blocking(move || realtime.shutdown())
                .await
                .context("real-time shutdown task")?
                .context("flush the real-time journal")?;
        }
        let Some(store) = self.freq.get().cloned() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || store.shutdown())
            .await
            .context("frequency shutdown task")?
            .context("flush the frequency store")?;
        info!("frequency log flushed and checkpointed");
        Ok(())
    }

    fn limits(&self) -> RequestLimits {
        RequestLimits::from_settings(&self.settings)
    }

    fn health_service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.health.clone()))
    }

    async fn set_health(&self, status: ServingStatus) {
        self.health.set_service_status("", status).await;
        self.health
            .set_service_status(
                <SegmentsServer<SegmentsService> as tonic::server::NamedService>::NAME,
                status,
            )
            .await;
    }
}

/// What the start-up load needs, moved to its blocking thread.
struct Loader {
    demo: bool,
    catalog: Arc<Catalog>,
    freq_config: FreqConfig,
    realtime_config: RealtimeConfig,
}

impl Loader {
    fn load(self) -> anyhow::Result<(u64, Arc<FreqStore>, Arc<Realtime>)> {
        if self.demo && self.catalog.is_empty()? {
            crate::demo::write_demo_pack(self.catalog.packs_dir())?;
        }
        let realtime_dir = self.realtime_config.dir.clone();
        // Before the packs (their fold horizons) and the frequency store (its
        // replay leaves forgotten users out).
        let (realtime, forgotten) = Realtime::open(
            self.realtime_config,
            self.catalog.store().clone(),
            crate::unix_now_seconds(),
        )
        .with_context(|| format!("open the real-time journal in {}", realtime_dir.display()))?;
        let generation = self.catalog.load_all(crate::unix_now_seconds())?;
        let freq_dir = self.freq_config.dir.clone();
        let (freq, report) = FreqStore::open_forgetting(self.freq_config, &forgotten)
            .with_context(|| format!("open the frequency store in {}", freq_dir.display()))?;
        info!(
            checkpoint_events = report.checkpoint_events,
            replayed_records = report.replayed_records,
            torn_tail_bytes = report.torn_tail_bytes,
            "frequency store recovered"
        );
        Ok((generation, freq, realtime))
    }
}

/// Refuses settings that would be unsafe to run; returns the admin token
/// (from --admin-token or --admin-token-file), read once.
pub fn check_settings(settings: &ServeConfig) -> anyhow::Result<Option<String>> {
    let network = &settings.network;
    let admin_token = network.resolve_admin_token()?;
    if !network.admin_listen.ip().is_loopback() && admin_token.is_none() {
        bail!(
            "--admin-listen {} is not a loopback address: set --admin-token, SEGD_ADMIN_TOKEN or --admin-token-file so pushes need a token",
            network.admin_listen
        );
    }
    if let Some(watch_dir) = &settings.watch.watch_dir {
        crate::watch::check_watch_dir(watch_dir, &settings.data_dir)?;
    }
    Ok(admin_token)
}

/// Every owner's figures, in the order a scrape lists them.
fn registry(counters: &Counters, store: &Arc<Store>, freq: &Ready<Arc<FreqStore>>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(counters.rpc.clone()));
    registry.register_collector(Box::new(counters.decisions.clone()));
    registry.register_collector(Box::new(counters.changes.clone()));
    registry.register_collector(Box::new(StoreMetrics(store.clone())));
    registry.register_collector(Box::new(FreqMetrics(freq.clone())));
    registry.register_collector(Box::new(counters.overload.clone()));
    if let Some(watch) = &counters.watch {
        registry.register_collector(Box::new(watch.clone()));
    }
    registry
}

/// Server reflection, v1 and v1alpha (grpcurl before 1.8.8 and many other
/// tools only speak v1alpha).
fn reflection() -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder()
        .build_v1()
        .context("build the reflection service")?;
    let v1alpha = builder()
        .build_v1alpha()
        .context("build the reflection service (v1alpha)")?;
    Ok((v1, v1alpha))
}

/// The frequency store's settings from the flags.
pub fn freq_config(settings: &ServeConfig) -> FreqConfig {
    let frequency = &settings.frequency;
    FreqConfig {
        dir: settings.data_dir.join("freq"),
        fsync: match frequency.fsync {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Interval => FsyncPolicy::Interval,
            FsyncMode::Never => FsyncPolicy::Never,
        },
        fsync_interval: Duration::from_millis(frequency.fsync_interval_ms.max(1)),
        retention_seconds: frequency.retention_seconds(),
        checkpoint_interval: Duration::from_secs(frequency.checkpoint_interval_seconds.max(1)),
        sweep_interval: Duration::from_secs(60),
        recover_corrupt_log: frequency.recover_corrupt_log,
        replicated: settings.fleet.enabled(),
    }
}

/// The real-time journal's settings from the flags.
pub fn realtime_config(settings: &ServeConfig) -> RealtimeConfig {
    let freq = freq_config(settings);
    RealtimeConfig {
        dir: settings.data_dir.join("realtime"),
        fsync: freq.fsync,
        fsync_interval: freq.fsync_interval,
        max_overlay_entries: settings.realtime.max_overlay_entries,
        forget_retention_seconds: settings.realtime.forget_retention_seconds(),
    }
}
