//! Audience shards against real `segd` processes: a replica started with
//! `--shard I/N` refuses queries for users of other shards with
//! FAILED_PRECONDITION naming both shards, reports its shard in Status, and
//! `segctl --shard-addrs` routes each user to its shard.

mod common;

use common::process::SegdProcess;
use segd::proto::{
    BatchLookupRequest, Candidate, DecideRequest, Impression, LookupRequest,
    RecordImpressionsRequest, StatusRequest,
};
use segd::shard::shard_of_user;
use tonic::Code;

/// The first ids `user-N` of each of `count` shards.
fn user_of_each_shard(count: u32) -> Vec<String> {
    (0..count)
        .map(|shard| {
            (0..10_000)
                .map(|n| format!("user-{n}"))
                .find(|id| shard_of_user(id, count) == shard)
                .expect("a user in every shard")
        })
        .collect()
}

fn lookup(user_id: &str) -> LookupRequest {
    LookupRequest {
        user_id: user_id.to_owned(),
        ..Default::default()
    }
}

fn assert_misrouted(status: &tonic::Status, field: &str, user_shard: &str, replica_shard: &str) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let message = status.message();
    assert!(message.starts_with(field), "{message}");
    assert!(
        message.contains(&format!("belongs to shard {user_shard}")),
        "{message}"
    );
    assert!(
        message.contains(&format!("this replica serves shard {replica_shard}")),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_for_a_user_of_another_shard_is_refused_naming_both_shards() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = SegdProcess::start(data_dir.path(), &["--shard", "1/3"]).await;
    let users = user_of_each_shard(3);
    let mut client = server.segments().await;

    let own = client.lookup(lookup(&users[1])).await.unwrap().into_inner();
    assert!(own.segment_ids.is_empty());

    let refused = client.lookup(lookup(&users[2])).await.unwrap_err();
    assert_misrouted(&refused, "user_id", "2/3", "1/3");

    let batch = BatchLookupRequest {
        requests: vec![lookup(&users[1]), lookup(&users[0])],
    };
    let refused = client.batch_lookup(batch).await.unwrap_err();
    assert_misrouted(&refused, "requests[1].user_id", "0/3", "1/3");

    let decide = DecideRequest {
        user_id: users[0].clone(),
        candidates: vec![Candidate {
            id: "li".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let refused = client.decide(decide).await.unwrap_err();
    assert_misrouted(&refused, "user_id", "0/3", "1/3");

    let impression = |user_id: &str| Impression {
        user_id: user_id.to_owned(),
        cap_keys: vec!["li:1".into()],
        ..Default::default()
    };
    let record = RecordImpressionsRequest {
        impressions: vec![impression(&users[1]), impression(&users[2])],
    };
    let refused = client.record_impressions(record).await.unwrap_err();
    assert_misrouted(&refused, "impressions[1].user_id", "2/3", "1/3");
    // All or nothing: the impression of the replica's own user was not counted.
    let admin = common::admin_client(&format!("http://{}", server.admin_addr), None).await;
    let status = admin
        .clone()
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.frequency.unwrap().events, 0);
    let shard = status.shard.expect("status reports the shard");
    assert_eq!((shard.index, shard.count), (1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsharded_replica_answers_every_user_and_reports_0_of_1() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = SegdProcess::start(data_dir.path(), &[]).await;
    let mut client = server.segments().await;
    for user in user_of_each_shard(4) {
        client.lookup(lookup(&user)).await.unwrap();
    }
    let mut admin = common::admin_client(&format!("http://{}", server.admin_addr), None).await;
    let shard = admin
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .shard
        .unwrap();
    assert_eq!((shard.index, shard.count), (0, 1));
}

#[test]
fn a_bad_shard_flag_is_refused_at_start_up_with_a_clear_error() {
    let data_dir = tempfile::tempdir().unwrap();
    for (flag, expected) in [
        ("2/2", "shard index 2 is not below the shard count 2"),
        ("0/0", "shard count 0 is out of range"),
        ("1", "expected INDEX/COUNT"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_segd"))
            .args(["serve", "--shard", flag, "--data-dir"])
            .arg(data_dir.path())
            .output()
            .unwrap();
        assert!(!output.status.success(), "--shard {flag} started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--shard"), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segctl_shard_addrs_routes_each_user_to_its_shard() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let replicas = [
        SegdProcess::start(dirs[0].path(), &["--shard", "0/2"]).await,
        SegdProcess::start(dirs[1].path(), &["--shard", "1/2"]).await,
    ];
    let shard_addrs = replicas
        .iter()
        .map(|replica| format!("http://{}", replica.query_addr))
        .collect::<Vec<_>>()
        .join(",");
    let segctl = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_segctl"))
            .args(args)
            .output()
            .unwrap()
    };
    for (shard, user) in user_of_each_shard(2).iter().enumerate() {
        let routed = segctl(&["lookup", "--shard-addrs", &shard_addrs, user]);
        let stderr = String::from_utf8_lossy(&routed.stderr);
        assert!(routed.status.success(), "{stderr}");
        assert!(stderr.contains(&format!("shard {shard}/2")), "{stderr}");
        let recorded = segctl(&["record", "--shard-addrs", &shard_addrs, user, "--keys", "k"]);
        assert!(recorded.status.success());
        assert!(String::from_utf8_lossy(&recorded.stdout).contains("recorded 1"));
        // The other replica, asked directly, refuses the user.
        let other = &replicas[1 - shard];
        let direct = segctl(&[
            "lookup",
            "--addr",
            &format!("http://{}", other.query_addr),
            user,
        ]);
        assert!(!direct.status.success());
        let stderr = String::from_utf8_lossy(&direct.stderr);
        assert!(stderr.contains("FailedPrecondition"), "{stderr}");
        assert!(
            stderr.contains(&format!("belongs to shard {shard}/2")),
            "{stderr}"
        );
    }
}

/// A small unsharded (0 of 1) pack.
fn unsharded_pack(version: &str) -> Vec<u8> {
    common::simple_pack(
        "crm",
        version,
        1_790_000_000,
        &[common::SimpleSegment {
            id: 1,
            kind: "",
            members: &["alice", "bob", "carol"],
        }],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_of_another_shard_count_is_refused_when_pushed_naming_both() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = SegdProcess::start(data_dir.path(), &["--shard", "0/2"]).await;
    let mut admin = common::admin_client(&format!("http://{}", server.admin_addr), None).await;
    let refused = common::push(&mut admin, &unsharded_pack("v1"), false)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let message = refused.message();
    assert!(message.contains("is of shard 0/1"), "{message}");
    assert!(message.contains("serves shard 0/2"), "{message}");
    // Nothing changed, in memory or on disk.
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(status.packs.is_empty());
    let on_disk: Vec<_> = std::fs::read_dir(data_dir.path().join("packs"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .filter(|name| name.to_string_lossy().ends_with(".segpack"))
        .collect();
    assert!(on_disk.is_empty(), "{on_disk:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_of_another_shard_in_the_data_or_watch_dir_is_skipped_never_served() {
    // Served unsharded first, so the data directory holds a real 0-of-1 pack.
    let data_dir = tempfile::tempdir().unwrap();
    let unsharded = SegdProcess::start(data_dir.path(), &[]).await;
    let mut admin = common::admin_client(&format!("http://{}", unsharded.admin_addr), None).await;
    common::push(&mut admin, &unsharded_pack("v1"), false)
        .await
        .unwrap();
    drop(admin);
    assert!(unsharded.terminate().success());

    let mut serve_config = common::config(data_dir.path());
    serve_config.sharding.shard = segd::shard::Shard { index: 1, count: 2 };
    let watch_dir = tempfile::tempdir().unwrap();
    serve_config.watch_dir = Some(watch_dir.path().to_path_buf());
    serve_config.watch_poll_ms = 20;
    let server = common::TestServer::start(serve_config).await;
    let mut admin = server.admin().await;
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(
        status.packs.is_empty(),
        "served a pack of another shard: {:?}",
        status.packs
    );
    // The file stays on disk: restarted with its shard, the replica serves it again.
    assert!(data_dir.path().join("packs/crm.segpack").exists());

    std::fs::write(watch_dir.path().join("crm.segpack"), unsharded_pack("v2")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let metrics = server.scrape_metrics().await;
        if common::metric_value(&metrics, "segd_watch_rejected_total", "").unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "watched file never refused"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(status.packs.is_empty(), "{:?}", status.packs);
    server.stop().await;
}
