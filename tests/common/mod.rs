//! Shared helpers for the integration tests: a real server on port 0, clients,
//! and a plain reference model of memberships.
#![allow(dead_code)]

pub mod damage;
pub mod model;
pub mod process;

use std::path::Path;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use segd::config::ServeConfig;
use segd::proto::admin_client::AdminClient;
use segd::proto::segments_client::SegmentsClient;
use segd::proto::{PushSnapshotResponse, SnapshotChunk};
use segd::server::{self, Listeners};

pub struct TestServer {
    pub query_addr: std::net::SocketAddr,
    pub admin_addr: std::net::SocketAddr,
    pub token: Option<String>,
    /// Set for servers started with TLS: how clients reach them.
    pub client_tls: Option<tonic::transport::ClientTlsConfig>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A test config over `data_dir` on ephemeral loopback ports.
pub fn config(data_dir: &Path) -> ServeConfig {
    ServeConfig::for_tests(data_dir.to_path_buf())
}

impl TestServer {
    /// Starts `serve` on port 0 and returns once health reports SERVING.
    pub async fn start(config: ServeConfig) -> TestServer {
        Self::try_start(config).await.expect("server starts")
    }

    pub async fn try_start(config: ServeConfig) -> anyhow::Result<TestServer> {
        Self::try_start_tls(config, None).await
    }

    /// Starts a TLS server; clients verify it with `client_tls`.
    pub async fn start_tls(
        config: ServeConfig,
        client_tls: tonic::transport::ClientTlsConfig,
    ) -> TestServer {
        Self::try_start_tls(config, Some(client_tls))
            .await
            .expect("server starts")
    }

    pub async fn try_start_tls(
        config: ServeConfig,
        client_tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> anyhow::Result<TestServer> {
        let listeners = Listeners::bind(&config).await?;
        let query_addr = listeners.query_addr();
        let admin_addr = listeners.admin_addr();
        let token = config.resolve_admin_token()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let mut handle = tokio::spawn(server::serve(listeners, config, async move {
            let _ = stopped.await;
        }));
        // Wait for SERVING through the health Watch stream, or for serve to fail.
        let channel = connect(query_addr, client_tls.as_ref()).await?;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let mut updates = health
            .watch(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner();
        loop {
            tokio::select! {
                update = updates.next() => {
                    let update = update.ok_or_else(|| anyhow::anyhow!("health stream ended"))??;
                    if update.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
                        break;
                    }
                }
                result = &mut handle => {
                    result??;
                    anyhow::bail!("server stopped before serving");
                }
            }
        }
        Ok(TestServer {
            query_addr,
            admin_addr,
            token,
            client_tls,
            stop: Some(stop),
            handle: Some(handle),
        })
    }

    pub async fn segments(&self) -> SegmentsClient<Channel> {
        let channel = connect(self.query_addr, self.client_tls.as_ref())
            .await
            .unwrap();
        SegmentsClient::new(channel)
    }

    /// An admin client presenting the server's token (if any).
    pub async fn admin(&self) -> AdminClient<InterceptedService<Channel, TokenInterceptor>> {
        self.admin_with_token(self.token.as_deref()).await
    }

    pub async fn admin_with_token(
        &self,
        token: Option<&str>,
    ) -> AdminClient<InterceptedService<Channel, TokenInterceptor>> {
        admin_client(&format!("http://{}", self.admin_addr), token).await
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }
}

/// A channel to `addr`, over TLS when `tls` is given.
pub async fn connect(
    addr: std::net::SocketAddr,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<Channel, tonic::transport::Error> {
    match tls {
        Some(tls) => {
            Channel::from_shared(format!("https://localhost:{}", addr.port()))
                .unwrap()
                .tls_config(tls.clone())?
                .connect()
                .await
        }
        None => {
            Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
        }
    }
}

#[derive(Clone)]
pub struct TokenInterceptor(pub Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

pub async fn admin_client(
    url: &str,
    token: Option<&str>,
) -> AdminClient<InterceptedService<Channel, TokenInterceptor>> {
    let channel = Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let header = token.map(|token| format!("Bearer {token}").parse().unwrap());
    AdminClient::with_interceptor(channel, TokenInterceptor(header))
}

/// Pushes pack bytes in 64 KiB chunks.
pub async fn push(
    admin: &mut AdminClient<InterceptedService<Channel, TokenInterceptor>>,
    pack_bytes: &[u8],
    allow_older_version: bool,
) -> Result<PushSnapshotResponse, Status> {
    let chunks: Vec<SnapshotChunk> = pack_bytes
        .chunks(64 << 10)
        .map(|data| SnapshotChunk {
            data: data.to_vec(),
            allow_older_version,
        })
        .collect();
    admin
        .push_snapshot(tokio_stream::iter(chunks))
        .await
        .map(|reply| reply.into_inner())
}
