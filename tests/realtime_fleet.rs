//! Real-time audiences in a fleet, against one real `nats-server` and real
//! `segd` processes: an `UpdateMembers` through one replica is seen by the
//! others and by a replica started afterwards; a `ForgetUsers` through
//! another empties lookups and resets caps everywhere, also after a `kill -9`
//! and a replay from before the forget; a refused batch applies nothing
//! anywhere; NATS down answers UNAVAILABLE and applies nothing.

mod common;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use common::nats;
use common::process::SegdProcess;
use common::realtime::{Admin, add, forget, remove, update};
use common::{SimpleSegment, admin_client, lookup_all, push, simple_pack};
use segd::proto::segments_client::SegmentsClient;
use segd::proto::{
    Candidate, DecideRequest, FrequencyCap, Impression, RecordImpressionsRequest, StatusRequest,
};
use tonic::Code;
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(30);

async fn replica(data_dir: &Path, url: &str, name: &str) -> SegdProcess {
    SegdProcess::start(
        data_dir,
        &[
            "--fleet-nats",
            url,
            "--replica-id",
            name,
            "--request-timeout-ms",
            "3000",
        ],
    )
    .await
}

async fn admin(process: &SegdProcess) -> Admin {
    admin_client(&format!("http://{}", process.admin_addr), None).await
}

/// Polls `check` until it holds, for at most [`DEADLINE`].
async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn segments_of(process: &SegdProcess, user: &str) -> Vec<u32> {
    lookup_all(&mut process.segments().await, user, 0)
        .await
        .segment_ids
}

async fn eventually_segments(process: &SegdProcess, name: &str, user: &str, expected: &[u32]) {
    let what = format!("{user} in {expected:?} on {name}");
    eventually(&what, || async {
        segments_of(process, user).await == expected
    })
    .await;
}

/// Impressions of `user` under cap key `li:1` the replica counts, up to 4.
async fn cap_count(client: &mut SegmentsClient<Channel>, user: &str) -> u32 {
    let candidates = (1..=4)
        .map(|limit| Candidate {
            id: format!("limit-{limit}"),
            caps: vec![FrequencyCap {
                key: "li:1".into(),
                limit,
                window_seconds: 86_400,
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    let reply = client
        .decide(DecideRequest {
            user_id: user.into(),
            candidates,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    reply.decisions.iter().filter(|d| !d.eligible).count() as u32
}

async fn eventually_caps(process: &SegdProcess, name: &str, user: &str, expected: u32) {
    let what = format!("{user} counted {expected} impressions on {name}");
    eventually(&what, || async {
        cap_count(&mut process.segments().await, user).await == expected
    })
    .await;
}

async fn record(process: &SegdProcess, user: &str, times: usize) {
    let impressions = (0..times)
        .map(|_| Impression {
            user_id: user.into(),
            cap_keys: vec!["li:1".into()],
            ..Default::default()
        })
        .collect();
    process
        .segments()
        .await
        .record_impressions(RecordImpressionsRequest { impressions })
        .await
        .unwrap();
}

/// Pushes the pack through `through` and waits until every replica serves it.
async fn push_everywhere(through: &SegdProcess, replicas: &[&SegdProcess]) {
    let pack = simple_pack(
        "crm",
        "v1",
        segd::unix_now_seconds() - 60,
        &[
            SimpleSegment {
                id: 1,
                kind: "retargeting",
                members: &["dave", "alice"],
            },
            SimpleSegment {
                id: 2,
                kind: "retargeting",
                members: &["anchor"],
            },
        ],
    );
    push(&mut admin(through).await, &pack, false).await.unwrap();
    for (index, replica) in replicas.iter().enumerate() {
        let what = format!("replica {index} serves crm v1");
        eventually(&what, || async {
            let status = admin(replica)
                .await
                .status(StatusRequest {})
                .await
                .unwrap()
                .into_inner();
            status.packs.iter().any(|pack| pack.version == "v1")
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_and_forgets_reach_every_replica_and_survive_kill_9() {
    let nats_store = tempfile::tempdir().unwrap();
    let mut node = nats::single(nats_store.path());
    let url = node.url();
    let (dir_a, dir_b, dir_c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = replica(dir_a.path(), &url, "a").await;
    let b = replica(dir_b.path(), &url, "b").await;
    push_everywhere(&a, &[&a, &b]).await;

    // An update through A: A sees it at the reply, B within its lag.
    let applied = update(
        &mut admin(&a).await,
        vec![add("bob", 1, 0, 0), remove("alice", 1)],
    )
    .await
    .unwrap();
    assert_eq!(applied, 2);
    assert_eq!(
        segments_of(&a, "bob").await,
        vec![1],
        "read-your-writes on A"
    );
    assert!(segments_of(&a, "alice").await.is_empty());
    eventually_segments(&b, "B", "bob", &[1]).await;
    eventually_segments(&b, "B", "alice", &[]).await;

    // Dave is capped on A; a forget through B empties him and his caps on A.
    record(&a, "dave", 2).await;
    eventually_caps(&a, "A", "dave", 2).await;
    eventually_caps(&b, "B", "dave", 2).await;
    assert_eq!(
        forget(&mut admin(&b).await, &["dave", "dave"])
            .await
            .unwrap(),
        1
    );
    assert!(
        segments_of(&b, "dave").await.is_empty(),
        "read-your-writes on B"
    );
    assert_eq!(cap_count(&mut b.segments().await, "dave").await, 0);
    eventually_segments(&a, "A", "dave", &[]).await;
    eventually_caps(&a, "A", "dave", 0).await;
    // Caps start from zero: an impression after the forget counts once.
    record(&b, "dave", 1).await;
    eventually_caps(&a, "A", "dave", 1).await;

    // A refused batch (segment 99 is nobody's) publishes nothing: carol is
    // absent everywhere once a later update (erin) has arrived.
    let refused = update(
        &mut admin(&a).await,
        vec![add("carol", 1, 0, 0), add("carol", 99, 0, 0)],
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("updates[1].segment_id"),
        "{refused:?}"
    );
    update(&mut admin(&a).await, vec![add("erin", 2, 0, 0)])
        .await
        .unwrap();
    eventually_segments(&b, "B", "erin", &[2]).await;
    for replica in [&a, &b] {
        assert!(segments_of(replica, "carol").await.is_empty());
    }

    // A replica started afterwards replays the stream and converges.
    let c = replica(dir_c.path(), &url, "c").await;
    eventually_segments(&c, "C", "erin", &[2]).await;
    assert_eq!(segments_of(&c, "bob").await, vec![1]);
    assert!(segments_of(&c, "alice").await.is_empty());
    assert!(segments_of(&c, "dave").await.is_empty());
    assert!(segments_of(&c, "carol").await.is_empty());
    assert_eq!(cap_count(&mut c.segments().await, "dave").await, 1);
    drop(c);

    // kill -9 A; B takes an update meanwhile; A restarts, replays its
    // journal and the stream (impressions from before the forget included:
    // no checkpoint was taken yet) and converges.
    a.kill_9();
    update(&mut admin(&b).await, vec![add("frank", 1, 0, 0)])
        .await
        .unwrap();
    let a = replica(dir_a.path(), &url, "a").await;
    eventually_segments(&a, "A", "frank", &[1]).await;
    assert_eq!(segments_of(&a, "bob").await, vec![1]);
    assert!(segments_of(&a, "dave").await.is_empty());
    assert_eq!(cap_count(&mut a.segments().await, "dave").await, 1);
    assert_eq!(segments_of(&a, "erin").await, vec![2]);
    assert!(segments_of(&a, "carol").await.is_empty());

    // NATS down: UNAVAILABLE, nothing applied anywhere once it is back.
    node.kill_9();
    let refused = update(&mut admin(&a).await, vec![add("gina", 1, 0, 0)])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let refused = forget(&mut admin(&b).await, &["bob"]).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(segments_of(&a, "gina").await.is_empty());
    node.restart();
    node.wait_healthy(DEADLINE);
    eventually("A takes updates again", || async {
        update(&mut admin(&a).await, vec![add("hank", 2, 0, 0)])
            .await
            .is_ok()
    })
    .await;
    eventually_segments(&b, "B", "hank", &[2]).await;
    for replica in [&a, &b] {
        assert!(segments_of(replica, "gina").await.is_empty());
        assert_eq!(segments_of(replica, "bob").await, vec![1]);
    }
}

/// The first user id `prefix-N` of `shard` among 2.
fn user_of_shard(prefix: &str, shard: u32) -> String {
    (0..)
        .map(|index| format!("{prefix}-{index}"))
        .find(|user| segd::shard::shard_of_user(user, 2) == shard)
        .expect("some user of every shard")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_travel_on_their_shards_subject_and_misrouted_ones_are_refused() {
    let nats_store = tempfile::tempdir().unwrap();
    let node = nats::single(nats_store.path());
    let url = node.url();
    let dir = tempfile::tempdir().unwrap();
    let process = SegdProcess::start(
        dir.path(),
        &["--fleet-nats", &url, "--replica-id", "s1", "--shard", "1/2"],
    )
    .await;
    let (mine, theirs) = (user_of_shard("u", 1), user_of_shard("u", 0));
    let mut admin = admin(&process).await;
    let refused = forget(&mut admin, &[mine.as_str(), theirs.as_str()])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("user_ids[1]"), "{refused:?}");
    let refused = update(&mut admin, vec![add(&theirs, 1, 0, 0)])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(forget(&mut admin, &[mine.as_str()]).await.unwrap(), 1);
    // 50,000 forgets (24 bytes each) do not fit one 1 MiB NATS message:
    // refused, naming the limit, and nothing is published.
    let many: Vec<String> = (0..)
        .map(|index| format!("many-{index}"))
        .filter(|user| segd::shard::shard_of_user(user, 2) == 1)
        .take(50_000)
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let refused = forget(&mut admin, &many).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("max_payload"), "{refused:?}");

    // The forget is the last message of shard 1's members subject, in the
    // impression stream whose configuration segd did not change.
    let client = async_nats::connect(&url).await.unwrap();
    let stream = async_nats::jetstream::new(client)
        .get_stream("SEGD_IMPRESSIONS")
        .await
        .unwrap();
    assert_eq!(stream.cached_info().config.subjects, ["segd.impressions.>"]);
    let message = stream
        .get_last_raw_message_by_subject("segd.impressions.1.members")
        .await
        .unwrap();
    let (_, record) = segd::fleet::members::decode_change(&message.payload).unwrap();
    let segd::realtime::journal::JournalRecord::Forgets(forgets) = record else {
        panic!("a forget travels as forgets: {record:?}");
    };
    assert_eq!(forgets.len(), 1, "the refused forget was not published");
    assert_eq!(forgets[0].0, segd::user_fingerprint(&mine));
    assert!(
        stream
            .get_last_raw_message_by_subject("segd.impressions.0.members")
            .await
            .is_err(),
        "nothing for shard 0"
    );
}
