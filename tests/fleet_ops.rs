//! Fleet-wide `Rollback` and `DropPack` where replicas do not hold the same
//! files, and `segctl fleet-status` flagging a replica that serves another
//! version than the fleet intends or lost NATS, against one real
//! `nats-server` and real `segd` processes (one unsharded shard, 0/1).
//!
//! - Rollback on a replica that joined after the previous push (it keeps no
//!   previous version) rolls the fleet back to the fleet's previous version.
//! - Rollback to a version pushed before fleet mode (only on that replica's
//!   disk) stores it in the bucket and every replica serves it.
//! - DropPack on a replica that serves another version than the fleet's
//!   intent drops the pack on every replica.

mod common;

use std::path::Path;
use std::time::Duration;

use common::nats::{self, NatsNode};
use common::process::SegdProcess;
use common::{SimpleSegment, admin_client, push, simple_pack};
use segd::proto::{DropPackRequest, RollbackRequest, StatusRequest};
use tokio::time::Instant;

const BUILT_AT: i64 = 1_790_000_000;
const DEADLINE: Duration = Duration::from_secs(30);

fn pack(version: &str) -> Vec<u8> {
    let members = ["alice", "bob"];
    let segments = [SimpleSegment {
        id: 1,
        kind: "",
        members: &members,
    }];
    simple_pack("crm", version, BUILT_AT, &segments)
}

async fn start_fleet(dir: &Path, node: &NatsNode, name: &str) -> SegdProcess {
    let url = node.url();
    SegdProcess::start(dir, &["--fleet-nats", &url, "--replica-id", name]).await
}

fn admin_url(process: &SegdProcess) -> String {
    format!("http://{}", process.admin_addr)
}

async fn served_version(process: &SegdProcess) -> Option<String> {
    let mut admin = admin_client(&admin_url(process), None).await;
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    status
        .packs
        .iter()
        .find(|served| served.name == "crm")
        .map(|served| served.version.clone())
}

/// Polls until `process` serves `version` of crm (`None`: not at all).
async fn wait_for_version(process: &SegdProcess, version: Option<&str>) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let served = served_version(process).await;
        if served.as_deref() == version {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} serves {served:?} of crm, not {version:?}",
            process.admin_addr
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A replica that served v1 then v2 on its own, before fleet mode: it keeps
/// v1 for rollback, and the fleet's buckets have neither.
async fn pushed_before_fleet_mode(dir: &Path) {
    let single = SegdProcess::start(dir, &[]).await;
    let mut admin = admin_client(&admin_url(&single), None).await;
    for version in ["v1", "v2"] {
        push(&mut admin, &pack(version), false).await.unwrap();
    }
    assert!(single.terminate().success());
}

/// `segctl fleet-status` of `addrs`: (exit 0, stdout).
fn fleet_status(addrs: &[String]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_segctl"))
        .args([
            "fleet-status",
            "--timeout-seconds",
            "5",
            "--addrs",
            &addrs.join(","),
        ])
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn row<'a>(table: &'a str, addr: &str) -> &'a str {
    table
        .lines()
        .find(|line| line.starts_with(addr))
        .unwrap_or_else(|| panic!("no row for {addr} in\n{table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_on_a_replica_that_joined_later_rolls_the_fleet_back() {
    let nats_store = tempfile::tempdir().unwrap();
    let node = nats::single(nats_store.path());
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let first = start_fleet(dirs[0].path(), &node, "first").await;
    let mut admin = admin_client(&admin_url(&first), None).await;
    for version in ["v1", "v2"] {
        push(&mut admin, &pack(version), false).await.unwrap();
    }
    // Joins after both pushes: it fetches v2 only and keeps no previous version.
    let later = start_fleet(dirs[1].path(), &node, "later").await;
    wait_for_version(&later, Some("v2")).await;

    let mut admin = admin_client(&admin_url(&later), None).await;
    let rolled = admin
        .rollback(RollbackRequest { pack: "crm".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rolled.version, "v1");
    assert_eq!(served_version(&later).await.as_deref(), Some("v1"));
    wait_for_version(&first, Some("v1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_a_version_pushed_before_fleet_mode_reaches_every_replica() {
    let nats_store = tempfile::tempdir().unwrap();
    let node = nats::single(nats_store.path());
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    pushed_before_fleet_mode(dirs[0].path()).await;
    let old = start_fleet(dirs[0].path(), &node, "old").await;
    let new = start_fleet(dirs[1].path(), &node, "new").await;
    assert_eq!(served_version(&old).await.as_deref(), Some("v2"));
    assert_eq!(
        served_version(&new).await,
        None,
        "the fleet intends nothing"
    );

    let mut admin = admin_client(&admin_url(&old), None).await;
    let rolled = admin
        .rollback(RollbackRequest { pack: "crm".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rolled.version, "v1");
    assert_eq!(served_version(&old).await.as_deref(), Some("v1"));
    wait_for_version(&new, Some("v1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_on_a_replica_serving_another_version_than_the_fleet_drops_everywhere() {
    let nats_store = tempfile::tempdir().unwrap();
    let mut node = nats::single(nats_store.path());
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    // The lagging replica serves v1 from its own disk ...
    let lagging_dir = dirs[0].path();
    let single = SegdProcess::start(lagging_dir, &[]).await;
    push(
        &mut admin_client(&admin_url(&single), None).await,
        &pack("v1"),
        false,
    )
    .await
    .unwrap();
    assert!(single.terminate().success());
    // ... while the fleet intends v3, whose file it cannot fetch (gone from the bucket).
    let current = start_fleet(dirs[1].path(), &node, "current").await;
    push(
        &mut admin_client(&admin_url(&current), None).await,
        &pack("v3"),
        false,
    )
    .await
    .unwrap();
    let client = async_nats::connect(node.url()).await.unwrap();
    let objects = async_nats::jetstream::new(client)
        .get_object_store("segd-packs")
        .await
        .unwrap();
    objects.delete("crm/shard-0-of-1/v3").await.unwrap();
    let lagging = start_fleet(lagging_dir, &node, "lagging").await;
    assert_eq!(served_version(&lagging).await.as_deref(), Some("v1"));

    // fleet-status flags the lagging replica against the fleet's intent.
    let addrs = [admin_url(&lagging), admin_url(&current)];
    let (agreed, table) = fleet_status(&addrs);
    assert!(!agreed, "{table}");
    let flagged = row(&table, &addrs[0]);
    assert!(
        flagged.contains("serves crm=v1, the fleet intends v3"),
        "{table}"
    );
    assert!(
        table.lines().next().unwrap().contains("LAG") && row(&table, &addrs[1]).contains(" 0/"),
        "{table}"
    );

    // Dropped through the replica that serves the other version: gone on both.
    let mut admin = admin_client(&admin_url(&lagging), None).await;
    admin
        .drop_pack(DropPackRequest { pack: "crm".into() })
        .await
        .unwrap();
    assert_eq!(served_version(&lagging).await, None);
    wait_for_version(&current, None).await;
    let (agreed, table) = fleet_status(&addrs);
    assert!(agreed, "{table}");

    // A replica that lost NATS is flagged.
    node.stop();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (agreed, table) = fleet_status(&addrs);
        if !agreed && row(&table, &addrs[1]).contains("not connected to NATS") {
            break;
        }
        assert!(Instant::now() < deadline, "never flagged:\n{table}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
