//! Hot swap under load: four tasks query without pause while a new version of
//! a pack is pushed; no query fails and every answer equals the reference of
//! exactly one generation, never a mix.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::model::{Model, ModelPack};
use common::{TestServer, config, push};
use segd::proto::{BatchLookupRequest, LookupRequest};

const BUILT_AT: i64 = 1_790_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_fail_no_query_and_never_mix_generations() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(data_dir.path())).await;
    let other = ModelPack::random(10, "crm", "v1", BUILT_AT, 500, 1..=10);
    let old = ModelPack::random(11, "events", "v1", BUILT_AT, 800, 20..40);
    // Same users, different memberships: v2 must be told apart from v1.
    let mut new = ModelPack::random(12, "events", "v2", BUILT_AT, 800, 20..40);
    new.members = new
        .members
        .into_values()
        .zip(old.members.keys().cloned())
        .map(|(segments, user)| (user, segments))
        .collect();
    let mut admin = server.admin().await;
    push(&mut admin, &other.bytes(), false).await.unwrap();
    let first = push(&mut admin, &old.bytes(), false).await.unwrap();

    let models: HashMap<u64, Model> = HashMap::from([(
        first.generation,
        Model::new(vec![other.clone(), old.clone()]),
    )]);
    let users: Arc<Vec<String>> = Arc::new(old.members.keys().cloned().collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for task_number in 0..4usize {
        let mut client = server.segments().await;
        let users = users.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut index = task_number;
            while !stop.load(Ordering::Relaxed) || answers.len() < 200 {
                let user_id = users[index % users.len()].clone();
                index += 7;
                if index % 5 == 0 {
                    // A batch spans many users: all answers from one generation.
                    let requests: Vec<LookupRequest> = (0..20)
                        .map(|offset| LookupRequest {
                            user_id: users[(index + offset) % users.len()].clone(),
                            at_unix_seconds: BUILT_AT,
                            ..Default::default()
                        })
                        .collect();
                    let reply = client
                        .batch_lookup(BatchLookupRequest {
                            requests: requests.clone(),
                        })
                        .await
                        .expect("no batch fails during a swap")
                        .into_inner();
                    for (request, response) in requests.iter().zip(reply.responses) {
                        assert_eq!(response.generation, reply.generation);
                        answers.push((
                            request.user_id.clone(),
                            reply.generation,
                            response.segment_ids,
                        ));
                    }
                } else {
                    let reply = client
                        .lookup(LookupRequest {
                            user_id: user_id.clone(),
                            at_unix_seconds: BUILT_AT,
                            ..Default::default()
                        })
                        .await
                        .expect("no lookup fails during a swap")
                        .into_inner();
                    answers.push((user_id, reply.generation, reply.segment_ids));
                }
            }
            answers
        }));
    }
    let second = push(&mut admin, &new.bytes(), false).await.unwrap();
    assert!(second.generation > first.generation);
    let mut models = models;
    models.insert(
        second.generation,
        Model::new(vec![other.clone(), new.clone()]),
    );
    // Let every task see the new generation a while before stopping.
    let mut probe = server.segments().await;
    loop {
        let reply = probe
            .lookup(LookupRequest {
                user_id: "probe".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if reply.generation == second.generation {
            break;
        }
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen_generations = std::collections::BTreeSet::new();
    let mut total = 0;
    for task in tasks {
        for (user_id, generation, segment_ids) in task.await.unwrap() {
            let model = models
                .get(&generation)
                .unwrap_or_else(|| panic!("unexpected generation {generation}"));
            assert_eq!(
                segment_ids,
                model.lookup(&user_id, &[], 0, BUILT_AT).0,
                "user {user_id} generation {generation}"
            );
            seen_generations.insert(generation);
            total += 1;
        }
    }
    assert!(total >= 800);
    assert!(seen_generations.contains(&second.generation));
    server.stop().await;
}
