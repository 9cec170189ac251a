//! The segctl commands that talk to a running server: thin gRPC clients that
//! print what came back.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use segd::proto::admin_client::AdminClient;
use segd::proto::segments_client::SegmentsClient;
use segd::proto::{
    DecideRequest, DropPackRequest, FleetPackIntent, Impression, ListSegmentsRequest,
    LookupRequest, PutLineItemsRequest, Reason, RecordImpressionsRequest, RollbackRequest,
    SnapshotChunk, StatusRequest,
};

use crate::AdminArgs;
use crate::candidate_syntax::{SYNTAX_HELP, parse_candidate};
use crate::routing::{QueryTarget, report_route};

/// Pushed pack files travel in chunks of this size.
const PUSH_CHUNK_BYTES: usize = 1 << 20;

#[derive(Args)]
pub struct LookupArgs {
    #[command(flatten)]
    target: QueryTarget,
    /// The user id.
    user_id: String,
    /// Comma-separated segment ids; all segments when omitted.
    #[arg(long, value_delimiter = ',')]
    segments: Vec<u32>,
    /// Only members seen within this many seconds count (0 = any age).
    #[arg(long, default_value_t = 0)]
    max_age_seconds: u32,
    /// Evaluate at this time instead of the server clock.
    #[arg(long, default_value_t = 0)]
    at: i64,
}

#[derive(Args)]
pub struct DecideArgs {
    #[command(flatten)]
    target: QueryTarget,
    /// The user id.
    user_id: String,
    /// A candidate line item, repeatable. Syntax:
    /// ID [all=SEG[@MAXAGE],..] [any=..] [none=..] [cap=KEY/LIMIT/day|week|month|lifetime|Ns[@UTC_OFFSET_MIN]]..
    #[arg(long = "candidate", required_unless_present = "line_items")]
    candidates: Vec<String>,
    /// A registered line item id (Admin/PutLineItems), repeatable.
    #[arg(long = "line-item")]
    line_items: Vec<String>,
    /// Evaluate at this time instead of the server clock.
    #[arg(long, default_value_t = 0)]
    at: i64,
}

#[derive(Args)]
pub struct RecordArgs {
    #[command(flatten)]
    target: QueryTarget,
    /// The user id.
    user_id: String,
    /// Comma-separated cap keys the impression counts toward (e.g. li:7,camp:9).
    #[arg(long, value_delimiter = ',', required = true)]
    keys: Vec<String>,
    /// Impression time (default: the server clock).
    #[arg(long, default_value_t = 0)]
    at: i64,
    /// Idempotency id: a retry with the same id is counted once.
    #[arg(long, default_value = "")]
    impression_id: String,
}

/// TLS options shared by every command that talks to a server.
#[derive(Args, Default)]
pub struct TlsArgs {
    /// CA certificate (PEM) to verify the server with; implies TLS (use https:// addresses).
    #[arg(long, global = true, env = "SEGD_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that require one (admin port with --admin-client-ca).
    #[arg(
        long,
        global = true,
        env = "SEGD_TLS_CLIENT_CERT",
        requires = "tls_client_key"
    )]
    tls_client_cert: Option<PathBuf>,
    /// Client private key (PEM) matching --tls-client-cert.
    #[arg(
        long,
        global = true,
        env = "SEGD_TLS_CLIENT_KEY",
        requires = "tls_client_cert"
    )]
    tls_client_key: Option<PathBuf>,
    /// Server name to verify in its certificate (default: the address's host).
    #[arg(long, global = true, env = "SEGD_TLS_DOMAIN")]
    tls_domain: Option<String>,
}

static TLS: OnceLock<Option<ClientTlsConfig>> = OnceLock::new();

/// Reads the TLS files once, before any command connects.
pub fn set_tls(args: TlsArgs) -> anyhow::Result<()> {
    let read =
        |path: &PathBuf| std::fs::read(path).with_context(|| format!("read {}", path.display()));
    let tls = match &args.tls_ca {
        None => None,
        Some(ca) => {
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let (Some(cert), Some(key)) = (&args.tls_client_cert, &args.tls_client_key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            if let Some(domain) = &args.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            Some(tls)
        }
    };
    let _ = TLS.set(tls);
    Ok(())
}

async fn connect(addr: &str) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(addr.to_owned())
        .with_context(|| format!("invalid address {addr:?}"))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(Some(tls)) = TLS.get() {
        endpoint = endpoint
            .tls_config(tls.clone())
            .with_context(|| format!("TLS settings for {addr}"))?;
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("connect to {addr}"))
}

pub(crate) fn status_error(what: &str) -> impl FnOnce(Status) -> anyhow::Error + '_ {
    move |status| anyhow::anyhow!("{what} failed: {:?}: {}", status.code(), status.message())
}

pub(crate) async fn admin_client(
    admin: &AdminArgs,
) -> anyhow::Result<
    AdminClient<
        tonic::service::interceptor::InterceptedService<
            Channel,
            impl tonic::service::Interceptor + use<>,
        >,
    >,
> {
    let channel = connect(&admin.admin_addr).await?;
    let header: Option<MetadataValue<_>> = match &admin.token {
        Some(token) => Some(
            format!("Bearer {token}")
                .parse()
                .context("the token must be printable ASCII")?,
        ),
        None => None,
    };
    Ok(
        AdminClient::with_interceptor(channel, move |mut request: Request<()>| {
            if let Some(header) = &header {
                request
                    .metadata_mut()
                    .insert("authorization", header.clone());
            }
            Ok(request)
        })
        .max_decoding_message_size(64 << 20),
    )
}

pub async fn push(
    admin: AdminArgs,
    allow_older_version: bool,
    file: PathBuf,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(&file).with_context(|| format!("read {}", file.display()))?;
    let total = bytes.len();
    let bytes = prost::bytes::Bytes::from(bytes);
    // Slices of the one buffer: no copy per chunk.
    let chunks: Vec<SnapshotChunk> = (0..total)
        .step_by(PUSH_CHUNK_BYTES)
        .map(|start| SnapshotChunk {
            data: bytes.slice(start..total.min(start + PUSH_CHUNK_BYTES)),
            allow_older_version,
        })
        .collect();
    let mut client = admin_client(&admin).await?;
    let reply = client
        .push_snapshot(tokio_stream::iter(chunks))
        .await
        .map_err(status_error("push"))?
        .into_inner();
    if reply.unchanged {
        out!(
            "pack {} version {} already served: nothing changed (generation {})",
            reply.pack,
            reply.version,
            reply.generation
        );
    } else {
        out!(
            "pushed pack {} version {} ({total} bytes): {} segments, {} users, {} memberships, generation {}",
            reply.pack,
            reply.version,
            reply.segments,
            reply.users,
            reply.memberships,
            reply.generation
        );
    }
    Ok(())
}

pub async fn lookup(args: LookupArgs) -> anyhow::Result<()> {
    let (addr, shard) = args.target.route(&args.user_id);
    report_route(&args.user_id, addr, shard);
    let mut client = SegmentsClient::new(connect(addr).await?);
    let reply = client
        .lookup(LookupRequest {
            user_id: args.user_id.clone(),
            segment_ids: args.segments,
            max_age_seconds: args.max_age_seconds,
            at_unix_seconds: args.at,
        })
        .await
        .map_err(status_error("lookup"))?
        .into_inner();
    out!("user {}: segments {:?}", args.user_id, reply.segment_ids);
    if !reply.unknown_segment_ids.is_empty() {
        out!("unknown segments: {:?}", reply.unknown_segment_ids);
    }
    out!("generation {}", reply.generation);
    Ok(())
}

pub async fn decide(args: DecideArgs) -> anyhow::Result<()> {
    let candidates = args
        .candidates
        .iter()
        .map(|text| {
            parse_candidate(text).map_err(|error| {
                anyhow::anyhow!("--candidate {text:?}: {error}\nsyntax: {SYNTAX_HELP}")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (addr, shard) = args.target.route(&args.user_id);
    report_route(&args.user_id, addr, shard);
    let mut client = SegmentsClient::new(connect(addr).await?);
    let reply = client
        .decide(DecideRequest {
            user_id: args.user_id,
            candidates,
            at_unix_seconds: args.at,
            line_item_ids: args.line_items,
        })
        .await
        .map_err(status_error("decide"))?
        .into_inner();
    for decision in &reply.decisions {
        let reason = Reason::try_from(decision.reason)
            .map(|reason| reason.as_str_name())
            .unwrap_or("UNKNOWN");
        let verdict = if decision.eligible {
            "eligible"
        } else {
            "not eligible"
        };
        if decision.detail.is_empty() {
            out!("{}: {verdict} ({reason})", decision.candidate_id);
        } else {
            out!(
                "{}: {verdict} ({reason}: {})",
                decision.candidate_id,
                decision.detail
            );
        }
    }
    out!("generation {}", reply.generation);
    Ok(())
}

#[derive(Args)]
pub struct PutLineItemsArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Version of this set; re-putting the served version changes nothing.
    #[arg(long)]
    version: String,
    /// File with one line item per line in the --candidate syntax of `segctl decide`
    /// (`#` comments and blank lines skipped). Replaces the whole registered set.
    file: PathBuf,
}

pub async fn put_line_items(args: PutLineItemsArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("read {}", args.file.display()))?;
    let mut line_items = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let candidate = parse_candidate(line)
            .map_err(|error| anyhow::anyhow!("{}:{}: {error}", args.file.display(), number + 1))?;
        line_items.push(candidate);
    }
    let mut client = admin_client(&args.admin).await?;
    let reply = client
        .put_line_items(PutLineItemsRequest {
            version: args.version,
            line_items,
        })
        .await
        .map_err(status_error("put line items"))?
        .into_inner();
    if reply.unchanged {
        out!(
            "line items version {} already registered: nothing changed",
            reply.version
        );
    } else {
        out!(
            "registered {} line items, version {}",
            reply.line_items,
            reply.version
        );
    }
    Ok(())
}

pub async fn record(args: RecordArgs) -> anyhow::Result<()> {
    let (addr, shard) = args.target.route(&args.user_id);
    report_route(&args.user_id, addr, shard);
    let mut client = SegmentsClient::new(connect(addr).await?);
    let reply = client
        .record_impressions(RecordImpressionsRequest {
            impressions: vec![Impression {
                user_id: args.user_id,
                cap_keys: args.keys,
                at_unix_seconds: args.at,
                impression_id: args.impression_id,
            }],
        })
        .await
        .map_err(status_error("record"))?
        .into_inner();
    out!(
        "recorded {}, duplicates {}",
        reply.recorded,
        reply.duplicates
    );
    Ok(())
}

pub async fn status(admin: AdminArgs) -> anyhow::Result<()> {
    let mut client = admin_client(&admin).await?;
    let reply = client
        .status(StatusRequest {})
        .await
        .map_err(status_error("status"))?
        .into_inner();
    let shard = reply.shard.map_or_else(
        || "0/1".to_owned(),
        |shard| format!("{}/{}", shard.index, shard.count),
    );
    out!(
        "segd {}  shard {shard}  generation {}  packs {}",
        reply.server_version,
        reply.generation,
        reply.packs.len()
    );
    out!(
        "{:<20} {:<20} {:>9} {:>12} {:>14} {:>12} {:>10} {:<6} PREVIOUS",
        "PACK",
        "VERSION",
        "SEGMENTS",
        "USERS",
        "MEMBERSHIPS",
        "BYTES",
        "AGE_S",
        "STALE"
    );
    for pack in &reply.packs {
        out!(
            "{:<20} {:<20} {:>9} {:>12} {:>14} {:>12} {:>10} {:<6} {}",
            pack.name,
            pack.version,
            pack.segments,
            pack.users,
            pack.memberships,
            pack.bytes,
            pack.age_seconds,
            if pack.stale { "yes" } else { "no" },
            if pack.previous_version.is_empty() {
                "-"
            } else {
                &pack.previous_version
            },
        );
    }
    if let Some(frequency) = reply.frequency {
        out!(
            "frequency: {} entries, {} events, log {} bytes, fsync {}, retention {} days",
            frequency.entries,
            frequency.events,
            frequency.log_bytes,
            frequency.fsync_policy,
            frequency.retention_days
        );
    }
    if let Some(realtime) = reply.realtime {
        out!(
            "real-time: {} of {} overlay entries, {} forgotten users ({} still in packs), journal {} bytes, forgets kept {} days",
            realtime.overlay_entries,
            realtime.max_overlay_entries,
            realtime.forgotten_users,
            realtime.forgotten_users_in_packs,
            realtime.journal_bytes,
            realtime.forget_retention_days
        );
    }
    if let Some(fleet) = reply.fleet {
        out!(
            "fleet: replica {}, stream {}, applied sequence {} of {}, {} behind, last lag {:.1} ms, {}{}",
            fleet.replica_id,
            fleet.stream,
            fleet.applied_sequence,
            fleet.stream_sequence,
            fleet.messages_behind,
            fleet.last_apply_lag_seconds * 1e3,
            if fleet.connected {
                "connected"
            } else {
                "NATS not connected"
            },
            if fleet.caught_up { "" } else { ", catching up" }
        );
        out!(
            "fleet intends: {}",
            fleet_intents(&reply.fleet_packs, &reply.fleet_line_items_version)
        );
    }
    Ok(())
}

/// The fleet's intended packs and line items, as `segctl status` prints them
/// beside what this replica serves: `crm=v3, old dropped (v1), line items 7`.
fn fleet_intents(packs: &[FleetPackIntent], line_items_version: &str) -> String {
    let mut parts: Vec<String> = packs
        .iter()
        .map(|intent| match intent.dropped {
            true => format!("{} dropped ({})", intent.pack, intent.version),
            false => format!("{}={}", intent.pack, intent.version),
        })
        .collect();
    if !line_items_version.is_empty() {
        parts.push(format!("line items {line_items_version}"));
    }
    match parts.is_empty() {
        true => "nothing yet".to_owned(),
        false => parts.join(", "),
    }
}

pub async fn list_segments(admin: AdminArgs) -> anyhow::Result<()> {
    let mut client = admin_client(&admin).await?;
    let reply = client
        .list_segments(ListSegmentsRequest {})
        .await
        .map_err(status_error("list segments"))?
        .into_inner();
    out!(
        "{:>10} {:<32} {:<12} {:<16} {:>12} {:>10}",
        "ID",
        "NAME",
        "KIND",
        "PACK",
        "MEMBERS",
        "TTL_S"
    );
    for segment in reply.segments {
        out!(
            "{:>10} {:<32} {:<12} {:<16} {:>12} {:>10}",
            segment.id,
            segment.name,
            if segment.kind.is_empty() {
                "-"
            } else {
                &segment.kind
            },
            segment.pack,
            segment.members,
            segment.ttl_seconds
        );
    }
    Ok(())
}

pub async fn rollback(admin: AdminArgs, pack: String) -> anyhow::Result<()> {
    let mut client = admin_client(&admin).await?;
    let reply = client
        .rollback(RollbackRequest { pack })
        .await
        .map_err(status_error("rollback"))?
        .into_inner();
    out!(
        "pack {} rolled back to version {}, generation {}",
        reply.pack,
        reply.version,
        reply.generation
    );
    Ok(())
}

pub async fn drop_pack(admin: AdminArgs, pack: String) -> anyhow::Result<()> {
    let mut client = admin_client(&admin).await?;
    let reply = client
        .drop_pack(DropPackRequest { pack })
        .await
        .map_err(status_error("drop"))?
        .into_inner();
    out!(
        "pack {} dropped, generation {}",
        reply.pack,
        reply.generation
    );
    Ok(())
}

/// Whether the server at `addr` reports SERVING, printing nothing.
pub async fn health_serving(addr: &str) -> anyhow::Result<bool> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut client = HealthClient::new(connect(addr).await?);
    let reply = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(status_error("health check"))?
        .into_inner();
    Ok(reply.status == ServingStatus::Serving as i32)
}

/// Whether the server's overall health status is SERVING.
pub async fn health(addr: String, timeout_seconds: u64) -> anyhow::Result<bool> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let check = async {
        let mut client = HealthClient::new(connect(&addr).await?);
        let reply = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(status_error("health check"))?
            .into_inner();
        anyhow::Ok(reply.status)
    };
    let status = tokio::time::timeout(Duration::from_secs(timeout_seconds), check)
        .await
        .with_context(|| format!("no answer from {addr} within {timeout_seconds} s"))??;
    let serving = status == ServingStatus::Serving as i32;
    let name = ServingStatus::try_from(status)
        .map(|status| status.as_str_name())
        .unwrap_or("UNKNOWN");
    out!("{addr}: {name}");
    Ok(serving)
}
