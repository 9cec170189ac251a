//! The real-time overlay against a plain reference model on seeded random
//! data: interleaved pushes (built before and after the updates), rollbacks,
//! adds, removes, expiries, forgets, impressions, refused batches and
//! restarts, each step checked through `BatchLookup` and `Decide` for every
//! user at two times.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};

use common::model::{ModelPack, SegmentDef};
use common::realtime::{Admin, add, forget, remove, update, wait_past};
use common::{TestServer, config, push};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use segd::pack;
use segd::proto::segments_client::SegmentsClient;
use segd::proto::{
    BatchLookupRequest, Candidate, DecideRequest, FrequencyCap, Impression, LookupRequest,
    MemberUpdate, RecordImpressionsRequest, RollbackRequest, SegmentRef,
};
use tonic::Code;
use tonic::transport::Channel;

const SEGMENTS: [(u32, u32); 6] = [
    (1, 0),
    (2, 2 * 86_400),
    (3, 0),
    (4, 10 * 86_400),
    (5, 0),
    (6, 0),
];
const PACK_USERS: usize = 24;
const STEPS: usize = 70;

fn user(number: usize) -> String {
    format!("u{number}")
}

fn all_users() -> Vec<String> {
    (0..PACK_USERS + 6).map(user).collect()
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    add: bool,
    last_seen: i64,
    expires_at: i64,
    /// Upper bound of the server's stamp (the clock after the reply).
    stamped_by: i64,
}

#[derive(Default)]
struct Reference {
    served: Option<ModelPack>,
    previous: Option<ModelPack>,
    /// Updates stamped at or before this are folded for good: both versions
    /// of some swap were built after them.
    fold_horizon: i64,
    overlay: HashMap<(String, u32), Entry>,
    forgotten: HashSet<String>,
    impressions: HashMap<String, u32>,
}

impl Reference {
    /// Serves `next` in place of the served version (push or rollback).
    fn swap_in(&mut self, next: ModelPack) {
        let replaced = self.served.replace(next).expect("a pack is served");
        let built_at = self.served.as_ref().unwrap().built_at;
        self.fold_horizon = self.fold_horizon.max(replaced.built_at.min(built_at));
        self.previous = Some(replaced);
    }

    fn member(&self, user_id: &str, segment_id: u32, at: i64) -> bool {
        let Some(pack) = &self.served else {
            return false;
        };
        if self.forgotten.contains(user_id) {
            return false;
        }
        let ttl = SEGMENTS.iter().find(|(id, _)| *id == segment_id).unwrap().1;
        let counts = |last_seen: i64| {
            let age = (at - last_seen).max(0);
            ttl == 0 || age <= i64::from(ttl)
        };
        match self.overlay.get(&(user_id.to_owned(), segment_id)) {
            Some(entry) if entry.stamped_by > pack.built_at.max(self.fold_horizon) => {
                entry.add
                    && (entry.expires_at == 0 || at < entry.expires_at)
                    && counts(entry.last_seen)
            }
            _ => pack
                .members
                .get(user_id)
                .and_then(|segments| segments.get(&segment_id))
                .is_some_and(|&last_seen| counts(last_seen)),
        }
    }

    fn segments_of(&self, user_id: &str, at: i64) -> Vec<u32> {
        SEGMENTS
            .iter()
            .map(|(id, _)| *id)
            .filter(|&id| self.member(user_id, id, at))
            .collect()
    }
}

fn random_pack(rng: &mut StdRng, version: usize, built_at: i64) -> ModelPack {
    let segments = SEGMENTS
        .iter()
        .map(|&(id, ttl_seconds)| SegmentDef {
            id,
            ttl_seconds,
            with_times: id != 6,
        })
        .collect::<Vec<_>>();
    let mut members: BTreeMap<String, BTreeMap<u32, i64>> = BTreeMap::new();
    for number in 0..PACK_USERS {
        let mut user_segments = BTreeMap::new();
        for segment in &segments {
            if rng.random_bool(0.3) {
                let last_seen = if segment.with_times {
                    let raw = built_at - rng.random_range(0..5 * 86_400);
                    pack::last_seen_from_hours_ago(built_at, pack::hours_ago(built_at, raw))
                } else {
                    built_at
                };
                user_segments.insert(segment.id, last_seen);
            }
        }
        members.insert(user(number), user_segments);
    }
    ModelPack {
        name: "crm".into(),
        version: format!("v{version}"),
        built_at,
        segments,
        members,
    }
}

fn random_update(rng: &mut StdRng, now: i64) -> MemberUpdate {
    let user_id = user(rng.random_range(0..PACK_USERS + 6));
    let segment_id = rng.random_range(1..=6);
    if rng.random_bool(0.3) {
        return remove(&user_id, segment_id);
    }
    let last_seen = now - rng.random_range(0..5 * 86_400);
    let expires_at = if rng.random_bool(0.5) {
        0
    } else {
        now + rng.random_range(-86_400..4 * 86_400)
    };
    add(&user_id, segment_id, last_seen, expires_at)
}

async fn check(
    client: &mut SegmentsClient<Channel>,
    reference: &Reference,
    times: [i64; 2],
    step: usize,
) {
    let users = all_users();
    let requests: Vec<LookupRequest> = users
        .iter()
        .flat_map(|user_id| {
            times.map(|at| LookupRequest {
                user_id: user_id.clone(),
                at_unix_seconds: at,
                ..Default::default()
            })
        })
        .collect();
    let reply = client
        .batch_lookup(BatchLookupRequest { requests })
        .await
        .unwrap()
        .into_inner();
    for (index, response) in reply.responses.iter().enumerate() {
        let user_id = &users[index / 2];
        let at = times[index % 2];
        assert_eq!(
            response.segment_ids,
            reference.segments_of(user_id, at),
            "step {step}: lookup of {user_id} at {at}"
        );
    }
    for user_id in users.iter().step_by(4) {
        check_decide(client, reference, user_id, times[0], step).await;
    }
}

async fn check_decide(
    client: &mut SegmentsClient<Channel>,
    reference: &Reference,
    user_id: &str,
    at: i64,
    step: usize,
) {
    let impressions = reference.impressions.get(user_id).copied().unwrap_or(0);
    let cap = |limit: u32| FrequencyCap {
        key: "li:1".into(),
        limit,
        window_seconds: 0,
        ..Default::default()
    };
    let mut candidates: Vec<Candidate> = SEGMENTS
        .iter()
        .map(|(id, _)| Candidate {
            id: format!("in-{id}"),
            all_of: vec![SegmentRef {
                segment_id: *id,
                max_age_seconds: 0,
            }],
            ..Default::default()
        })
        .collect();
    candidates.push(Candidate {
        id: "room".into(),
        caps: vec![cap(impressions + 1)],
        ..Default::default()
    });
    candidates.push(Candidate {
        id: "full".into(),
        caps: vec![cap(impressions.max(1))],
        ..Default::default()
    });
    let reply = client
        .decide(DecideRequest {
            user_id: user_id.to_owned(),
            candidates,
            at_unix_seconds: at,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let eligible: Vec<bool> = reply
        .decisions
        .iter()
        .map(|decision| decision.eligible)
        .collect();
    let mut expected: Vec<bool> = SEGMENTS
        .iter()
        .map(|(id, _)| reference.member(user_id, *id, at))
        .collect();
    expected.extend([true, impressions == 0]);
    assert_eq!(
        eligible, expected,
        "step {step}: decide for {user_id} ({impressions} impressions)"
    );
}

/// Sends updates and records them in the reference once acknowledged.
async fn apply_updates(admin: &mut Admin, reference: &mut Reference, updates: Vec<MemberUpdate>) {
    eprintln!("  updates {updates:?}");
    let applied = update(admin, updates.clone()).await.unwrap();
    assert_eq!(applied as usize, updates.len());
    let stamped_by = segd::unix_now_seconds();
    for update in updates {
        let entry = Entry {
            add: update.op == 0,
            last_seen: update.last_seen_unix_seconds,
            expires_at: update.expires_at_unix_seconds,
            stamped_by,
        };
        reference
            .overlay
            .insert((update.user_id, update.segment_id), entry);
    }
}

async fn run(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let data_dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(config(data_dir.path())).await;
    let mut admin = server.admin().await;
    let mut client = server.segments().await;
    let start = segd::unix_now_seconds();
    let times = [start + 3_600, start + 3 * 86_400];
    let mut reference = Reference {
        fold_horizon: i64::MIN,
        ..Reference::default()
    };
    let mut version = 1;
    let first = random_pack(&mut rng, version, start - 100);
    push(&mut admin, &first.bytes(), false).await.unwrap();
    reference.served = Some(first);
    for step in 0..STEPS {
        let now = segd::unix_now_seconds();
        let action = rng.random_range(0..100);
        eprintln!("step {step}: action {action}");
        match action {
            0..40 => {
                let count = rng.random_range(1..=8);
                let updates = (0..count).map(|_| random_update(&mut rng, now)).collect();
                apply_updates(&mut admin, &mut reference, updates).await;
            }
            40..50 => {
                let users: Vec<String> = (0..rng.random_range(1..=2))
                    .map(|_| user(rng.random_range(0..PACK_USERS + 6)))
                    .collect();
                let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
                forget(&mut admin, &user_refs).await.unwrap();
                for user_id in users {
                    reference.overlay.retain(|(user, _), _| *user != user_id);
                    reference.impressions.remove(&user_id);
                    reference.forgotten.insert(user_id);
                }
            }
            50..62 => {
                let user_id = user(rng.random_range(0..PACK_USERS + 6));
                client
                    .record_impressions(RecordImpressionsRequest {
                        impressions: vec![Impression {
                            user_id: user_id.clone(),
                            cap_keys: vec!["li:1".into()],
                            ..Default::default()
                        }],
                    })
                    .await
                    .unwrap();
                *reference.impressions.entry(user_id).or_default() += 1;
            }
            62..76 => {
                // Built now (folding every update so far) or long ago (under them all).
                let folding = rng.random_bool(0.5);
                let built_at = if folding {
                    // Every update so far was stamped in an earlier second
                    // (stamps are milliseconds, build times seconds).
                    wait_past(now).await;
                    segd::unix_now_seconds()
                } else {
                    start - 100 - step as i64
                };
                version += 1;
                let next = random_pack(&mut rng, version, built_at);
                push(&mut admin, &next.bytes(), false).await.unwrap();
                reference.swap_in(next);
                if folding {
                    wait_past(built_at).await;
                }
            }
            76..82 if reference.previous.is_some() => {
                admin
                    .rollback(RollbackRequest { pack: "crm".into() })
                    .await
                    .unwrap();
                let restored = reference.previous.take().unwrap();
                reference.swap_in(restored);
            }
            82..90 => {
                let mut updates: Vec<MemberUpdate> = (0..rng.random_range(1..=5))
                    .map(|_| random_update(&mut rng, now))
                    .collect();
                let bad_index = rng.random_range(0..=updates.len());
                updates.insert(bad_index, add("u1", 77, now, 0));
                let error = update(&mut admin, updates).await.unwrap_err();
                assert_eq!(error.code(), Code::InvalidArgument);
                assert!(
                    error
                        .message()
                        .starts_with(&format!("updates[{bad_index}].segment_id")),
                    "{}",
                    error.message()
                );
            }
            90..95 => {
                server.stop().await;
                server = TestServer::start(config(data_dir.path())).await;
                admin = server.admin().await;
                client = server.segments().await;
            }
            _ => {}
        }
        check(&mut client, &reference, times, step).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_matches_the_reference_model() {
    for seed in [11, 12, 13] {
        run(seed).await;
    }
}
