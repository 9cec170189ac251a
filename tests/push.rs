//! Pushing, refusing, restarting, rolling back and dropping packs through the
//! admin port, and the admin port's authentication.

mod common;

use common::model::{Model, ModelPack};
use common::{TestServer, config, push};
use segd::proto::segments_client::SegmentsClient;
use segd::proto::{
    DropPackRequest, ListSegmentsRequest, LookupRequest, RollbackRequest, StatusRequest,
};
use tonic::Code;
use tonic::transport::Channel;

const BUILT_AT: i64 = 1_790_000_000;

/// Every user's all-segments answer, to compare before and after.
async fn answers(client: &mut SegmentsClient<Channel>, model: &Model) -> Vec<Vec<u32>> {
    let mut all = Vec::new();
    for pack in &model.packs {
        for user_id in pack.members.keys().step_by(5) {
            let reply = common::lookup_all(client, user_id, BUILT_AT).await;
            assert_eq!(reply.segment_ids, model.lookup(user_id, &[], 0, BUILT_AT).0);
            all.push(reply.segment_ids);
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_or_conflicting_packs_are_refused_and_change_nothing() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(data_dir.path())).await;
    let crm = ModelPack::random(1, "crm", "v2", BUILT_AT, 300, 1..=10);
    let events = ModelPack::random(2, "events", "v1", BUILT_AT, 300, 20..30);
    let model = Model::new(vec![crm.clone(), events.clone()]);
    let mut admin = server.admin().await;
    push(&mut admin, &crm.bytes(), false).await.unwrap();
    push(&mut admin, &events.bytes(), false).await.unwrap();
    let mut client = server.segments().await;
    let before = answers(&mut client, &model).await;
    let generation_before = admin
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .generation;

    let next = ModelPack::random(3, "crm", "v3", BUILT_AT, 300, 1..=10);
    let good = next.bytes();
    let layout = common::damage::section_offsets(&good);
    let mut damaged: Vec<(String, Vec<u8>)> = Vec::new();
    for cut in [1, 8, good.len() / 2, good.len() - 1] {
        damaged.push((format!("truncated to {cut} bytes"), good[..cut].to_vec()));
    }
    for (section, offset) in &layout {
        let mut bytes = good.clone();
        bytes[*offset] ^= 0x40;
        damaged.push((format!("byte flipped in {section} at {offset}"), bytes));
    }
    let mut wrong_magic = good.clone();
    wrong_magic[0] ^= 0xff;
    damaged.push(("wrong magic".into(), wrong_magic));
    damaged.push((
        "future format version".into(),
        common::damage::with_format_version(&good, 99),
    ));
    for (what, bytes) in damaged {
        let refused = push(&mut admin, &bytes, false).await.expect_err(&what);
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{what}: {}",
            refused.message()
        );
        assert_eq!(answers(&mut client, &model).await, before, "{what}");
    }

    // Segment 25 belongs to pack events.
    let thief = ModelPack::random(4, "crm", "v4", BUILT_AT, 300, [1, 2, 25]);
    let conflict = push(&mut admin, &thief.bytes(), false).await.unwrap_err();
    assert_eq!(conflict.code(), Code::FailedPrecondition);
    assert!(conflict.message().contains("25"), "{}", conflict.message());
    assert!(
        conflict.message().contains("owned by pack \"events\""),
        "{}",
        conflict.message()
    );

    let older = ModelPack::random(5, "crm", "v1", BUILT_AT, 300, 1..=10);
    let refused_older = push(&mut admin, &older.bytes(), false).await.unwrap_err();
    assert_eq!(refused_older.code(), Code::FailedPrecondition);
    assert!(
        refused_older.message().contains("older"),
        "{}",
        refused_older.message()
    );

    assert_eq!(answers(&mut client, &model).await, before);
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        status.generation, generation_before,
        "refused pushes do not swap"
    );

    // Re-pushing the served version is a no-op success.
    let again = push(&mut admin, &crm.bytes(), false).await.unwrap();
    assert!(again.unchanged);
    assert_eq!(again.generation, generation_before);

    // An older version is accepted when the push says so.
    let downgraded = push(&mut admin, &older.bytes(), true).await.unwrap();
    assert!(!downgraded.unchanged);
    assert_eq!(
        answers(&mut client, &Model::new(vec![older, events]))
            .await
            .len(),
        before.len()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_rollback_and_drop() {
    let data_dir = tempfile::tempdir().unwrap();
    let crm_v1 = ModelPack::random(1, "crm", "v1", BUILT_AT, 400, 1..=10);
    let crm_v2 = ModelPack::random(2, "crm", "v2", BUILT_AT, 400, 1..=10);
    let events = ModelPack::random(3, "events", "v1", BUILT_AT, 400, 20..30);

    let server = TestServer::start(config(data_dir.path())).await;
    let mut admin = server.admin().await;
    push(&mut admin, &crm_v1.bytes(), false).await.unwrap();
    push(&mut admin, &crm_v2.bytes(), false).await.unwrap();
    push(&mut admin, &events.bytes(), false).await.unwrap();
    let current = Model::new(vec![crm_v2.clone(), events.clone()]);
    let mut client = server.segments().await;
    let before = answers(&mut client, &current).await;
    server.stop().await;

    // A new server on the same directory serves the same answers.
    let server = TestServer::start(config(data_dir.path())).await;
    let mut client = server.segments().await;
    assert_eq!(answers(&mut client, &current).await, before);
    let mut admin = server.admin().await;
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    let crm_status = status.packs.iter().find(|pack| pack.name == "crm").unwrap();
    assert_eq!(crm_status.version, "v2");
    assert_eq!(crm_status.previous_version, "v1");

    // Rollback serves v1 again; a second rollback goes back to v2.
    let rolled = admin
        .rollback(RollbackRequest { pack: "crm".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rolled.version, "v1");
    answers(
        &mut client,
        &Model::new(vec![crm_v1.clone(), events.clone()]),
    )
    .await;
    admin
        .rollback(RollbackRequest { pack: "crm".into() })
        .await
        .unwrap();
    answers(&mut client, &current).await;

    // Drop: the segments become unknown; rollback brings the pack back.
    admin
        .drop_pack(DropPackRequest {
            pack: "events".into(),
        })
        .await
        .unwrap();
    let user_id = events.members.keys().next().unwrap().clone();
    let reply = client
        .lookup(LookupRequest {
            user_id: user_id.clone(),
            segment_ids: vec![20, 21],
            at_unix_seconds: BUILT_AT,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.segment_ids.is_empty());
    assert_eq!(reply.unknown_segment_ids, vec![20, 21]);
    let listed = admin
        .list_segments(ListSegmentsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.segments.iter().all(|segment| segment.pack == "crm"));
    let missing = admin
        .drop_pack(DropPackRequest {
            pack: "events".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // The drop survives a restart.
    server.stop().await;
    let server = TestServer::start(config(data_dir.path())).await;
    let mut admin = server.admin().await;
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        status
            .packs
            .iter()
            .map(|pack| pack.name.as_str())
            .collect::<Vec<_>>(),
        vec!["crm"]
    );
    admin
        .rollback(RollbackRequest {
            pack: "events".into(),
        })
        .await
        .unwrap();
    let mut client = server.segments().await;
    answers(&mut client, &current).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_token_and_live_only_on_the_admin_port() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = config(data_dir.path());
    settings.network.admin_token = Some("s3cret-token".into());
    let server = TestServer::start(settings).await;

    let mut anonymous = server.admin_with_token(None).await;
    let denied = anonymous.status(StatusRequest {}).await.unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);
    let pack = ModelPack::random(1, "crm", "v1", BUILT_AT, 50, 1..=3);
    assert_eq!(
        push(&mut anonymous, &pack.bytes(), false)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    let mut wrong = server.admin_with_token(Some("s3cret-tokem")).await;
    assert_eq!(
        wrong.status(StatusRequest {}).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        wrong
            .drop_pack(DropPackRequest { pack: "crm".into() })
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    let mut right = server.admin().await;
    push(&mut right, &pack.bytes(), false).await.unwrap();
    assert_eq!(
        right
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .packs
            .len(),
        1
    );

    // The admin service does not exist on the query port.
    let mut on_query_port = common::admin_client(
        &format!("http://{}", server.query_addr),
        Some("s3cret-token"),
    )
    .await;
    assert_eq!(
        on_query_port
            .status(StatusRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unimplemented
    );
    server.stop().await;
}

#[tokio::test]
async fn a_public_admin_address_without_a_token_refuses_to_start() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = config(data_dir.path());
    settings.network.admin_listen = "0.0.0.0:0".parse().unwrap();
    let error = segd::app::check_settings(&settings).unwrap_err();
    assert!(error.to_string().contains("--admin-token"), "{error}");
    settings.network.admin_token = Some("t".into());
    segd::app::check_settings(&settings).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_previous_version_on_disk_is_data_loss_and_changes_nothing() {
    let data_dir = tempfile::tempdir().unwrap();
    let crm_v1 = ModelPack::random(1, "crm", "v1", BUILT_AT, 300, 1..=10);
    let crm_v2 = ModelPack::random(2, "crm", "v2", BUILT_AT, 300, 1..=10);
    let server = TestServer::start(config(data_dir.path())).await;
    let mut admin = server.admin().await;
    push(&mut admin, &crm_v1.bytes(), false).await.unwrap();
    push(&mut admin, &crm_v2.bytes(), false).await.unwrap();
    let current = Model::new(vec![crm_v2.clone()]);
    let mut client = server.segments().await;
    let before = answers(&mut client, &current).await;

    // The kept v1 rots on disk: one bit flipped in the middle.
    let previous = data_dir.path().join("packs/crm.previous.segpack");
    let mut bytes = std::fs::read(&previous).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&previous, &bytes).unwrap();

    let refused = admin
        .rollback(RollbackRequest { pack: "crm".into() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
    assert!(
        refused.message().contains("crm.previous.segpack"),
        "{}",
        refused.message()
    );
    assert_eq!(answers(&mut client, &current).await, before);
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.packs[0].version, "v2");
    assert_eq!(std::fs::read(&previous).unwrap(), bytes, "left as found");
    let text = server.scrape_metrics().await;
    assert_eq!(
        common::metric_value(
            &text,
            "segd_pack_changes_total",
            "operation=\"rollback\",result=\"refused\",reason=\"damaged_pack\""
        ),
        Some(1.0)
    );
    server.stop().await;
}
