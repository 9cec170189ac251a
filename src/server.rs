//! Wires the parts into a running server. [`serve`] is what `segd serve` and
//! the integration tests call: it takes bound listeners, the flags and a
//! shutdown future, serves the query and admin ports (each with health and
//! reflection), loads the data directory off the runtime, and flips health to
//! SERVING once everything is loaded.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tracing::info;

use crate::api::admin::NoExtras;
use crate::api::auth::AdminAuth;
use crate::api::{AdminService, RequestLimits, SegmentsService};
use crate::config::ServeConfig;
use crate::proto::admin_server::AdminServer;
use crate::proto::segments_server::SegmentsServer;
use crate::store::Store;
use crate::store::catalog::Catalog;

/// The bound sockets the server answers on.
pub struct Listeners {
    pub query: TcpListener,
    pub admin: TcpListener,
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
        Ok(Self { query, admin })
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

/// Refuses configurations that would be unsafe to run.
pub fn check_config(config: &ServeConfig) -> anyhow::Result<()> {
    if !config.admin_listen.ip().is_loopback() && config.admin_token.is_none() {
        bail!(
            "--admin-listen {} is not a loopback address: set --admin-token (or SEGD_ADMIN_TOKEN) so pushes need a token",
            config.admin_listen
        );
    }
    Ok(())
}

/// Serves until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish and returns.
pub async fn serve(
    listeners: Listeners,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    check_config(&config)?;
    let store = Arc::new(Store::new());
    let catalog = Arc::new(
        Catalog::open(&config.data_dir, store.clone())
            .with_context(|| format!("open --data-dir {}", config.data_dir.display()))?,
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

    let limits = RequestLimits::from_config(&config);
    let segments = SegmentsServer::new(SegmentsService::new(store.clone(), limits));
    let query_server = Server::builder()
        .add_service(health_service.clone())
        .add_service(reflection.clone())
        .add_service(reflection_v1alpha.clone())
        .add_service(segments)
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listeners.query),
            stopped(stop_receiver.clone()),
        );

    let auth = AdminAuth::new(config.admin_token.as_deref());
    // Chunks of a pushed pack are small; the whole pack is capped by --max-push-bytes.
    let admin = InterceptedService::new(
        AdminServer::new(AdminService::new(
            catalog.clone(),
            config.max_push_bytes,
            Arc::new(NoExtras),
        ))
        .max_decoding_message_size(16 << 20),
        move |request| auth.check(request),
    );
    let admin_server = Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listeners.admin),
            stopped(stop_receiver.clone()),
        );

    let query_task = tokio::spawn(query_server);
    let admin_task = tokio::spawn(admin_server);

    let demo = config.demo;
    let load_catalog = catalog.clone();
    let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        if demo && load_catalog.is_empty()? {
            crate::demo::write_demo_pack(load_catalog.packs_dir())?;
        }
        Ok(load_catalog.load_all(crate::unix_now_seconds())?)
    })
    .await
    .context("data directory loader failed")
    .and_then(|result| result)
    .with_context(|| format!("load --data-dir {}", config.data_dir.display()));
    let generation = match loaded {
        Ok(generation) => generation,
        Err(error) => {
            // Stop the listeners already serving health before reporting.
            let _ = stop_sender.send(true);
            let _ = tokio::join!(query_task, admin_task);
            return Err(error);
        }
    };
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

    let (query_result, admin_result) = tokio::join!(query_task, admin_task);
    query_result
        .context("query server task")?
        .context("query server")?;
    admin_result
        .context("admin server task")?
        .context("admin server")?;
    info!("server stopped");
    Ok(())
}
