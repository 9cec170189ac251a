//! `Admin/UpdateMembers` and `Admin/ForgetUsers` against a real server: what a
//! user sees in `Lookup` and `Decide` right after the reply, folding into
//! newer packs and back on rollback, forgets that packs built before or after
//! cannot undo, caps that start from zero, and refused batches that change
//! nothing.

mod common;

use common::realtime::{add, forget, realtime_status, remove, update, wait_for_status, wait_past};
use common::{SimpleSegment, TestServer, config, lookup_all, push, simple_pack};
use segd::proto::segments_client::SegmentsClient;
use segd::proto::{
    Candidate, DecideRequest, FrequencyCap, Impression, RecordImpressionsRequest, RollbackRequest,
    SegmentRef,
};
use tonic::Code;
use tonic::transport::Channel;

fn pack(version: &str, built_at: i64, crm_members: &[&str]) -> Vec<u8> {
    simple_pack(
        "crm",
        version,
        built_at,
        &[
            SimpleSegment {
                id: 1,
                kind: "retargeting",
                members: crm_members,
            },
            SimpleSegment {
                id: 2,
                kind: "retargeting",
                members: &["anchor"],
            },
        ],
    )
}

/// Whether Decide finds `user` in segment 1 (all_of) and within a cap of
/// `limit` impressions of `li:1` today.
async fn decide(client: &mut SegmentsClient<Channel>, user: &str, limit: u32) -> (bool, bool) {
    let candidates = vec![
        Candidate {
            id: "in-1".into(),
            all_of: vec![SegmentRef {
                segment_id: 1,
                max_age_seconds: 0,
            }],
            ..Default::default()
        },
        Candidate {
            id: "capped".into(),
            caps: vec![FrequencyCap {
                key: "li:1".into(),
                limit,
                window_seconds: 86_400,
                ..Default::default()
            }],
            ..Default::default()
        },
    ];
    let reply = client
        .decide(DecideRequest {
            user_id: user.into(),
            candidates,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (reply.decisions[0].eligible, reply.decisions[1].eligible)
}

async fn record(client: &mut SegmentsClient<Channel>, user: &str, times: usize) {
    let impressions = (0..times)
        .map(|_| Impression {
            user_id: user.into(),
            cap_keys: vec!["li:1".into()],
            ..Default::default()
        })
        .collect();
    client
        .record_impressions(RecordImpressionsRequest { impressions })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_are_seen_at_once_and_fold_into_newer_packs() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(data_dir.path())).await;
    let mut admin = server.admin().await;
    let mut client = server.segments().await;
    let old_build = segd::unix_now_seconds() - 1_000;
    push(&mut admin, &pack("v1", old_build, &["alice"]), false)
        .await
        .unwrap();
    let now = segd::unix_now_seconds();

    // Add bob, remove alice: visible to the very next Lookup and Decide.
    let applied = update(&mut admin, vec![add("bob", 1, 0, 0), remove("alice", 1)])
        .await
        .unwrap();
    assert_eq!(applied, 2);
    assert_eq!(lookup_all(&mut client, "bob", 0).await.segment_ids, vec![1]);
    assert!(
        lookup_all(&mut client, "alice", 0)
            .await
            .segment_ids
            .is_empty()
    );
    assert_eq!(decide(&mut client, "bob", 1).await, (true, true));
    // An expiry ends the membership at expires_at; last_seen 0 is now.
    update(&mut admin, vec![add("carol", 1, 0, now + 3_600)])
        .await
        .unwrap();
    assert_eq!(
        lookup_all(&mut client, "carol", now + 3_599)
            .await
            .segment_ids,
        vec![1]
    );
    assert!(
        lookup_all(&mut client, "carol", now + 3_600)
            .await
            .segment_ids
            .is_empty()
    );
    let reply = client
        .lookup(segd::proto::LookupRequest {
            user_id: "bob".into(),
            segment_ids: vec![1],
            max_age_seconds: 60,
            at_unix_seconds: now + 7_200,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        reply.segment_ids.is_empty(),
        "bob was last seen now: too old by then"
    );
    assert_eq!(realtime_status(&mut admin).await.overlay_entries, 3);

    // v2 is built after the updates (in a later second; stamps are in
    // milliseconds, build times in seconds): it carries them (bob in, alice out).
    wait_past(segd::unix_now_seconds()).await;
    let stamped_by = segd::unix_now_seconds();
    push(&mut admin, &pack("v2", stamped_by, &["bob"]), false)
        .await
        .unwrap();
    wait_past(stamped_by).await;
    assert_eq!(lookup_all(&mut client, "bob", 0).await.segment_ids, vec![1]);
    assert!(
        lookup_all(&mut client, "alice", 0)
            .await
            .segment_ids
            .is_empty()
    );
    assert!(
        lookup_all(&mut client, "carol", 0)
            .await
            .segment_ids
            .is_empty(),
        "v2 left carol out and is newer than her update"
    );
    // The rollback target v1 still needs them: kept in memory.
    assert_eq!(realtime_status(&mut admin).await.overlay_entries, 3);
    admin
        .rollback(RollbackRequest { pack: "crm".into() })
        .await
        .unwrap();
    assert_eq!(
        lookup_all(&mut client, "carol", 0).await.segment_ids,
        vec![1]
    );
    assert!(
        lookup_all(&mut client, "alice", 0)
            .await
            .segment_ids
            .is_empty()
    );

    // v3 and v4, both built after: the updates leave memory once no kept
    // version needs them, and later updates stay on top.
    push(&mut admin, &pack("v3", stamped_by, &["bob"]), false)
        .await
        .unwrap();
    push(&mut admin, &pack("v4", stamped_by, &["bob"]), false)
        .await
        .unwrap();
    wait_for_status(&mut admin, "the updates to fold", |status| {
        status.overlay_entries == 0
    })
    .await;
    update(&mut admin, vec![remove("bob", 1)]).await.unwrap();
    assert!(
        lookup_all(&mut client, "bob", 0)
            .await
            .segment_ids
            .is_empty()
    );

    // All of it survives a restart.
    server.stop().await;
    let server = TestServer::start(config(data_dir.path())).await;
    let mut client = server.segments().await;
    assert!(
        lookup_all(&mut client, "bob", 0)
            .await
            .segment_ids
            .is_empty()
    );
    assert!(
        lookup_all(&mut client, "carol", 0)
            .await
            .segment_ids
            .is_empty()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_users_stay_out_of_every_pack_and_their_caps_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(data_dir.path())).await;
    let mut admin = server.admin().await;
    let mut client = server.segments().await;
    let before = segd::unix_now_seconds() - 1_000;
    push(&mut admin, &pack("v1", before, &["dave", "erin"]), false)
        .await
        .unwrap();
    update(&mut admin, vec![add("dave", 2, 0, 0)])
        .await
        .unwrap();
    record(&mut client, "dave", 2).await;
    assert_eq!(decide(&mut client, "dave", 2).await, (true, false));

    assert_eq!(
        forget(&mut admin, &["dave", "dave", "frank"])
            .await
            .unwrap(),
        2
    );
    assert!(
        lookup_all(&mut client, "dave", 0)
            .await
            .segment_ids
            .is_empty()
    );
    assert_eq!(
        decide(&mut client, "dave", 1).await,
        (false, true),
        "no segment, caps start from zero"
    );
    assert_eq!(
        lookup_all(&mut client, "erin", 0).await.segment_ids,
        vec![1]
    );
    record(&mut client, "dave", 1).await;
    assert!(!decide(&mut client, "dave", 1).await.1, "capped after one");
    assert!(decide(&mut client, "dave", 2).await.1, "room for a second");

    // A pack built before the forget, and one built after, still list dave.
    push(&mut admin, &pack("v2", before + 1, &["dave"]), false)
        .await
        .unwrap();
    assert!(
        lookup_all(&mut client, "dave", 0)
            .await
            .segment_ids
            .is_empty()
    );
    push(
        &mut admin,
        &pack("v3", segd::unix_now_seconds() + 5, &["dave", "erin"]),
        false,
    )
    .await
    .unwrap();
    assert!(
        lookup_all(&mut client, "dave", 0)
            .await
            .segment_ids
            .is_empty()
    );
    // Updates after the forget do not bring dave back either.
    update(&mut admin, vec![add("dave", 1, 0, 0)])
        .await
        .unwrap();
    assert!(
        lookup_all(&mut client, "dave", 0)
            .await
            .segment_ids
            .is_empty()
    );
    let status = wait_for_status(&mut admin, "the forgotten user counted in v3", |status| {
        status.forgotten_users_in_packs == 1
    })
    .await;
    assert_eq!(status.forgotten_users, 2);
    let metrics = server.scrape_metrics().await;
    assert_eq!(
        common::metric_value(
            &metrics,
            "segd_forgotten_users_in_packs",
            "pack=\"crm\",version=\"v3\""
        ),
        Some(1.0),
        "{metrics}"
    );

    // After a restart (frequency log replayed): still gone, one impression.
    server.stop().await;
    let server = TestServer::start(config(data_dir.path())).await;
    let mut client = server.segments().await;
    assert!(
        lookup_all(&mut client, "dave", 0)
            .await
            .segment_ids
            .is_empty()
    );
    assert!(!decide(&mut client, "dave", 1).await.1, "capped after one");
    assert!(decide(&mut client, "dave", 2).await.1, "room for a second");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_applies_nothing() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = config(data_dir.path());
    settings.realtime.max_overlay_entries = 3;
    let server = TestServer::start(settings).await;
    let mut admin = server.admin().await;
    let mut client = server.segments().await;
    push(
        &mut admin,
        &pack("v1", segd::unix_now_seconds() - 1_000, &["alice"]),
        false,
    )
    .await
    .unwrap();
    let good = || add("gina", 1, 0, 0);
    let mut bad_op = remove("gina", 2);
    bad_op.op = 7;
    let cases = [
        (
            add("gina", 99, 0, 0),
            Code::InvalidArgument,
            "updates[1].segment_id",
        ),
        (
            add("", 1, 0, 0),
            Code::InvalidArgument,
            "updates[1].user_id",
        ),
        (bad_op, Code::InvalidArgument, "updates[1].op"),
        (
            add("gina", 1, -5, 0),
            Code::InvalidArgument,
            "updates[1].last_seen_unix_seconds",
        ),
        (
            add("gina", 1, 0, -1),
            Code::InvalidArgument,
            "updates[1].expires_at_unix_seconds",
        ),
    ];
    for (bad, code, field) in cases {
        let error = update(&mut admin, vec![good(), bad, remove("alice", 1)])
            .await
            .unwrap_err();
        assert_eq!(error.code(), code, "{}", error.message());
        assert!(error.message().starts_with(field), "{}", error.message());
    }
    let full = vec![
        good(),
        add("hank", 1, 0, 0),
        add("ivan", 1, 0, 0),
        add("jo", 2, 0, 0),
    ];
    let error = update(&mut admin, full).await.unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);
    assert!(
        error.message().contains("--max-overlay-entries 3"),
        "{}",
        error.message()
    );
    assert!(
        lookup_all(&mut client, "gina", 0)
            .await
            .segment_ids
            .is_empty()
    );
    assert_eq!(
        lookup_all(&mut client, "alice", 0).await.segment_ids,
        vec![1]
    );
    assert_eq!(realtime_status(&mut admin).await.overlay_entries, 0);
    assert_eq!(
        forget(&mut admin, &["ok", ""]).await.unwrap_err().message(),
        "user_ids[1]: must not be empty"
    );
    assert_eq!(realtime_status(&mut admin).await.forgotten_users, 0);

    // The server keeps serving; the same updates in bounds apply.
    assert_eq!(
        update(&mut admin, vec![good(), remove("alice", 1)])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        lookup_all(&mut client, "gina", 0).await.segment_ids,
        vec![1]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_and_forgets_for_users_of_another_shard_are_refused() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = config(data_dir.path());
    settings.sharding.shard = segd::shard::Shard::new(1, 3).unwrap();
    let server = TestServer::start(settings).await;
    let mut admin = server.admin().await;
    let user_of = |wanted: u32| {
        (0..)
            .map(|number| format!("user-{number}"))
            .find(|id| segd::shard::shard_of_user(id, 3) == wanted)
            .unwrap()
    };
    let (mine, theirs) = (user_of(1), user_of(0));
    let error = update(&mut admin, vec![add(&mine, 1, 0, 0), add(&theirs, 1, 0, 0)])
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Code::FailedPrecondition,
        "{}",
        error.message()
    );
    assert!(
        error.message().starts_with("updates[1].user_id: "),
        "{}",
        error.message()
    );
    assert!(
        error.message().contains("belongs to shard 0/3"),
        "{}",
        error.message()
    );
    let error = forget(&mut admin, &[&theirs]).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(
        error.message().starts_with("user_ids[0]: "),
        "{}",
        error.message()
    );
    assert_eq!(realtime_status(&mut admin).await.forgotten_users, 0);
    server.stop().await;
}
