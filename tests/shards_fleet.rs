//! The fleet with audience shards, against one real `nats-server` and real
//! `segd` processes: 2 shards × 2 replicas. One push through one replica is
//! served by both replicas of its shard and by a replica started afterwards;
//! rollback and drop reach the shard; `PutLineItems` on one replica is used
//! by `Decide` on all; caps are shared within a shard; lookups routed by the
//! shard function equal the reference model on every replica.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::model::{Model, ModelPack};
use common::nats;
use common::process::SegdProcess;
use common::{admin_client, push};
use segd::proto::{
    Candidate, DecideRequest, DropPackRequest, FrequencyCap, Impression, LookupRequest,
    PutLineItemsRequest, Reason, RecordImpressionsRequest, RollbackRequest, StatusRequest,
};
use segd::shard::shard_of_user;
use tokio::time::Instant;
use tonic::Code;

const BUILT_AT: i64 = 1_790_000_000;
const DEADLINE: Duration = Duration::from_secs(30);

struct Replica {
    process: SegdProcess,
    shard: u32,
    _dir: tempfile::TempDir,
}

impl Replica {
    async fn start(nats_url: &str, shard: u32, name: &str) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let shard_flag = format!("{shard}/2");
        let process = SegdProcess::start(
            dir.path(),
            &[
                "--fleet-nats",
                nats_url,
                "--replica-id",
                name,
                "--shard",
                &shard_flag,
            ],
        )
        .await;
        Replica {
            process,
            shard,
            _dir: dir,
        }
    }

    fn admin_url(&self) -> String {
        format!("http://{}", self.process.admin_addr)
    }

    async fn served_version(&self, pack: &str) -> Option<String> {
        let mut admin = admin_client(&self.admin_url(), None).await;
        let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
        status
            .packs
            .iter()
            .find(|served| served.name == pack)
            .map(|served| served.version.clone())
    }

    /// Polls until this replica serves `version` of `pack` (`None`: no such pack).
    async fn wait_for_version(&self, pack: &str, version: Option<&str>) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let served = self.served_version(pack).await;
            if served.as_deref() == version {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica of shard {} serves {served:?} of {pack}, not {version:?}",
                self.shard
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn segctl(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_segctl"))
        .args(args)
        .output()
        .unwrap()
}

/// `segctl build --shards 2` of the model pack; the two shard files.
fn build_two_shards(pack: &ModelPack, dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let mut input = String::new();
    for (user_id, segments) in &pack.members {
        for (segment_id, last_seen) in segments {
            input.push_str(&format!("{user_id}\t{segment_id}\t{last_seen}\n"));
        }
    }
    let definitions: String = pack
        .segments
        .iter()
        .map(|s| {
            format!(
                "{}\tsegment-{}\tretargeting\t{}\n",
                s.id, s.id, s.ttl_seconds
            )
        })
        .collect();
    std::fs::write(dir.join("in.tsv"), input).unwrap();
    std::fs::write(dir.join("segments.tsv"), definitions).unwrap();
    let output = dir.join("crm.segpack");
    let built = segctl(&[
        "build",
        "--pack",
        "crm",
        "--version",
        &pack.version,
        "--built-at",
        &BUILT_AT.to_string(),
        "--input",
        dir.join("in.tsv").to_str().unwrap(),
        "--segments",
        dir.join("segments.tsv").to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--shards",
        "2",
    ]);
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    (0..2)
        .map(|index| dir.join(format!("crm.shard-{index}-of-2.segpack")))
        .collect()
}

/// A model whose segments all carry times (the TSV writes every time).
fn model(version: &str, seed: u64) -> ModelPack {
    let mut pack = ModelPack::random(seed, "crm", version, BUILT_AT, 1500, 1..=8);
    for segment in &mut pack.segments {
        segment.with_times = true;
    }
    pack
}

async fn assert_routed_lookups_equal(model: &Model, pack: &ModelPack, replicas: &[&Replica]) {
    for replica in replicas {
        let mut client = replica.process.segments().await;
        for user_id in pack.members.keys() {
            if shard_of_user(user_id, 2) != replica.shard {
                continue;
            }
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
                model.lookup(user_id, &[], 0, BUILT_AT).0,
                "{user_id}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_push_reaches_every_replica_of_its_shard_and_one_started_later() {
    let nats_store = tempfile::tempdir().unwrap();
    let node = nats::single(nats_store.path());
    let url = node.url();
    let work = tempfile::tempdir().unwrap();
    let v1 = model("v1", 21);
    let v1_files = build_two_shards(&v1, &work.path().join("v1"));
    let v2 = model("v2", 22);
    let v2_files = build_two_shards(&v2, &work.path().join("v2"));

    let s0a = Replica::start(&url, 0, "s0a").await;
    let s0b = Replica::start(&url, 0, "s0b").await;
    let s1a = Replica::start(&url, 1, "s1a").await;
    let s1b = Replica::start(&url, 1, "s1b").await;

    // One push per shard, each through one replica: served there at the reply.
    for (replica, file) in [(&s0a, &v1_files[0]), (&s1b, &v1_files[1])] {
        let mut admin = admin_client(&replica.admin_url(), None).await;
        let reply = push(&mut admin, &std::fs::read(file).unwrap(), false)
            .await
            .unwrap();
        assert_eq!(reply.version, "v1");
        assert_eq!(replica.served_version("crm").await.as_deref(), Some("v1"));
    }
    // A pack of the other shard is refused, in fleet mode too.
    let mut admin = admin_client(&s0b.admin_url(), None).await;
    let refused = push(&mut admin, &std::fs::read(&v1_files[1]).unwrap(), false)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    for replica in [&s0b, &s1a] {
        replica.wait_for_version("crm", Some("v1")).await;
    }
    let v1_model = Model::new(vec![v1.clone()]);
    assert_routed_lookups_equal(&v1_model, &v1, &[&s0a, &s0b, &s1a, &s1b]).await;

    // A replica started afterwards converges by itself.
    let s0c = Replica::start(&url, 0, "s0c").await;
    s0c.wait_for_version("crm", Some("v1")).await;
    assert_routed_lookups_equal(&v1_model, &v1, &[&s0c]).await;

    // v2 through another replica, then a rollback through a third: the shard follows.
    let mut admin = admin_client(&s0b.admin_url(), None).await;
    push(&mut admin, &std::fs::read(&v2_files[0]).unwrap(), false)
        .await
        .unwrap();
    for replica in [&s0a, &s0b, &s0c] {
        replica.wait_for_version("crm", Some("v2")).await;
    }
    let v2_model = Model::new(vec![v2.clone()]);
    assert_routed_lookups_equal(&v2_model, &v2, &[&s0a, &s0c]).await;
    let mut admin = admin_client(&s0c.admin_url(), None).await;
    let rolled = admin
        .rollback(RollbackRequest { pack: "crm".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rolled.version, "v1");
    for replica in [&s0a, &s0b, &s0c] {
        replica.wait_for_version("crm", Some("v1")).await;
    }
    // Shard 1 never saw shard 0's changes.
    assert_eq!(s1a.served_version("crm").await.as_deref(), Some("v1"));

    // Drop through one replica of shard 1: both stop serving it.
    let mut admin = admin_client(&s1a.admin_url(), None).await;
    admin
        .drop_pack(DropPackRequest { pack: "crm".into() })
        .await
        .unwrap();
    for replica in [&s1a, &s1b] {
        replica.wait_for_version("crm", None).await;
    }
    assert_eq!(s0a.served_version("crm").await.as_deref(), Some("v1"));
    let mut admin = admin_client(&s1b.admin_url(), None).await;
    push(&mut admin, &std::fs::read(&v1_files[1]).unwrap(), true)
        .await
        .unwrap();
    s1a.wait_for_version("crm", Some("v1")).await;

    // Every replica agrees: fleet-status exits 0 and shows the intended version.
    let addrs: Vec<String> = [&s0a, &s0b, &s0c, &s1a, &s1b]
        .iter()
        .map(|r| r.admin_url())
        .collect();
    let status = segctl(&["fleet-status", "--addrs", &addrs.join(",")]);
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{table}");
    assert_eq!(table.matches("crm=v1").count(), 5, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_items_reach_every_replica_and_caps_are_shared_within_a_shard() {
    let nats_store = tempfile::tempdir().unwrap();
    let node = nats::single(nats_store.path());
    let url = node.url();
    let replicas = [
        Replica::start(&url, 0, "s0a").await,
        Replica::start(&url, 0, "s0b").await,
        Replica::start(&url, 1, "s1a").await,
        Replica::start(&url, 1, "s1b").await,
    ];
    let capped = Candidate {
        id: "li-capped".into(),
        caps: vec![FrequencyCap {
            key: "li:capped".into(),
            limit: 2,
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut admin = admin_client(&replicas[2].admin_url(), None).await;
    admin
        .put_line_items(PutLineItemsRequest {
            version: "li-1".into(),
            line_items: vec![capped],
        })
        .await
        .unwrap();
    let users: Vec<String> = (0..2)
        .map(|shard| {
            (0..1000)
                .map(|n| format!("user-{n}"))
                .find(|id| shard_of_user(id, 2) == shard)
                .unwrap()
        })
        .collect();
    let decide = |user: &str| DecideRequest {
        user_id: user.to_owned(),
        line_item_ids: vec!["li-capped".into()],
        ..Default::default()
    };
    // Registered on every replica of both shards.
    for replica in &replicas {
        let mut client = replica.process.segments().await;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let reply = client
                .decide(decide(&users[replica.shard as usize]))
                .await
                .unwrap();
            let decision = &reply.into_inner().decisions[0];
            if decision.detail != "unknown line item" {
                assert!(decision.eligible, "{decision:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "line items never reached shard {}",
                replica.shard
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Two impressions recorded on one replica of shard 1 cap the user on the other.
    let mut recorder = replicas[2].process.segments().await;
    let impression = |id: &str| Impression {
        user_id: users[1].clone(),
        cap_keys: vec!["li:capped".into()],
        impression_id: id.to_owned(),
        ..Default::default()
    };
    recorder
        .record_impressions(RecordImpressionsRequest {
            impressions: vec![impression("a"), impression("b")],
        })
        .await
        .unwrap();
    let mut other = replicas[3].process.segments().await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reply = other.decide(decide(&users[1])).await.unwrap().into_inner();
        if reply.decisions[0].reason == Reason::FrequencyCapped as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "cap not shared within shard 1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Shard 0 consumes only its own subject: the same cap key there is untouched.
    let mut shard_0 = replicas[0].process.segments().await;
    let reply = shard_0
        .decide(decide(&users[0]))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.decisions[0].eligible, "{:?}", reply.decisions[0]);
    let mut admin = admin_client(&replicas[0].admin_url(), None).await;
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        status.frequency.unwrap().events,
        0,
        "shard 0 applied shard 1's impressions"
    );
}
