//! Lookups through a real server equal the plain reference model, for listed
//! segments and for all segments, across two packs, with per-member times,
//! TTLs and several max ages; bad requests get INVALID_ARGUMENT.

mod common;

use common::model::{Model, ModelPack};
use common::{TestServer, config, push};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use segd::proto::{BatchLookupRequest, LookupRequest};
use tonic::Code;

const BUILT_AT: i64 = 1_790_000_000;

fn two_pack_model() -> Model {
    Model::new(vec![
        ModelPack::random(1, "crm", "v1", BUILT_AT, 1200, 1..=25),
        ModelPack::random(2, "site-events", "v1", BUILT_AT - 3 * 3600, 1200, 100..125),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_equal_the_reference_model() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(data_dir.path())).await;
    let model = two_pack_model();
    let mut admin = server.admin().await;
    for pack in &model.packs {
        push(&mut admin, &pack.bytes(), false).await.unwrap();
    }
    let mut client = server.segments().await;
    let all_users: Vec<String> = model
        .packs
        .iter()
        .flat_map(|pack| pack.members.keys().cloned())
        .chain((0..50).map(|n| format!("stranger-{n}")))
        .collect();
    assert!(all_users.len() >= 2000);
    let segment_pool: Vec<u32> = (0..30).chain(95..130).collect();
    let mut rng = StdRng::seed_from_u64(7);
    let max_ages = [0u32, 3600, 86_400, 3 * 86_400, 10 * 86_400, 40 * 86_400];
    let ats = [BUILT_AT, BUILT_AT + 5 * 86_400, BUILT_AT - 3600];
    let mut checked = 0;
    for (index, user_id) in all_users.iter().enumerate() {
        let max_age = *max_ages.choose(&mut rng).unwrap();
        let at = *ats.choose(&mut rng).unwrap();
        let listed: Vec<u32> = if index % 3 == 0 {
            Vec::new()
        } else {
            (0..rng.random_range(1..=20))
                .map(|_| *segment_pool.choose(&mut rng).unwrap())
                .collect()
        };
        let reply = client
            .lookup(LookupRequest {
                user_id: user_id.clone(),
                segment_ids: listed.clone(),
                max_age_seconds: max_age,
                at_unix_seconds: at,
            })
            .await
            .unwrap()
            .into_inner();
        let (expected, unknown) = model.lookup(user_id, &listed, max_age, at);
        assert_eq!(
            reply.segment_ids, expected,
            "user {user_id} listed {listed:?} max_age {max_age} at {at}"
        );
        assert_eq!(
            reply.unknown_segment_ids, unknown,
            "user {user_id} listed {listed:?}"
        );
        checked += 1;
    }
    assert_eq!(checked, all_users.len());

    // BatchLookup answers the same, in order, from one generation.
    let sample: Vec<&String> = all_users.iter().step_by(37).collect();
    let requests: Vec<LookupRequest> = sample
        .iter()
        .map(|user_id| LookupRequest {
            user_id: (*user_id).clone(),
            segment_ids: Vec::new(),
            max_age_seconds: 86_400 * 7,
            at_unix_seconds: BUILT_AT,
        })
        .collect();
    let batch = client
        .batch_lookup(BatchLookupRequest { requests })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.responses.len(), sample.len());
    for (user_id, response) in sample.iter().zip(&batch.responses) {
        assert_eq!(
            response.segment_ids,
            model.lookup(user_id, &[], 86_400 * 7, BUILT_AT).0
        );
        assert_eq!(response.generation, batch.generation);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_the_server_keeps_serving() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = config(data_dir.path());
    settings.limits.max_segment_ids = 5;
    settings.limits.max_batch_lookups = 3;
    let server = TestServer::start(settings).await;
    let model = two_pack_model();
    let mut admin = server.admin().await;
    push(&mut admin, &model.packs[0].bytes(), false)
        .await
        .unwrap();
    let mut client = server.segments().await;

    let empty_user = client.lookup(LookupRequest::default()).await.unwrap_err();
    assert_eq!(empty_user.code(), Code::InvalidArgument);
    assert!(
        empty_user.message().contains("user_id"),
        "{}",
        empty_user.message()
    );

    let too_many = client
        .lookup(LookupRequest {
            user_id: "u".into(),
            segment_ids: (1..=6).collect(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert!(
        too_many.message().contains("segment_ids"),
        "{}",
        too_many.message()
    );

    let big_batch = client
        .batch_lookup(BatchLookupRequest {
            requests: vec![
                LookupRequest {
                    user_id: "u".into(),
                    ..Default::default()
                };
                4
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(big_batch.code(), Code::InvalidArgument);
    assert!(
        big_batch.message().contains("requests"),
        "{}",
        big_batch.message()
    );

    let bad_entry = client
        .batch_lookup(BatchLookupRequest {
            requests: vec![
                LookupRequest {
                    user_id: "u".into(),
                    ..Default::default()
                },
                LookupRequest::default(),
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(bad_entry.code(), Code::InvalidArgument);
    assert!(
        bad_entry.message().contains("requests[1].user_id"),
        "{}",
        bad_entry.message()
    );

    // Still serving, same answers.
    let user_id = model.packs[0].members.keys().next().unwrap().clone();
    let reply = client
        .lookup(LookupRequest {
            user_id: user_id.clone(),
            at_unix_seconds: BUILT_AT,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.segment_ids,
        Model::new(vec![model.packs[0].clone()])
            .lookup(&user_id, &[], 0, BUILT_AT)
            .0
    );
    server.stop().await;
}
