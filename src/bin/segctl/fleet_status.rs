//! `segctl fleet-status`: one table of every replica's shard, generation,
//! health, impression-stream lag, line-item version and pack versions (from
//! `Admin/Status` and grpc.health.v1), flagging replicas that disagree with
//! the others of their shard or with the fleet's intended versions, that lag
//! or that are unreachable. Exits 1 when anything is flagged.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clap::Args;
use segd::proto::{StatusRequest, StatusResponse};

use crate::AdminArgs;

#[derive(Args)]
pub struct FleetStatusArgs {
    /// Admin addresses of every replica, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        value_name = "ADDR,ADDR,.."
    )]
    addrs: Vec<String>,
    /// Admin bearer token (the same for every replica).
    #[arg(long, env = "SEGD_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seconds to wait for each replica.
    #[arg(long, default_value_t = 5)]
    timeout_seconds: u64,
    /// Flag a replica with more impression-stream messages of its shard
    /// than this not yet applied.
    #[arg(long, default_value_t = 1_000)]
    max_lag_messages: u64,
    /// Flag a replica whose last applied impression message took longer
    /// than this from the recording replica's stamp to its apply.
    #[arg(long, default_value_t = 1_000)]
    max_lag_ms: u64,
}

/// When a replica counts as lagging.
struct LagLimits {
    messages: u64,
    seconds: f64,
}

/// What one replica answered, or why it did not.
struct Replica {
    addr: String,
    answer: Result<ReplicaState, String>,
}

struct ReplicaState {
    status: StatusResponse,
    serving: bool,
}

impl ReplicaState {
    fn shard(&self) -> (u32, u32) {
        self.status
            .shard
            .as_ref()
            .map_or((0, 1), |shard| (shard.index, shard.count))
    }

    fn versions(&self) -> BTreeMap<&str, &str> {
        self.status
            .packs
            .iter()
            .map(|pack| (pack.name.as_str(), pack.version.as_str()))
            .collect()
    }
}

pub async fn fleet_status(args: FleetStatusArgs) -> anyhow::Result<()> {
    let mut replicas = Vec::with_capacity(args.addrs.len());
    for addr in &args.addrs {
        let answer = ask(addr, args.token.clone(), args.timeout_seconds).await;
        replicas.push(Replica {
            addr: addr.clone(),
            answer: answer.map_err(|error| format!("{error:#}")),
        });
    }
    let limits = LagLimits {
        messages: args.max_lag_messages,
        seconds: args.max_lag_ms as f64 / 1e3,
    };
    let flags = disagreements(&replicas, &limits);
    print_table(&replicas, &flags)?;
    if flags.values().any(|flag| !flag.is_empty()) {
        std::process::exit(1);
    }
    Ok(())
}

async fn ask(
    addr: &str,
    token: Option<String>,
    timeout_seconds: u64,
) -> anyhow::Result<ReplicaState> {
    let admin = AdminArgs {
        admin_addr: addr.to_owned(),
        token,
    };
    let work = async {
        let mut client = crate::client::admin_client(&admin).await?;
        let status = client
            .status(StatusRequest {})
            .await
            .map_err(|status| anyhow::anyhow!("status: {:?}: {}", status.code(), status.message()))?
            .into_inner();
        let serving = crate::client::health_serving(addr).await?;
        anyhow::Ok(ReplicaState { status, serving })
    };
    tokio::time::timeout(Duration::from_secs(timeout_seconds), work)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {timeout_seconds} s"))?
}

/// Per replica address, what is wrong with it ("" when nothing): unreachable,
/// not serving, lagging on the impression stream, packs (names and
/// versions) or line items different from the majority of its shard or from
/// what the fleet intends, or a whole shard serving other pack versions than
/// the majority of the fleet (each shard's pack of one build carries the
/// same version).
fn disagreements(replicas: &[Replica], limits: &LagLimits) -> BTreeMap<String, String> {
    let mut by_shard: BTreeMap<(u32, u32), Vec<&ReplicaState>> = BTreeMap::new();
    for replica in replicas {
        if let Ok(state) = &replica.answer {
            by_shard.entry(state.shard()).or_default().push(state);
        }
    }
    let fleet_packs = majority(
        replicas
            .iter()
            .filter_map(|replica| replica.answer.as_ref().ok())
            .map(ReplicaState::versions),
    );
    let counts: BTreeSet<u32> = by_shard.keys().map(|(_, count)| *count).collect();
    let mut flags = BTreeMap::new();
    for replica in replicas {
        let flag = match &replica.answer {
            Err(error) => format!("UNREACHABLE: {error}"),
            Ok(state) => {
                let mut problems = Vec::new();
                if !state.serving {
                    problems.push("not serving".to_owned());
                }
                if counts.len() > 1 {
                    problems.push(format!("shard counts differ in the fleet: {counts:?}"));
                }
                let peers = &by_shard[&state.shard()];
                let versions = state.versions();
                let shard_packs = majority(peers.iter().map(|peer| peer.versions()));
                if versions == shard_packs && versions != fleet_packs {
                    problems.push(format!(
                        "its shard serves other versions than the fleet's majority {fleet_packs:?}"
                    ));
                }
                if versions != shard_packs {
                    problems.push(format!(
                        "packs differ from its shard's majority {shard_packs:?}"
                    ));
                }
                let line_items = majority(
                    peers
                        .iter()
                        .map(|peer| peer.status.line_items_version.as_str()),
                );
                if state.status.line_items_version != line_items {
                    problems.push(format!(
                        "line items {:?}, its shard has {line_items:?}",
                        state.status.line_items_version
                    ));
                }
                problems.extend(lag_problems(&state.status, limits));
                problems.extend(intent_problems(&state.status));
                problems.join("; ")
            }
        };
        flags.insert(replica.addr.clone(), flag);
    }
    flags
}

/// What is wrong with a fleet replica's impression stream: disconnected,
/// still catching up, too many messages behind or too slow an apply.
fn lag_problems(status: &StatusResponse, limits: &LagLimits) -> Vec<String> {
    let Some(fleet) = &status.fleet else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    if !fleet.connected {
        problems.push("not connected to NATS".to_owned());
    }
    if !fleet.caught_up {
        problems.push("still catching up with the impression stream".to_owned());
    }
    if fleet.messages_behind > limits.messages {
        problems.push(format!(
            "lags: {} impression messages behind (over {})",
            fleet.messages_behind, limits.messages
        ));
    }
    if fleet.last_apply_lag_seconds > limits.seconds {
        problems.push(format!(
            "lags: last impression applied {:.0} ms after it was recorded (over {:.0} ms)",
            fleet.last_apply_lag_seconds * 1e3,
            limits.seconds * 1e3
        ));
    }
    problems
}

/// Where a replica serves other packs than the fleet intends for its shard
/// (`Status.fleet_packs`): another version, or a pack dropped fleet-wide.
fn intent_problems(status: &StatusResponse) -> Vec<String> {
    let served: BTreeMap<&str, &str> = status
        .packs
        .iter()
        .map(|pack| (pack.name.as_str(), pack.version.as_str()))
        .collect();
    let mut problems = Vec::new();
    for intent in &status.fleet_packs {
        match (served.get(intent.pack.as_str()), intent.dropped) {
            (Some(version), true) => problems.push(format!(
                "serves {}={version}, dropped by the fleet",
                intent.pack
            )),
            (Some(version), false) if *version != intent.version => problems.push(format!(
                "serves {}={version}, the fleet intends {}",
                intent.pack, intent.version
            )),
            (None, false) => problems.push(format!(
                "does not serve {}, the fleet intends {}",
                intent.pack, intent.version
            )),
            _ => {}
        }
    }
    if !status.fleet_line_items_version.is_empty()
        && status.fleet_line_items_version != status.line_items_version
    {
        problems.push(format!(
            "line items {:?}, the fleet intends {:?}",
            status.line_items_version, status.fleet_line_items_version
        ));
    }
    problems
}

/// `BEHIND/LAST_LAG` of a fleet replica, `-` on a single node.
fn lag_cell(status: &StatusResponse) -> String {
    status.fleet.as_ref().map_or("-".to_owned(), |fleet| {
        format!(
            "{}/{:.1}ms",
            fleet.messages_behind,
            fleet.last_apply_lag_seconds * 1e3
        )
    })
}

/// The most common value (the first seen among equals; the default when none).
fn majority<T: PartialEq + Default>(values: impl Iterator<Item = T>) -> T {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for value in values {
        match counts.iter_mut().find(|(seen, _)| *seen == value) {
            Some((_, count)) => *count += 1,
            None => counts.push((value, 1)),
        }
    }
    let best = counts.iter().map(|(_, count)| *count).max().unwrap_or(0);
    counts
        .into_iter()
        .find(|(_, count)| *count == best)
        .map(|(value, _)| value)
        .unwrap_or_default()
}

fn print_table(replicas: &[Replica], flags: &BTreeMap<String, String>) -> std::io::Result<()> {
    out!(
        "{:<28} {:<7} {:>10} {:<8} {:<14} {:<16} {:<40} FLAGS",
        "REPLICA",
        "SHARD",
        "GENERATION",
        "HEALTH",
        "LAG",
        "LINE_ITEMS",
        "PACKS"
    );
    for replica in replicas {
        let flag = flags.get(&replica.addr).map_or("", String::as_str);
        let flag = if flag.is_empty() { "ok" } else { flag };
        match &replica.answer {
            Err(_) => out!(
                "{:<28} {:<7} {:>10} {:<8} {:<14} {:<16} {:<40} {flag}",
                replica.addr,
                "-",
                "-",
                "-",
                "-",
                "-",
                "-"
            ),
            Ok(state) => {
                let (index, count) = state.shard();
                let packs = state
                    .versions()
                    .iter()
                    .map(|(name, version)| format!("{name}={version}"))
                    .collect::<Vec<_>>()
                    .join(",");
                out!(
                    "{:<28} {:<7} {:>10} {:<8} {:<14} {:<16} {:<40} {flag}",
                    replica.addr,
                    format!("{index}/{count}"),
                    state.status.generation,
                    if state.serving {
                        "SERVING"
                    } else {
                        "NOT_SERVING"
                    },
                    lag_cell(&state.status),
                    if state.status.line_items_version.is_empty() {
                        "-"
                    } else {
                        &state.status.line_items_version
                    },
                    if packs.is_empty() {
                        "-".to_owned()
                    } else {
                        packs
                    },
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use segd::proto::{FleetPackIntent, FleetStatus, PackStatus};

    fn fleet_replica(messages_behind: u64, last_lag_seconds: f64) -> StatusResponse {
        StatusResponse {
            fleet: Some(FleetStatus {
                messages_behind,
                last_apply_lag_seconds: last_lag_seconds,
                connected: true,
                caught_up: true,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_replica_over_either_lag_limit_is_flagged() {
        let limits = LagLimits {
            messages: 10,
            seconds: 0.5,
        };
        assert!(lag_problems(&fleet_replica(10, 0.5), &limits).is_empty());
        let behind = lag_problems(&fleet_replica(11, 0.0), &limits);
        assert_eq!(behind.len(), 1, "{behind:?}");
        assert!(behind[0].contains("11 impression messages behind"));
        let slow = lag_problems(&fleet_replica(0, 0.75), &limits);
        assert!(slow[0].contains("750 ms"), "{slow:?}");
        assert!(lag_problems(&StatusResponse::default(), &limits).is_empty());
        assert_eq!(lag_cell(&fleet_replica(3, 0.0012)), "3/1.2ms");
        assert_eq!(lag_cell(&StatusResponse::default()), "-");
    }

    #[test]
    fn packs_other_than_the_fleet_intends_are_flagged() {
        let pack = |name: &str, version: &str| PackStatus {
            name: name.into(),
            version: version.into(),
            ..Default::default()
        };
        let intent = |pack: &str, version: &str, dropped: bool| FleetPackIntent {
            pack: pack.into(),
            version: version.into(),
            dropped,
        };
        let status = StatusResponse {
            packs: vec![pack("crm", "v1"), pack("old", "v3"), pack("ok", "v2")],
            fleet_packs: vec![
                intent("crm", "v2", false),
                intent("old", "v3", true),
                intent("ok", "v2", false),
                intent("new", "v1", false),
            ],
            ..Default::default()
        };
        assert_eq!(
            intent_problems(&status),
            [
                "serves crm=v1, the fleet intends v2",
                "serves old=v3, dropped by the fleet",
                "does not serve new, the fleet intends v1",
            ]
        );
    }
}
