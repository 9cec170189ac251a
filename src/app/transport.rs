//! The gRPC transport of each port from the settings: HTTP/2 limits and
//! keepalive, the request timeout, TLS.

use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::settings::ServeConfig;

/// Which port a server is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Query,
    Admin,
}

impl Port {
    fn name(self) -> &'static str {
        match self {
            Port::Query => "query",
            Port::Admin => "admin",
        }
    }
}

/// TLS settings of one port from the flags, or `None` for plaintext.
fn tls_config(settings: &ServeConfig, port: Port) -> anyhow::Result<Option<ServerTlsConfig>> {
    let network = &settings.network;
    let (Some(cert_path), Some(key_path)) = (&network.tls_cert, &network.tls_key) else {
        return Ok(None);
    };
    let read = |path: &std::path::Path, flag: &str| {
        std::fs::read(path).with_context(|| format!("read {flag} {}", path.display()))
    };
    let identity = Identity::from_pem(read(cert_path, "--tls-cert")?, read(key_path, "--tls-key")?);
    let mut tls = ServerTlsConfig::new().identity(identity);
    if port == Port::Admin
        && let Some(ca_path) = &network.admin_client_ca
    {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca_path, "--admin-client-ca")?));
    }
    Ok(Some(tls))
}

/// A server builder with the flags' HTTP/2, timeout and TLS settings. The
/// request timeout applies to the query port only: a push of a large pack
/// legitimately streams for minutes.
pub fn server_builder(settings: &ServeConfig, port: Port) -> anyhow::Result<Server> {
    let limits = &settings.limits;
    let keepalive = (limits.http2_keepalive_seconds > 0)
        .then(|| Duration::from_secs(limits.http2_keepalive_seconds));
    let mut builder = Server::builder();
    if port == Port::Query {
        builder = builder.timeout(Duration::from_millis(limits.request_timeout_ms.max(1)));
    }
    let mut builder = builder
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = tls_config(settings, port)? {
        builder = builder
            .tls_config(tls)
            .with_context(|| format!("TLS settings of the {} port", port.name()))?;
    }
    Ok(builder)
}
