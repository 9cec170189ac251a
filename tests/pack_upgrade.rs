//! Upgrading to format v2: a data directory written by a round-1 server (v1
//! pack files, among them the committed v1 fixture) is served by the real
//! `segd` binary as it was; v2 pushes, rollbacks to a v1 file and restarts
//! over a mix of both formats answer like the reference model.

mod common;

use std::path::{Path, PathBuf};

use common::model::{Model, ModelPack};
use common::process::SegdProcess;
use segd::proto::segments_client::SegmentsClient;
use segd::proto::{RollbackRequest, StatusRequest};
use tonic::transport::Channel;

const BUILT_AT: i64 = 1_790_000_000;

fn v1_fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/small.segpack")
}

async fn assert_answers(client: &mut SegmentsClient<Channel>, model: &Model) {
    for pack in &model.packs {
        for user_id in pack.members.keys().step_by(3) {
            let reply = common::lookup_all(client, user_id, BUILT_AT).await;
            assert_eq!(
                reply.segment_ids,
                model.lookup(user_id, &[], 0, BUILT_AT).0,
                "{user_id}"
            );
        }
    }
}

/// (name, version, format users) of every served pack, by name.
async fn served(process: &SegdProcess) -> Vec<(String, String, u64)> {
    let mut admin = common::admin_client(&format!("http://{}", process.admin_addr), None).await;
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    let mut packs: Vec<(String, String, u64)> = status
        .packs
        .into_iter()
        .map(|pack| (pack.name, pack.version, pack.users))
        .collect();
    packs.sort();
    packs
}

fn format_of(path: &Path) -> u32 {
    let bytes = std::fs::read(path).unwrap();
    segd::pack::read_header(&bytes).unwrap().format_version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_one_data_directory_keeps_serving_after_the_upgrade() {
    let data_dir = tempfile::tempdir().unwrap();
    let packs_dir = data_dir.path().join("packs");
    std::fs::create_dir_all(&packs_dir).unwrap();
    std::fs::copy(v1_fixture(), packs_dir.join("site-events.segpack")).unwrap();
    let crm_v1 = ModelPack::random(7, "crm", "v1", BUILT_AT, 400, 20..=32);
    std::fs::write(packs_dir.join("crm.segpack"), crm_v1.bytes_v1()).unwrap();

    let process = SegdProcess::start(data_dir.path(), &[]).await;
    let site_events = ("site-events".to_owned(), "2024-06-01.1".to_owned(), 5);
    assert_eq!(
        served(&process).await,
        vec![("crm".into(), "v1".into(), 400), site_events.clone()]
    );
    let mut client = process.segments().await;
    assert_answers(&mut client, &Model::new(vec![crm_v1.clone()])).await;

    // A v2 push replaces the v1 file; the v1 one is kept for rollback.
    let crm_v2 = ModelPack::random(8, "crm", "v2", BUILT_AT, 500, 20..=32);
    let admin_url = format!("http://{}", process.admin_addr);
    let mut admin = common::admin_client(&admin_url, None).await;
    common::push(&mut admin, &crm_v2.bytes(), false)
        .await
        .unwrap();
    assert_eq!(format_of(&packs_dir.join("crm.segpack")), 2);
    assert_eq!(format_of(&packs_dir.join("crm.previous.segpack")), 1);
    assert_answers(&mut client, &Model::new(vec![crm_v2.clone()])).await;

    // Restart over a v1 and a v2 file: both load and answer.
    process.terminate();
    let process = SegdProcess::start(data_dir.path(), &[]).await;
    assert_eq!(
        served(&process).await,
        vec![("crm".into(), "v2".into(), 500), site_events.clone()]
    );
    let mut client = process.segments().await;
    assert_answers(&mut client, &Model::new(vec![crm_v2])).await;

    // Rolling back loads the v1 file again.
    let admin_url = format!("http://{}", process.admin_addr);
    let mut admin = common::admin_client(&admin_url, None).await;
    admin
        .rollback(RollbackRequest { pack: "crm".into() })
        .await
        .unwrap();
    assert_answers(&mut client, &Model::new(vec![crm_v1])).await;
    assert_eq!(
        served(&process).await,
        vec![("crm".into(), "v1".into(), 400), site_events]
    );
}

/// A re-push of the served version is answered from its header: the body is
/// never read, so even a damaged body after a valid header is "unchanged".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_push_of_the_served_version_stops_at_the_header() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = common::TestServer::start(common::config(data_dir.path())).await;
    let mut admin = server.admin().await;
    let crm = ModelPack::random(9, "crm", "v5", BUILT_AT, 3000, 1..=40);
    let bytes = crm.bytes();
    assert!(
        bytes.len() > 2 * (64 << 10),
        "several chunks: {}",
        bytes.len()
    );
    let first = common::push(&mut admin, &bytes, false).await.unwrap();
    assert!(!first.unchanged);
    let served = std::fs::read(data_dir.path().join("packs/crm.segpack")).unwrap();

    let mut damaged_body = bytes.clone();
    let middle = damaged_body.len() / 2;
    damaged_body[middle] ^= 0xff;
    let again = common::push(&mut admin, &damaged_body, false)
        .await
        .unwrap();
    assert!(again.unchanged);
    assert_eq!(again.generation, first.generation);
    assert_eq!(
        std::fs::read(data_dir.path().join("packs/crm.segpack")).unwrap(),
        served
    );
    // A new version with the same damage is refused: the body is checked then.
    let mut next = ModelPack::random(9, "crm", "v6", BUILT_AT, 3000, 1..=40).bytes();
    let middle = next.len() / 2;
    next[middle] ^= 0xff;
    assert!(common::push(&mut admin, &next, false).await.is_err());
    let mut client = server.segments().await;
    assert_answers(&mut client, &Model::new(vec![crm])).await;
}
