//! Pack freshness: a pack older than its bound (`--max-pack-age-seconds`, or
//! `--max-pack-age PACK=SECONDS`) is reported stale in Status and metrics;
//! with `--stale-packs drop` its segments answer as unknown (non-members in
//! Decide) while fresh packs still match, until a fresh version is pushed;
//! with `serve` they keep matching. The transition of a served pack is checked
//! against the catalog with explicit times.

mod common;

use std::sync::Arc;

use common::{SimpleSegment, TestServer, config, push, simple_pack};
use segd::proto::{Candidate, DecideRequest, LookupRequest, PackStatus, SegmentRef, StatusRequest};
use segd::settings::{PackMaxAge, StalePacks};
use segd::store::catalog::Catalog;
use segd::store::{FreshnessPolicy, Membership, Store};

const TEN_DAYS_SECONDS: i64 = 10 * 86_400;

/// Pack `old` (segment 1, built ten days ago) and pack `fresh` (segment 10,
/// built now); alice is in both segments.
fn old_pack(version: &str, built_at: i64) -> Vec<u8> {
    simple_pack(
        "old",
        version,
        built_at,
        &[SimpleSegment {
            id: 1,
            kind: "retargeting",
            members: &["alice"],
        }],
    )
}

fn fresh_pack(built_at: i64) -> Vec<u8> {
    simple_pack(
        "fresh",
        "v1",
        built_at,
        &[SimpleSegment {
            id: 10,
            kind: "prospecting",
            members: &["alice"],
        }],
    )
}

async fn start_with_two_packs(config: segd::settings::ServeConfig) -> TestServer {
    let server = TestServer::start(config).await;
    let now = segd::unix_now_seconds();
    let mut admin = server.admin().await;
    push(&mut admin, &old_pack("v1", now - TEN_DAYS_SECONDS), false)
        .await
        .unwrap();
    push(&mut admin, &fresh_pack(now), false).await.unwrap();
    server
}

async fn pack_status(server: &TestServer, name: &str) -> PackStatus {
    let mut admin = server.admin().await;
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    status
        .packs
        .into_iter()
        .find(|pack| pack.name == name)
        .unwrap_or_else(|| panic!("pack {name} in status"))
}

async fn lookup_alice(server: &TestServer, segment_ids: Vec<u32>) -> (Vec<u32>, Vec<u32>) {
    let mut client = server.segments().await;
    let reply = client
        .lookup(LookupRequest {
            user_id: "alice".into(),
            segment_ids,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (reply.segment_ids, reply.unknown_segment_ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_pack_is_reported_and_still_served_by_default() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = config(data_dir.path());
    config.freshness.max_pack_age_seconds = 86_400;
    assert_eq!(config.freshness.stale_packs, StalePacks::Serve);
    let server = start_with_two_packs(config).await;

    let old = pack_status(&server, "old").await;
    assert!(old.stale, "built ten days ago, bound one day");
    assert!(old.age_seconds >= TEN_DAYS_SECONDS);
    assert!(!pack_status(&server, "fresh").await.stale);

    assert_eq!(
        lookup_alice(&server, vec![1, 10]).await,
        (vec![1, 10], vec![])
    );
    assert_eq!(lookup_alice(&server, vec![]).await, (vec![1, 10], vec![]));

    let text = server.scrape_metrics().await;
    assert_eq!(
        common::metric_value(&text, "segd_pack_stale", "pack=\"old\""),
        Some(1.0)
    );
    assert_eq!(
        common::metric_value(&text, "segd_pack_stale", "pack=\"fresh\""),
        Some(0.0)
    );
    assert_eq!(
        common::metric_value(&text, "segd_pack_withheld", "pack=\"old\""),
        Some(0.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_drop_a_stale_pack_answers_nothing_until_a_fresh_version_arrives() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = config(data_dir.path());
    config.freshness.max_pack_age_seconds = 86_400;
    config.freshness.stale_packs = StalePacks::Drop;
    let server = start_with_two_packs(config).await;

    assert!(
        pack_status(&server, "old").await.stale,
        "still listed, stale"
    );
    assert!(!pack_status(&server, "fresh").await.stale);
    // Listed: the stale pack's segment is unknown; the fresh one's matches.
    assert_eq!(
        lookup_alice(&server, vec![1, 10]).await,
        (vec![10], vec![1])
    );
    // All segments: only the fresh pack's.
    assert_eq!(lookup_alice(&server, vec![]).await, (vec![10], vec![]));
    // Decide: a non-member, never an error.
    let mut client = server.segments().await;
    let decisions = client
        .decide(DecideRequest {
            user_id: "alice".into(),
            candidates: vec![
                Candidate {
                    id: "stale-audience".into(),
                    all_of: vec![SegmentRef {
                        segment_id: 1,
                        max_age_seconds: 0,
                    }],
                    ..Default::default()
                },
                Candidate {
                    id: "fresh-audience".into(),
                    all_of: vec![SegmentRef {
                        segment_id: 10,
                        max_age_seconds: 0,
                    }],
                    ..Default::default()
                },
            ],
            at_unix_seconds: 0,
            line_item_ids: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!decisions.decisions[0].eligible);
    assert!(decisions.decisions[1].eligible);

    // The stale pack still owns its segment ids: another pack cannot take them.
    let mut admin = server.admin().await;
    let thief = simple_pack(
        "thief",
        "v1",
        segd::unix_now_seconds(),
        &[SimpleSegment {
            id: 1,
            kind: "",
            members: &["mallory"],
        }],
    );
    assert_eq!(
        push(&mut admin, &thief, false).await.unwrap_err().code(),
        tonic::Code::FailedPrecondition
    );

    let text = server.scrape_metrics().await;
    assert_eq!(
        common::metric_value(&text, "segd_pack_withheld", "pack=\"old\""),
        Some(1.0)
    );

    // A fresh version serves again.
    push(&mut admin, &old_pack("v2", segd::unix_now_seconds()), false)
        .await
        .unwrap();
    assert!(!pack_status(&server, "old").await.stale);
    assert_eq!(
        lookup_alice(&server, vec![1, 10]).await,
        (vec![1, 10], vec![])
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_pack_bounds_replace_the_default() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = config(data_dir.path());
    // No default bound; only `old` has one. `fresh=0` is explicit "no bound".
    config.freshness.max_pack_age = vec![
        "old=3600".parse::<PackMaxAge>().unwrap(),
        "fresh=0".parse::<PackMaxAge>().unwrap(),
    ];
    config.freshness.stale_packs = StalePacks::Drop;
    assert!("no-equals".parse::<PackMaxAge>().is_err());
    assert!("old=soon".parse::<PackMaxAge>().is_err());
    let server = start_with_two_packs(config).await;
    assert!(pack_status(&server, "old").await.stale);
    assert!(!pack_status(&server, "fresh").await.stale);
    assert_eq!(
        lookup_alice(&server, vec![1, 10]).await,
        (vec![10], vec![1])
    );
    server.stop().await;

    // A per-pack 0 lifts the default bound for that pack.
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = common::config(data_dir.path());
    config.freshness.max_pack_age_seconds = 60;
    config.freshness.max_pack_age = vec!["old=0".parse().unwrap()];
    config.freshness.stale_packs = StalePacks::Drop;
    let server = start_with_two_packs(config).await;
    assert!(!pack_status(&server, "old").await.stale);
    assert_eq!(
        lookup_alice(&server, vec![1, 10]).await,
        (vec![1, 10], vec![])
    );
    server.stop().await;
}

/// A served pack crossing its bound is withheld by the next freshness check
/// (the watcher runs it every second), and the state is reinstalled once.
#[test]
fn a_served_pack_crossing_its_bound_is_withheld_on_the_next_check() {
    let data_dir = tempfile::tempdir().unwrap();
    let built_at = 1_790_000_000;
    let policy = FreshnessPolicy {
        default_max_age_seconds: 3600,
        withhold_stale: true,
        ..Default::default()
    };
    let store = Arc::new(Store::with_freshness(policy));
    let catalog = Catalog::open(data_dir.path(), store.clone()).unwrap();
    catalog
        .push(old_pack("v1", built_at), false, built_at + 10)
        .unwrap();
    let alice = segd::user_fingerprint("alice");
    let membership = |at: i64| store.load().user(alice).membership(1, 0, at);
    assert_eq!(membership(built_at), Membership::Member);

    assert_eq!(catalog.refresh_freshness(built_at + 3600).unwrap(), None);
    assert_eq!(membership(built_at), Membership::Member);

    let generation = store.load().generation;
    let reinstalled = catalog.refresh_freshness(built_at + 3601).unwrap();
    assert_eq!(reinstalled, Some(generation + 1));
    assert!(store.load().is_withheld("old"));
    assert_eq!(membership(built_at), Membership::UnknownSegment);
    assert_eq!(store.load().packs().len(), 1, "still listed");
    assert!(
        data_dir.path().join("packs/old.segpack").exists(),
        "kept on disk"
    );
    // Nothing changes on later checks.
    assert_eq!(catalog.refresh_freshness(built_at + 7200).unwrap(), None);
}
