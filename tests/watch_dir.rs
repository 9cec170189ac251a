//! `--watch-dir`: packs a sidecar moves into the watched directory are
//! verified and served like a push; a damaged one is skipped and the old
//! answers stay.
//!
//! The feature is poll-based, so these tests wait for its effect by polling
//! `Lookup` with short sleeps, bounded by a deadline.

mod common;

use std::path::Path;
use std::time::Duration;

use common::model::{Model, ModelPack};
use common::{TestServer, config};
use segd::proto::segments_client::SegmentsClient;
use segd::proto::{LookupRequest, StatusRequest};
use tokio::time::Instant;
use tonic::transport::Channel;

const BUILT_AT: i64 = 1_790_000_000;
const DEADLINE: Duration = Duration::from_secs(20);

/// Writes `bytes` under a temp name, then renames it to `name`, the way sync
/// sidecars publish a download.
fn drop_in(watch_dir: &Path, name: &str, bytes: &[u8]) {
    let temp = watch_dir.join(format!("{name}.tmp"));
    std::fs::write(&temp, bytes).unwrap();
    std::fs::rename(&temp, watch_dir.join(name)).unwrap();
}

/// The generation and every model user's all-segments answer.
async fn answers(client: &mut SegmentsClient<Channel>, model: &Model) -> (u64, Vec<Vec<u32>>) {
    let mut generation = 0;
    let mut all = Vec::new();
    for pack in &model.packs {
        for user_id in pack.members.keys() {
            let reply = common::lookup_all(client, user_id, BUILT_AT).await;
            generation = reply.generation;
            all.push(reply.segment_ids);
        }
    }
    (generation, all)
}

fn expected(model: &Model) -> Vec<Vec<u32>> {
    model
        .packs
        .iter()
        .flat_map(|pack| pack.members.keys())
        .map(|user_id| model.lookup(user_id, &[], 0, BUILT_AT).0)
        .collect()
}

/// Polls until the server answers as `model` says, or fails at the deadline.
async fn wait_for_answers(client: &mut SegmentsClient<Channel>, model: &Model, what: &str) -> u64 {
    let wanted = expected(model);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (generation, got) = answers(client, model).await;
        if got == wanted {
            return generation;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not served within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_packs_are_served_and_damaged_ones_skipped() {
    let data_dir = tempfile::tempdir().unwrap();
    let watch_dir = tempfile::tempdir().unwrap();
    let mut serve_config = config(data_dir.path());
    serve_config.watch.watch_dir = Some(watch_dir.path().to_path_buf());
    serve_config.watch.watch_poll_ms = 50;
    let server = TestServer::start(serve_config).await;
    let mut client = server.segments().await;

    let crm = ModelPack::random(1, "crm", "v1", BUILT_AT, 200, 1..=10);
    let first_generation = client
        .lookup(LookupRequest {
            user_id: "anyone".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .generation;
    drop_in(watch_dir.path(), "crm.segpack", &crm.bytes());
    let crm_only = Model::new(vec![crm.clone()]);
    let generation = wait_for_answers(&mut client, &crm_only, "crm v1").await;
    assert!(generation > first_generation);

    // A damaged new version replaces the file; then a valid pack of another
    // name arrives. Both are stable by the time the second is served, and the
    // watcher applies in name order, so the damaged one has been handled.
    let crm_next = ModelPack::random(2, "crm", "v2", BUILT_AT, 200, 1..=10);
    let mut damaged = crm_next.bytes();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x20;
    drop_in(watch_dir.path(), "crm.segpack", &damaged);
    let events = ModelPack::random(3, "events", "v1", BUILT_AT, 200, 20..30);
    drop_in(watch_dir.path(), "events.segpack", &events.bytes());
    let both = Model::new(vec![crm.clone(), events.clone()]);
    wait_for_answers(&mut client, &both, "events v1 beside crm v1").await;

    let mut admin = server.admin().await;
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    let mut versions: Vec<(String, String)> = status
        .packs
        .iter()
        .map(|pack| (pack.name.clone(), pack.version.clone()))
        .collect();
    versions.sort();
    assert_eq!(
        versions,
        [
            ("crm".to_owned(), "v1".to_owned()),
            ("events".to_owned(), "v1".to_owned())
        ],
        "the damaged crm v2 was skipped"
    );

    let exposition = server.scrape_metrics().await;
    assert!(
        exposition.contains("\nsegd_watch_loaded_total 2\n"),
        "{exposition}"
    );
    assert!(
        exposition.contains("\nsegd_watch_rejected_total 1\n"),
        "{exposition}"
    );

    // The good file of the next version replaces the damaged one and is served.
    drop_in(watch_dir.path(), "crm.segpack", &crm_next.bytes());
    let next = Model::new(vec![crm_next, events]);
    wait_for_answers(&mut client, &next, "crm v2").await;

    server.stop().await;
    // What the watcher applied was persisted like a push.
    let restarted = TestServer::start(config(data_dir.path())).await;
    let mut client = restarted.segments().await;
    let (_, got) = answers(&mut client, &next).await;
    assert_eq!(got, expected(&next));
    restarted.stop().await;
}
