//! `segctl fleet-status` against real `segd` processes: one table of every
//! replica, flagging a replica whose packs differ from its shard's and an
//! unreachable one (exit 1), and exit 0 once the replicas agree.

mod common;

use common::process::SegdProcess;
use common::{SimpleSegment, admin_client, push, simple_pack};

const BUILT_AT: i64 = 1_790_000_000;

fn fleet_status(addrs: &[String]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_segctl"))
        .args([
            "fleet-status",
            "--timeout-seconds",
            "2",
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
async fn fleet_status_flags_a_replica_that_disagrees_with_its_shard() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for dir in &dirs {
        replicas.push(SegdProcess::start(dir.path(), &[]).await);
    }
    let addrs: Vec<String> = replicas
        .iter()
        .map(|replica| format!("http://{}", replica.admin_addr))
        .collect();
    let segments = [SimpleSegment {
        id: 1,
        kind: "",
        members: &["alice"],
    }];
    let v1 = simple_pack("crm", "v1", BUILT_AT, &segments);
    let v2 = simple_pack("crm", "v2", BUILT_AT, &segments);
    for addr in &addrs {
        push(&mut admin_client(addr, None).await, &v1, false)
            .await
            .unwrap();
    }
    let (agreed, table) = fleet_status(&addrs);
    assert!(agreed, "{table}");
    for addr in &addrs {
        let line = row(&table, addr);
        assert!(
            line.contains("crm=v1") && line.contains("SERVING") && line.ends_with("ok"),
            "{line}"
        );
        assert!(line.contains("0/1"), "{line}");
    }

    // One replica ahead of the other two: it is flagged, they are not.
    push(&mut admin_client(&addrs[2], None).await, &v2, false)
        .await
        .unwrap();
    let (agreed, table) = fleet_status(&addrs);
    assert!(!agreed, "{table}");
    let ahead = row(&table, &addrs[2]);
    assert!(
        ahead.contains("crm=v2") && ahead.contains("packs differ"),
        "{ahead}"
    );
    assert!(row(&table, &addrs[0]).ends_with("ok"), "{table}");

    // An unreachable replica is flagged too.
    let gone = replicas.pop().unwrap();
    gone.kill_9();
    let (agreed, table) = fleet_status(&addrs);
    assert!(!agreed, "{table}");
    assert!(row(&table, &addrs[2]).contains("UNREACHABLE"), "{table}");
    assert!(row(&table, &addrs[1]).ends_with("ok"), "{table}");
}
