//! Where segd listens and who may talk to it: the three addresses, TLS, and
//! the admin token.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// Where the Prometheus endpoint listens: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl std::str::FromStr for MetricsListen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "off" | "none" | "disabled" | "" => Ok(Self(None)),
            address => address
                .parse()
                .map(|address| Self(Some(address)))
                .map_err(|error| format!("{address:?}: {error} (expected HOST:PORT or \"off\")")),
        }
    }
}

impl std::fmt::Display for MetricsListen {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(address) => write!(formatter, "{address}"),
            None => formatter.write_str("off"),
        }
    }
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Listeners, TLS and the admin token")]
pub struct NetworkSettings {
    /// Address of the query port (service segd.v1.Segments, health, reflection).
    #[arg(long, env = "SEGD_LISTEN", default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,

    /// Address of the admin port (service segd.v1.Admin, health, reflection).
    /// A non-loopback address requires an admin token.
    #[arg(long, env = "SEGD_ADMIN_LISTEN", default_value = "127.0.0.1:7401")]
    pub admin_listen: SocketAddr,

    /// Address of the Prometheus endpoint (`GET /metrics`, plain HTTP/1.1),
    /// or `off`.
    #[arg(long, env = "SEGD_METRICS_LISTEN", default_value = "127.0.0.1:9400")]
    pub metrics_listen: MetricsListen,

    /// Bearer token every admin call must carry (`authorization: Bearer TOKEN`).
    #[arg(long, env = "SEGD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Read the admin token from this file (first line, surrounding whitespace
    /// trimmed) instead of --admin-token, so it stays out of the process list.
    #[arg(long, env = "SEGD_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,

    /// TLS certificate chain (PEM) for both ports; requires --tls-key.
    #[arg(long, env = "SEGD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) for both ports; requires --tls-cert.
    #[arg(long, env = "SEGD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate (PEM): admin clients must present a certificate it signed
    /// (mutual TLS on the admin port). Requires --tls-cert.
    #[arg(long, env = "SEGD_ADMIN_CLIENT_CA", requires = "tls_cert")]
    pub admin_client_ca: Option<PathBuf>,
}

impl NetworkSettings {
    /// The admin token from --admin-token or --admin-token-file, both held to
    /// the one rule of [`checked_admin_token`].
    pub fn resolve_admin_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(path) = &self.admin_token_file {
            let text = std::fs::read_to_string(path).map_err(|error| {
                anyhow::anyhow!("read --admin-token-file {}: {error}", path.display())
            })?;
            let first_line = text.lines().next().unwrap_or("");
            let source = format!("--admin-token-file {}", path.display());
            return checked_admin_token(&source, first_line).map(Some);
        }
        self.admin_token
            .as_deref()
            .map(|token| checked_admin_token("--admin-token (SEGD_ADMIN_TOKEN)", token))
            .transpose()
    }
}

/// The one rule for an admin token, wherever it comes from: surrounding
/// whitespace is trimmed (a header value cannot keep it), and what remains
/// must be non-empty printable ASCII, the only bytes an `authorization`
/// header carries intact. A whitespace-only token would authenticate
/// `Bearer ` plus spaces, so it is refused, never taken as "no token".
pub fn checked_admin_token(source: &str, raw: &str) -> anyhow::Result<String> {
    let token = raw.trim();
    if token.is_empty() {
        anyhow::bail!("{source} is empty or only whitespace: give a real token or leave it unset");
    }
    if let Some(bad) = token.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
        anyhow::bail!(
            "{source} holds the character {bad:?}: use printable ASCII, as an authorization header needs"
        );
    }
    Ok(token.to_owned())
}
