//! `segctl build --shards N` and `segd serve --shard I/N` end to end, with
//! real processes and files: lookups routed by the shard function equal the
//! reference model for every user; a pack of another shard or shard count is
//! refused with FAILED_PRECONDITION naming both, whether pushed, dropped in
//! the watch directory or found in the data directory at start-up.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::model::{Model, ModelPack};
use common::process::SegdProcess;
use common::{TestServer, admin_client, config, push};
use segd::proto::{LookupRequest, StatusRequest};
use segd::shard::{Shard, shard_of_user};
use tonic::Code;

const BUILT_AT: i64 = 1_790_000_000;

/// The model's memberships and segment definitions as `segctl build` input.
fn write_tsv(pack: &ModelPack, dir: &Path) -> (PathBuf, PathBuf) {
    let mut memberships = String::new();
    for (user_id, segments) in &pack.members {
        for (segment_id, last_seen) in segments {
            let with_times = pack
                .segments
                .iter()
                .any(|s| s.id == *segment_id && s.with_times);
            if with_times {
                memberships.push_str(&format!("{user_id}\t{segment_id}\t{last_seen}\n"));
            } else {
                memberships.push_str(&format!("{user_id}\t{segment_id}\n"));
            }
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
    let input = dir.join("memberships.tsv");
    let segments = dir.join("segments.tsv");
    std::fs::write(&input, memberships).unwrap();
    std::fs::write(&segments, definitions).unwrap();
    (input, segments)
}

fn segctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_segctl"))
        .args(args)
        .output()
        .unwrap()
}

/// Builds `pack` into `count` shard files under `dir`; returns their paths.
fn build_shards(pack: &ModelPack, dir: &Path, count: u32) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let (input, segments) = write_tsv(pack, dir);
    let output = dir.join(format!("{}.segpack", pack.name));
    let built = segctl(&[
        "build",
        "--pack",
        &pack.name,
        "--version",
        &pack.version,
        "--built-at",
        &BUILT_AT.to_string(),
        "--input",
        input.to_str().unwrap(),
        "--segments",
        segments.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--shards",
        &count.to_string(),
    ]);
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let files: Vec<PathBuf> = (0..count)
        .map(|index| dir.join(format!("{}.shard-{index}-of-{count}.segpack", pack.name)))
        .collect();
    for file in &files {
        assert!(file.exists(), "{} not written", file.display());
    }
    assert!(!output.exists(), "an unsharded file was written too");
    files
}

fn model() -> (Model, ModelPack) {
    let pack = ModelPack::random(11, "crm", "v1", BUILT_AT, 3000, 1..=12);
    (Model::new(vec![pack.clone()]), pack)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_lookups_over_two_shards_equal_the_reference_model() {
    let (model, pack) = model();
    let work = tempfile::tempdir().unwrap();
    let files = build_shards(&pack, work.path(), 2);
    for (index, file) in files.iter().enumerate() {
        let inspected = segctl(&["inspect", file.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&inspected.stdout);
        assert!(
            text.contains(&format!("shard:       {index} of 2")),
            "{text}"
        );
    }
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut replicas = Vec::new();
    for (index, dir) in dirs.iter().enumerate() {
        let shard = format!("{index}/2");
        let replica = SegdProcess::start(dir.path(), &["--shard", &shard]).await;
        let admin_addr = format!("http://{}", replica.admin_addr);
        let pushed = segctl(&[
            "push",
            "--admin-addr",
            &admin_addr,
            files[index].to_str().unwrap(),
        ]);
        assert!(
            pushed.status.success(),
            "{}",
            String::from_utf8_lossy(&pushed.stderr)
        );
        replicas.push(replica);
    }
    let mut clients = Vec::new();
    for replica in &replicas {
        clients.push(replica.segments().await);
    }
    let users: Vec<String> = pack
        .members
        .keys()
        .cloned()
        .chain((0..100).map(|n| format!("stranger-{n}")))
        .collect();
    let mut per_shard = [0usize; 2];
    for (index, user_id) in users.iter().enumerate() {
        let shard = shard_of_user(user_id, 2) as usize;
        per_shard[shard] += 1;
        let (segment_ids, max_age) = match index % 3 {
            0 => (Vec::new(), 0),
            1 => (vec![1, 3, 5, 7, 11, 40], 5 * 86_400),
            _ => (vec![2, 4, 6], 0),
        };
        let reply = clients[shard]
            .lookup(LookupRequest {
                user_id: user_id.clone(),
                segment_ids: segment_ids.clone(),
                max_age_seconds: max_age,
                at_unix_seconds: BUILT_AT + 86_400,
            })
            .await
            .unwrap()
            .into_inner();
        let (matches, unknown) = model.lookup(user_id, &segment_ids, max_age, BUILT_AT + 86_400);
        assert_eq!(reply.segment_ids, matches, "{user_id} on shard {shard}");
        assert_eq!(reply.unknown_segment_ids, unknown, "{user_id}");
    }
    assert!(per_shard.iter().all(|&users| users > 1000), "{per_shard:?}");

    // Each replica holds only its shard's users.
    for (index, replica) in replicas.iter().enumerate() {
        let mut admin = admin_client(&format!("http://{}", replica.admin_addr), None).await;
        let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
        let in_shard = pack
            .members
            .iter()
            // Users without a segment are not in the TSV, so not in the pack.
            .filter(|(user, segments)| {
                !segments.is_empty() && shard_of_user(user, 2) == index as u32
            })
            .count();
        assert_eq!(status.packs[0].users, in_shard as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_of_another_shard_or_shard_count_is_refused_naming_both() {
    let (_, pack) = model();
    let work = tempfile::tempdir().unwrap();
    let halves = build_shards(&pack, &work.path().join("2"), 2);
    let thirds = build_shards(&pack, &work.path().join("3"), 3);
    let data_dir = tempfile::tempdir().unwrap();
    let replica = SegdProcess::start(data_dir.path(), &["--shard", "0/2"]).await;
    let mut admin = admin_client(&format!("http://{}", replica.admin_addr), None).await;
    push(&mut admin, &std::fs::read(&halves[0]).unwrap(), false)
        .await
        .unwrap();
    for (file, named) in [
        (&halves[1], "shard 1/2"),
        (&thirds[0], "shard 0/3"),
        (&unsharded(&pack, work.path()), "shard 0/1"),
    ] {
        let refused = push(&mut admin, &std::fs::read(file).unwrap(), true)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains(named), "{}", refused.message());
        assert!(
            refused.message().contains("shard 0/2"),
            "{}",
            refused.message()
        );
    }
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.packs.len(), 1);
    let files_on_disk: Vec<_> = std::fs::read_dir(data_dir.path().join("packs"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(files_on_disk, vec![std::ffi::OsString::from("crm.segpack")]);
}

/// An unsharded build of `pack`.
fn unsharded(pack: &ModelPack, dir: &Path) -> PathBuf {
    let dir = dir.join("1");
    std::fs::create_dir_all(&dir).unwrap();
    let (input, segments) = write_tsv(pack, &dir);
    let output = dir.join("crm.segpack");
    let built = segctl(&[
        "build",
        "--pack",
        "crm",
        "--version",
        "v1",
        "--built-at",
        &BUILT_AT.to_string(),
        "--input",
        input.to_str().unwrap(),
        "--segments",
        segments.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(built.status.success());
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_shard_pack_in_the_data_dir_or_watch_dir_is_skipped_never_served() {
    let (_, pack) = model();
    let work = tempfile::tempdir().unwrap();
    let halves = build_shards(&pack, work.path(), 2);
    let data_dir = tempfile::tempdir().unwrap();
    let packs_dir = data_dir.path().join("packs");
    std::fs::create_dir_all(&packs_dir).unwrap();
    std::fs::copy(&halves[1], packs_dir.join("crm.segpack")).unwrap();
    let watch_dir = tempfile::tempdir().unwrap();
    let mut serve_config = config(data_dir.path());
    serve_config.sharding.shard = Shard { index: 0, count: 2 };
    serve_config.watch_dir = Some(watch_dir.path().to_path_buf());
    serve_config.watch_poll_ms = 20;
    let server = TestServer::start(serve_config).await;
    let mut admin = server.admin().await;
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(
        status.packs.is_empty(),
        "the wrong shard's pack is served: {:?}",
        status.packs
    );

    std::fs::copy(&halves[1], watch_dir.path().join("crm.segpack")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = server.scrape_metrics().await;
        if common::metric_value(&metrics, "segd_watch_rejected_total", "").unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "watched file never refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(status.packs.is_empty(), "{:?}", status.packs);
    // The right shard's file is served from the watch directory.
    std::fs::copy(&halves[0], watch_dir.path().join("crm-0.segpack")).unwrap();
    loop {
        let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
        if status.packs.len() == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "right shard never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}
