//! Acknowledged updates and forgets survive `kill -9` of the real binary,
//! taken at random moments while writers send them: after a restart every
//! acknowledged one is there and the one in flight is there whole or not at
//! all. Each round's writers work on users of their own, so the operation
//! left in flight by one crash stays "whole or not at all" in every later
//! check. A forgotten user's caps stay reset through the crash.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::SegdProcess;
use common::realtime::{add, remove};
use common::{SimpleSegment, admin_client, push, simple_pack};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use segd::proto::{
    BatchLookupRequest, Candidate, DecideRequest, ForgetUsersRequest, FrequencyCap, Impression,
    LookupRequest, MemberUpdate, RecordImpressionsRequest, UpdateMembersRequest,
};

const WRITERS: usize = 2;
const USERS_PER_WRITER: usize = 20;
const ROUNDS: usize = 3;

/// A writer's users: `writer` counts across rounds (round * WRITERS + w).
fn user(writer: usize, number: usize) -> String {
    format!("w{writer}-u{number}")
}

/// Users 0..5 of each writer are in segments 1 and 2 of the pack.
fn pack_bytes(built_at: i64) -> Vec<u8> {
    let members: Vec<String> = (0..WRITERS * ROUNDS)
        .flat_map(|writer| (0..5).map(move |number| user(writer, number)))
        .collect();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    simple_pack(
        "crm",
        "v1",
        built_at,
        &[1, 2, 3, 4].map(|id| SimpleSegment {
            id,
            kind: "retargeting",
            members: if id <= 2 { &members } else { &[] },
        }),
    )
}

#[derive(Debug, Clone)]
enum Op {
    Update(Vec<MemberUpdate>),
    Forget(Vec<String>),
}

/// One writer's users as the acknowledged operations left them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Users {
    forgotten: BTreeSet<String>,
    /// (user, segment) → member?
    overlay: BTreeMap<(String, u32), bool>,
}

impl Users {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Update(updates) => {
                for update in updates {
                    self.overlay
                        .insert((update.user_id.clone(), update.segment_id), update.op == 0);
                }
            }
            Op::Forget(users) => {
                for user_id in users {
                    self.overlay.retain(|(user, _), _| user != user_id);
                    self.forgotten.insert(user_id.clone());
                }
            }
        }
    }

    fn segments_of(&self, user_id: &str, number: usize) -> Vec<u32> {
        if self.forgotten.contains(user_id) {
            return Vec::new();
        }
        (1..=4)
            .filter(|&segment_id| {
                self.overlay
                    .get(&(user_id.to_owned(), segment_id))
                    .copied()
                    .unwrap_or(number < 5 && segment_id <= 2)
            })
            .collect()
    }
}

#[derive(Default)]
struct WriterLog {
    acknowledged: Vec<Op>,
    in_flight: Option<Op>,
}

fn random_op(rng: &mut StdRng, writer: usize, last_seen: i64) -> Op {
    if rng.random_bool(0.15) {
        let users = (0..rng.random_range(1..=2))
            .map(|_| user(writer, rng.random_range(0..USERS_PER_WRITER)))
            .collect();
        return Op::Forget(users);
    }
    let updates = (0..rng.random_range(1..=50))
        .map(|_| {
            let user_id = user(writer, rng.random_range(0..USERS_PER_WRITER));
            let segment_id = rng.random_range(1..=4);
            if rng.random_bool(0.4) {
                remove(&user_id, segment_id)
            } else {
                add(&user_id, segment_id, last_seen, 0)
            }
        })
        .collect();
    Op::Update(updates)
}

async fn write_until_killed(
    admin_addr: String,
    writer: usize,
    seed: u64,
    log: Arc<Mutex<WriterLog>>,
    last_seen: i64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut admin = admin_client(&format!("http://{admin_addr}"), None).await;
    loop {
        let op = random_op(&mut rng, writer, last_seen);
        log.lock().unwrap().in_flight = Some(op.clone());
        let sent = match &op {
            Op::Update(updates) => admin
                .update_members(UpdateMembersRequest {
                    updates: updates.clone(),
                })
                .await
                .map(|_| ()),
            Op::Forget(users) => admin
                .forget_users(ForgetUsersRequest {
                    user_ids: users.clone(),
                })
                .await
                .map(|_| ()),
        };
        if sent.is_err() {
            return;
        }
        let mut log = log.lock().unwrap();
        log.in_flight = None;
        log.acknowledged.push(op);
    }
}

/// Each writer's users after the restart: what its acknowledged operations
/// say, or that plus the whole operation in flight.
async fn check_survivors(
    server: &SegdProcess,
    logs: &[Arc<Mutex<WriterLog>>],
    at: i64,
    round: usize,
) {
    let mut client = server.segments().await;
    for (writer, log) in logs.iter().enumerate() {
        let (acknowledged, with_in_flight) = {
            let log = log.lock().unwrap();
            let mut acknowledged = Users::default();
            for op in &log.acknowledged {
                acknowledged.apply(op);
            }
            let mut with_in_flight = acknowledged.clone();
            if let Some(op) = &log.in_flight {
                with_in_flight.apply(op);
            }
            (acknowledged, with_in_flight)
        };
        let requests = (0..USERS_PER_WRITER)
            .map(|number| LookupRequest {
                user_id: user(writer, number),
                at_unix_seconds: at,
                ..Default::default()
            })
            .collect();
        let reply = client
            .batch_lookup(BatchLookupRequest { requests })
            .await
            .unwrap()
            .into_inner();
        let seen: Vec<Vec<u32>> = reply
            .responses
            .into_iter()
            .map(|response| response.segment_ids)
            .collect();
        let expect = |users: &Users| -> Vec<Vec<u32>> {
            (0..USERS_PER_WRITER)
                .map(|number| users.segments_of(&user(writer, number), number))
                .collect()
        };
        assert!(
            seen == expect(&acknowledged) || seen == expect(&with_in_flight),
            "round {round}, writer {writer}: {seen:?} is neither the acknowledged state {:?} nor that plus the operation in flight {:?}",
            expect(&acknowledged),
            expect(&with_in_flight)
        );
    }
}

async fn crash_under_writers(fsync: &str, seed: u64) {
    let data_dir = tempfile::tempdir().unwrap();
    let flags = ["--fsync", fsync];
    let now = segd::unix_now_seconds();
    let logs: Vec<Arc<Mutex<WriterLog>>> = (0..WRITERS * ROUNDS).map(|_| Arc::default()).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..ROUNDS {
        let server = SegdProcess::start(data_dir.path(), &flags).await;
        if round == 0 {
            let mut admin = admin_client(&format!("http://{}", server.admin_addr), None).await;
            push(&mut admin, &pack_bytes(now - 10_000), false)
                .await
                .unwrap();
        } else {
            check_survivors(&server, &logs, now, round).await;
        }
        let writers: Vec<_> = (round * WRITERS..(round + 1) * WRITERS)
            .map(|writer| {
                tokio::spawn(write_until_killed(
                    server.admin_addr.clone(),
                    writer,
                    seed * 100 + writer as u64,
                    logs[writer].clone(),
                    now - 60,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        server.kill_9();
        for writer in writers {
            writer.await.unwrap();
        }
    }
    let server = SegdProcess::start(data_dir.path(), &flags).await;
    check_survivors(&server, &logs, now, ROUNDS).await;
    let acknowledged: usize = logs
        .iter()
        .map(|log| log.lock().unwrap().acknowledged.len())
        .sum();
    assert!(
        acknowledged > 20,
        "the writers got only {acknowledged} operations through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_updates_and_forgets_survive_kill_9_fsync_always() {
    crash_under_writers("always", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_updates_and_forgets_survive_kill_9_fsync_interval() {
    crash_under_writers("interval", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forget_resets_caps_through_kill_9() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = SegdProcess::start(data_dir.path(), &[]).await;
    let mut admin = admin_client(&format!("http://{}", server.admin_addr), None).await;
    push(
        &mut admin,
        &pack_bytes(segd::unix_now_seconds() - 10_000),
        false,
    )
    .await
    .unwrap();
    let mut client = server.segments().await;
    let record = |count: usize| RecordImpressionsRequest {
        impressions: (0..count)
            .map(|_| Impression {
                user_id: "w0-u1".into(),
                cap_keys: vec!["li:1".into()],
                ..Default::default()
            })
            .collect(),
    };
    client.record_impressions(record(3)).await.unwrap();
    admin
        .forget_users(ForgetUsersRequest {
            user_ids: vec!["w0-u1".into()],
        })
        .await
        .unwrap();
    client.record_impressions(record(1)).await.unwrap();
    server.kill_9();

    let server = SegdProcess::start(data_dir.path(), &[]).await;
    let mut client = server.segments().await;
    let candidates = [1, 2]
        .map(|limit| Candidate {
            id: format!("limit-{limit}"),
            caps: vec![FrequencyCap {
                key: "li:1".into(),
                limit,
                window_seconds: 0,
                ..Default::default()
            }],
            ..Default::default()
        })
        .to_vec();
    let reply = client
        .decide(DecideRequest {
            user_id: "w0-u1".into(),
            candidates,
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
    assert_eq!(
        eligible,
        vec![false, true],
        "exactly the one impression after the forget"
    );
    let lookup = common::lookup_all(&mut client, "w0-u1", 0).await;
    assert!(lookup.segment_ids.is_empty());
}
