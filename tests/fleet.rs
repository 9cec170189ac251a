//! Fleet mode against real processes: `segd` replicas (the real binary)
//! sharing frequency caps through real `nats-server` JetStream nodes.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::Channel;

use common::nats::{self, NatsNode};
use common::process::SegdProcess;
use segd::proto::segments_client::SegmentsClient;
use segd::proto::{
    Candidate, DecideRequest, FrequencyCap, Impression, RecordImpressionsRequest,
    RecordImpressionsResponse, StatusRequest,
};

/// A replica on `urls` named `replica_id`, over `data_dir`.
async fn replica(data_dir: &Path, urls: &str, replica_id: &str, extra: &[&str]) -> SegdProcess {
    let mut args = vec!["--fleet-nats", urls, "--replica-id", replica_id];
    args.extend_from_slice(extra);
    SegdProcess::start(data_dir, &args).await
}

fn impressions(user_id: &str, cap_key: &str, ids: &[String]) -> RecordImpressionsRequest {
    RecordImpressionsRequest {
        impressions: ids
            .iter()
            .map(|id| Impression {
                user_id: user_id.to_owned(),
                cap_keys: vec![cap_key.to_owned()],
                at_unix_seconds: 0,
                impression_id: id.clone(),
            })
            .collect(),
    }
}

async fn record(
    client: &mut SegmentsClient<Channel>,
    request: RecordImpressionsRequest,
) -> Result<RecordImpressionsResponse, tonic::Status> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(Duration::from_secs(2));
    client
        .record_impressions(request)
        .await
        .map(|response| response.into_inner())
}

/// Impressions of (`user_id`, `cap_key`) the replica counts, up to `max`: one
/// Decide with a candidate per limit 1..=max (all retained); a candidate is
/// capped when the count has reached its limit.
async fn count(
    client: &mut SegmentsClient<Channel>,
    user_id: &str,
    cap_key: &str,
    max: u32,
) -> u32 {
    let candidates = (1..=max)
        .map(|limit| Candidate {
            id: format!("limit-{limit}"),
            caps: vec![FrequencyCap {
                key: cap_key.to_owned(),
                limit,
                window_seconds: 0,
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    let decisions = client
        .decide(DecideRequest {
            user_id: user_id.to_owned(),
            candidates,
            ..Default::default()
        })
        .await
        .expect("decide answers")
        .into_inner()
        .decisions;
    decisions
        .iter()
        .filter(|decision| !decision.eligible)
        .count() as u32
}

/// Polls until `count` reaches `expected` (another replica applies within
/// its lag); returns the last count seen.
async fn eventually_count(
    client: &mut SegmentsClient<Channel>,
    user_id: &str,
    cap_key: &str,
    expected: u32,
) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = count(client, user_id, cap_key, expected + 1).await;
        if seen == expected || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// (frequency events, applied stream sequence) from Admin/Status.
async fn figures(process: &SegdProcess) -> (u64, u64) {
    let mut admin = common::admin_client(&format!("http://{}", process.admin_addr), None).await;
    let status = admin
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let fleet = status.fleet.expect("fleet block in status");
    (
        status.frequency.expect("frequency block").events,
        fleet.applied_sequence,
    )
}

/// Polls until every replica holds `events` impressions at one applied sequence.
async fn eventually_equal(replicas: &[&SegdProcess], events: u64) -> Vec<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen = Vec::new();
        for replica in replicas {
            seen.push(figures(replica).await);
        }
        let equal = seen.iter().all(|figure| *figure == seen[0]);
        if (equal && seen[0].0 == events) || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|index| format!("{prefix}-{index}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_reached_on_one_replica_is_enforced_by_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let node = nats::single(&dir.path().join("nats"));
    let url = node.url();
    let a = replica(&dir.path().join("a"), &url, "a", &[]).await;
    let b = replica(&dir.path().join("b"), &url, "b", &[]).await;
    let c = replica(&dir.path().join("c"), &url, "c", &[]).await;
    let (mut on_a, mut on_b, mut on_c) =
        (a.segments().await, b.segments().await, c.segments().await);

    let batch = impressions("user-1", "li:7", &ids("imp", 0..3));
    let recorded = record(&mut on_a, batch.clone())
        .await
        .expect("recorded on a");
    assert_eq!((recorded.recorded, recorded.duplicates), (3, 0));
    // Read-your-writes on the recording replica: no waiting.
    assert_eq!(count(&mut on_a, "user-1", "li:7", 4).await, 3);
    // The others enforce the cap within their lag.
    assert_eq!(eventually_count(&mut on_b, "user-1", "li:7", 3).await, 3);
    assert_eq!(eventually_count(&mut on_c, "user-1", "li:7", 3).await, 3);

    // A retry sent to another replica is a duplicate there, counted once everywhere.
    let retried = record(&mut on_b, batch).await.expect("retry on b");
    assert_eq!((retried.recorded, retried.duplicates), (0, 3));
    assert_eq!(count(&mut on_b, "user-1", "li:7", 4).await, 3);
    let seen = eventually_equal(&[&a, &b, &c], 3).await;
    assert_eq!(
        seen,
        vec![(3, 2); 3],
        "(events, applied sequence) on a, b, c"
    );

    let mut admin = common::admin_client(&format!("http://{}", b.admin_addr), None).await;
    let fleet = admin
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .fleet
        .unwrap();
    assert_eq!(
        (
            fleet.mode.as_str(),
            fleet.replica_id.as_str(),
            fleet.stream.as_str()
        ),
        ("fleet", "b", "SEGD_IMPRESSIONS")
    );
    assert!(fleet.connected && fleet.caught_up);
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_other_subjects_refuses_start_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = nats::single(&dir.path().join("nats"));
    let client = async_nats::connect(node.url()).await.expect("connect");
    async_nats::jetstream::new(client)
        .create_stream(async_nats::jetstream::stream::Config {
            name: "SEGD_IMPRESSIONS".to_owned(),
            subjects: vec!["orders.>".to_owned()],
            ..Default::default()
        })
        .await
        .expect("create a foreign stream");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_segd"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--metrics-listen", "off", "--fleet-nats", &node.url()])
        .arg("--data-dir")
        .arg(dir.path().join("a"))
        .output()
        .expect("run segd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("orders.>") && stderr.contains("segd.impressions.>"),
        "{stderr}"
    );
}

/// Records `batches` batches of 5 on `client`, retrying each failed call
/// with the same impression ids until it is acknowledged.
async fn writer(mut client: SegmentsClient<Channel>, writer: u32, batches: u32) -> u32 {
    let mut failures = 0;
    for batch in 0..batches {
        let request = impressions(
            &format!("w{writer}-user-{}", batch % 7),
            &format!("li:{writer}"),
            &ids(&format!("w{writer}-b{batch}"), 0..5),
        );
        let give_up = Instant::now() + Duration::from_secs(30);
        while let Err(status) = record(&mut client, request.clone()).await {
            assert!(
                matches!(
                    status.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
                ),
                "unexpected failure: {status:?}"
            );
            assert!(
                Instant::now() < give_up,
                "writer {writer} batch {batch} never acknowledged: {status:?}"
            );
            failures += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_killed_under_load_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<NatsNode> = nats::cluster(&dir.path().join("nats"));
    let urls = nodes
        .iter()
        .map(NatsNode::url)
        .collect::<Vec<_>>()
        .join(",");
    let replicas = [
        replica(
            &dir.path().join("a"),
            &urls,
            "a",
            &["--fleet-replicas", "3"],
        )
        .await,
        replica(
            &dir.path().join("b"),
            &urls,
            "b",
            &["--fleet-replicas", "3"],
        )
        .await,
        replica(
            &dir.path().join("c"),
            &urls,
            "c",
            &["--fleet-replicas", "3"],
        )
        .await,
    ];
    const BATCHES: u32 = 60;
    let mut writers = Vec::new();
    for index in 0..4u32 {
        let client = replicas[index as usize % 3].segments().await;
        writers.push(tokio::spawn(writer(client, index, BATCHES)));
    }
    // Kill a node while the writers are mid-way.
    let started = Instant::now();
    while figures(&replicas[0]).await.0 < u64::from(BATCHES) * 5
        && started.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nodes[0].kill_9();
    let mut failures = 0;
    for writer in writers {
        failures += writer.await.expect("writer task");
    }
    eprintln!("calls retried after the node kill: {failures}");
    let total = u64::from(4 * BATCHES * 5);
    let seen = eventually_equal(&replicas.iter().collect::<Vec<_>>(), total).await;
    assert!(
        seen.iter().all(|&(events, _)| events == total),
        "events per replica {seen:?}, want {total} (retried calls: {failures})"
    );
    for (index, replica) in replicas.iter().enumerate() {
        let mut client = replica.segments().await;
        for writer in 0..4 {
            // Batches b with b % 7 == 0 went to user 0: ceil(60 / 7) = 9 batches of 5.
            assert_eq!(
                count(
                    &mut client,
                    &format!("w{writer}-user-0"),
                    &format!("li:{writer}"),
                    46
                )
                .await,
                45,
                "replica {index}, writer {writer}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_and_a_new_empty_one_catch_up_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let node = nats::single(&dir.path().join("nats"));
    let url = node.url();
    let a = replica(&dir.path().join("a"), &url, "a", &[]).await;
    let b_dir = dir.path().join("b");
    let mut b = Some(replica(&b_dir, &url, "b", &["--checkpoint-interval-seconds", "1"]).await);
    let c = replica(&dir.path().join("c"), &url, "c", &[]).await;
    let mut on_a = a.segments().await;
    let mut written = 0u64;
    for batch in 0..40 {
        record(
            &mut on_a,
            impressions(
                &format!("user-{}", batch % 5),
                "li:1",
                &ids(&format!("b{batch}"), 0..10),
            ),
        )
        .await
        .expect("recorded");
        written += 10;
        if batch == 10 {
            // Let b checkpoint some of the stream first, then kill it mid-stream.
            let wait = Instant::now();
            while !b_dir.join("freq").read_dir().unwrap().any(|entry| {
                entry
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".ckpt")
            }) {
                assert!(
                    wait.elapsed() < Duration::from_secs(10),
                    "b never checkpointed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            b.take().expect("b runs until now").kill_9();
        }
    }
    let b = replica(&b_dir, &url, "b", &[]).await;
    let d = replica(&dir.path().join("d"), &url, "d", &[]).await;
    // SERVING means caught up with the stream as it was at start-up.
    assert_eq!(figures(&b).await, (written, 40));
    assert_eq!(figures(&d).await, (written, 40));
    let seen = eventually_equal(&[&a, &b, &c, &d], written).await;
    assert_eq!(seen, vec![(written, 40); 4]);
    let mut on_d = d.segments().await;
    assert_eq!(count(&mut on_d, "user-0", "li:1", 81).await, 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_decide_answers_recording_is_unavailable_then_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = nats::single(&dir.path().join("nats"));
    let url = node.url();
    let a = replica(&dir.path().join("a"), &url, "a", &[]).await;
    let b = replica(&dir.path().join("b"), &url, "b", &[]).await;
    let (mut on_a, mut on_b) = (a.segments().await, b.segments().await);
    record(
        &mut on_a,
        impressions("user-1", "li:1", &ids("before", 0..2)),
    )
    .await
    .expect("recorded");
    assert_eq!(eventually_count(&mut on_b, "user-1", "li:1", 2).await, 2);

    node.stop();
    // Decide answers from the local counters; recording is refused, and
    // nothing of the refused batch shows up later.
    assert_eq!(count(&mut on_a, "user-1", "li:1", 3).await, 2);
    assert_eq!(count(&mut on_b, "user-1", "li:1", 3).await, 2);
    let refused = record(
        &mut on_a,
        impressions("user-1", "li:1", &ids("during", 0..1)),
    )
    .await;
    assert_eq!(
        refused.expect_err("refused while NATS is down").code(),
        Code::Unavailable
    );

    node.restart();
    node.wait_healthy(Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(20);
    let resumed = loop {
        match record(
            &mut on_a,
            impressions("user-1", "li:1", &ids("after", 0..1)),
        )
        .await
        {
            Ok(resumed) => break resumed,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    Instant::now() < deadline,
                    "recording did not resume: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // 1 recorded, or 1 duplicate when an earlier attempt was acknowledged
    // but not applied here before its deadline.
    assert_eq!(resumed.recorded + resumed.duplicates, 1, "{resumed:?}");
    assert_eq!(count(&mut on_a, "user-1", "li:1", 4).await, 3);
    assert_eq!(eventually_count(&mut on_b, "user-1", "li:1", 3).await, 3);
    // Equal everywhere (the sequence counts a retried call's second message).
    let seen = eventually_equal(&[&a, &b], 3).await;
    assert!(seen[0].0 == 3 && seen[0] == seen[1], "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_restarts_its_sequence_is_followed_from_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let node = nats::single(&dir.path().join("nats"));
    let url = node.url();
    let a = replica(&dir.path().join("a"), &url, "a", &[]).await;
    let b = replica(&dir.path().join("b"), &url, "b", &[]).await;
    let (mut on_a, mut on_b) = (a.segments().await, b.segments().await);
    for batch in 0..3 {
        record(
            &mut on_a,
            impressions("user-1", "li:1", &ids(&format!("old-{batch}"), 0..1)),
        )
        .await
        .expect("recorded");
    }
    assert_eq!(eventually_count(&mut on_b, "user-1", "li:1", 3).await, 3);

    // What a crash of the only NATS server that lost the stream's tail
    // looks like to segd: the stream's sequence numbers start again.
    let context = async_nats::jetstream::new(async_nats::connect(&url).await.expect("connect"));
    let config = context
        .get_stream("SEGD_IMPRESSIONS")
        .await
        .expect("stream")
        .cached_info()
        .config
        .clone();
    context
        .delete_stream("SEGD_IMPRESSIONS")
        .await
        .expect("delete");
    context.create_stream(config).await.expect("recreate");

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match record(&mut on_a, impressions("user-2", "li:1", &ids("new", 0..1))).await {
            Ok(resumed) => {
                assert_eq!(resumed.recorded + resumed.duplicates, 1, "{resumed:?}");
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    Instant::now() < deadline,
                    "recording did not resume after {attempt} attempts: {status:?}"
                );
            }
        }
    }
    assert_eq!(eventually_count(&mut on_a, "user-2", "li:1", 1).await, 1);
    assert_eq!(eventually_count(&mut on_b, "user-2", "li:1", 1).await, 1);
    // The old counts stay (an over-count, never an under-count).
    assert_eq!(count(&mut on_b, "user-1", "li:1", 4).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_a_shard_share_its_caps_and_only_its_impressions() {
    let dir = tempfile::tempdir().unwrap();
    let node = nats::single(&dir.path().join("nats"));
    let url = node.url();
    let shard_0a = replica(&dir.path().join("0a"), &url, "0a", &["--shard", "0/2"]).await;
    let shard_0b = replica(&dir.path().join("0b"), &url, "0b", &["--shard", "0/2"]).await;
    let shard_1 = replica(&dir.path().join("1"), &url, "1", &["--shard", "1/2"]).await;
    // user-1 is in shard 0 of 2, user-3 in shard 1 (README's test vectors).
    let mut on_0a = shard_0a.segments().await;
    record(&mut on_0a, impressions("user-1", "li:1", &ids("s0", 0..2)))
        .await
        .expect("recorded on shard 0");
    let mut on_1 = shard_1.segments().await;
    record(&mut on_1, impressions("user-3", "li:1", &ids("s1", 0..3)))
        .await
        .expect("recorded on shard 1");
    let mut on_0b = shard_0b.segments().await;
    assert_eq!(eventually_count(&mut on_0b, "user-1", "li:1", 2).await, 2);
    // Each shard's replicas hold only their subject's impressions.
    assert_eq!(eventually_equal(&[&shard_0a, &shard_0b], 2).await[0].0, 2);
    assert_eq!(figures(&shard_1).await.0, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_before_nats_serves_once_nats_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = nats::single_not_started(&dir.path().join("nats"));
    let url = node.url();
    let data_dir = dir.path().join("a");
    // SegdProcess::start returns once health says SERVING.
    let starting = tokio::spawn(async move { replica(&data_dir, &url, "a", &[]).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!starting.is_finished(), "SERVING before NATS was reachable");
    node.restart();
    let a = tokio::time::timeout(Duration::from_secs(20), starting)
        .await
        .expect("SERVING once NATS is up")
        .expect("start task");
    let mut on_a = a.segments().await;
    let recorded = record(&mut on_a, impressions("user-1", "li:1", &ids("late", 0..2)))
        .await
        .expect("recorded");
    assert_eq!(recorded.recorded, 2);
}
