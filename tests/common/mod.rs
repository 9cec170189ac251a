//! Shared helpers for the integration tests: a real server on port 0, clients,
//! and a plain reference model of memberships.
#![allow(dead_code)]

pub mod damage;
pub mod forge;
pub mod model;
pub mod nats;
pub mod process;
pub mod realtime;
pub mod tmpfs;

use std::path::Path;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use segd::proto::admin_client::AdminClient;
use segd::proto::segments_client::SegmentsClient;
use segd::proto::{PushSnapshotResponse, SnapshotChunk};
use segd::server::{self, Listeners};
use segd::settings::ServeConfig;

pub struct TestServer {
    pub query_addr: std::net::SocketAddr,
    pub admin_addr: std::net::SocketAddr,
    /// The Prometheus endpoint; `None` when the config turned metrics off.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub token: Option<String>,
    /// Set for servers started with TLS: how clients reach them.
    pub client_tls: Option<tonic::transport::ClientTlsConfig>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A test config over `data_dir` on ephemeral loopback ports: the flags'
/// defaults, as `segd serve` with no flags would parse them.
pub fn config(data_dir: &Path) -> ServeConfig {
    use clap::Parser;
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        config: ServeConfig,
    }
    let mut config = Wrapper::parse_from(["segd"]).config;
    config.network.listen = "127.0.0.1:0".parse().expect("loopback address");
    config.network.admin_listen = "127.0.0.1:0".parse().expect("loopback address");
    config.network.metrics_listen =
        segd::settings::MetricsListen(Some("127.0.0.1:0".parse().expect("loopback address")));
    config.data_dir = data_dir.to_path_buf();
    config.network.admin_token = None;
    config
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
        let metrics_addr = listeners.metrics_addr();
        let token = config.network.resolve_admin_token()?;
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
            metrics_addr,
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

    /// `GET /metrics` over plain TCP: the exposition text.
    pub async fn scrape_metrics(&self) -> String {
        let address = self.metrics_addr.expect("metrics are on");
        let (status, body) = http_get(address, "/metrics").await;
        assert_eq!(status, 200, "GET /metrics answered {status}: {body}");
        body
    }
}

/// A minimal HTTP/1.1 GET: (status code, body). Asks the server to close the
/// connection after the response, so the body is everything up to EOF.
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
            )
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).expect("utf-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}

/// The value of the sample `name{labels}` (labels exactly as rendered, or
/// empty for none) in exposition text.
pub fn metric_value(exposition: &str, name: &str, labels: &str) -> Option<f64> {
    let wanted = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    exposition.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series == wanted).then(|| value.parse().ok())?
    })
}

/// Every segment `user_id` is in at `at_unix_seconds`, any age.
pub async fn lookup_all(
    client: &mut SegmentsClient<Channel>,
    user_id: &str,
    at_unix_seconds: i64,
) -> segd::proto::LookupResponse {
    client
        .lookup(segd::proto::LookupRequest {
            user_id: user_id.to_owned(),
            at_unix_seconds,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
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
            data: data.to_vec().into(),
            allow_older_version,
        })
        .collect();
    admin
        .push_snapshot(tokio_stream::iter(chunks))
        .await
        .map(|reply| reply.into_inner())
}

/// One segment of [`simple_pack`]: id, kind and member user ids.
pub struct SimpleSegment<'a> {
    pub id: u32,
    pub kind: &'a str,
    pub members: &'a [&'a str],
}

/// The bytes of a small pack whose members were all last seen at `built_at`.
pub fn simple_pack(
    name: &str,
    version: &str,
    built_at_unix_seconds: i64,
    segments: &[SimpleSegment<'_>],
) -> Vec<u8> {
    let mut users: Vec<(u64, &str)> = segments
        .iter()
        .flat_map(|segment| segment.members.iter())
        .map(|user| (segd::user_fingerprint(user), *user))
        .collect();
    users.sort();
    users.dedup();
    let segments = segments
        .iter()
        .map(|segment| segd::pack::Segment {
            id: segment.id,
            name: format!("segment-{}", segment.id),
            kind: segment.kind.to_owned(),
            ttl_seconds: 0,
            members: users
                .iter()
                .enumerate()
                .filter(|(_, (_, user))| segment.members.contains(user))
                .map(|(ordinal, _)| ordinal as u32)
                .collect(),
            last_seen_hours_ago: None,
        })
        .collect();
    segd::pack::write_pack(&segd::pack::Pack {
        name: name.to_owned(),
        version: version.to_owned(),
        built_at_unix_seconds,
        user_fingerprints: users.iter().map(|(fingerprint, _)| *fingerprint).collect(),
        segments,
    })
    .expect("pack writes")
}
