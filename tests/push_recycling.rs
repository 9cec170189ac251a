//! Pushes write into a recycled file — the version before previous, whose
//! page cache already holds memory — and a push can be held to a byte rate
//! (`--push-mib-per-second`). Checked through the real server: every version
//! pushed over a recycled file serves exactly its own bytes.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use segd::pack::{self, Pack, Segment};

use common::{SimpleSegment, TestServer, config, lookup_all, push, simple_pack};

const BUILT_AT: i64 = 1_790_000_000;

/// Version `version` of pack `crm`: user `u` is in segment `version` only.
fn version(version: u32) -> Vec<u8> {
    simple_pack(
        "crm",
        &format!("v{version}"),
        BUILT_AT,
        &[
            SimpleSegment {
                id: version,
                kind: "retargeting",
                members: &["u"],
            },
            SimpleSegment {
                id: 100,
                kind: "retargeting",
                members: &["other"],
            },
        ],
    )
}

/// A pack of `users` random users in one segment: ~10 bytes a user.
fn large_pack(users: u32) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(3);
    let mut fingerprints: Vec<u64> = (0..users).map(|_| rng.random()).collect();
    fingerprints.sort_unstable();
    fingerprints.dedup();
    pack::write_pack(&Pack {
        name: "crm".to_owned(),
        version: "v0".to_owned(),
        built_at_unix_seconds: BUILT_AT,
        segments: vec![Segment {
            id: 1,
            name: "everyone".to_owned(),
            kind: "retargeting".to_owned(),
            ttl_seconds: 0,
            members: (0..fingerprints.len() as u32).collect(),
            last_seen_hours_ago: None,
        }],
        user_fingerprints: fingerprints,
    })
    .expect("the pack writes")
}

/// The retirement thread frees a replaced version once no reader holds it;
/// until then its file is not overwritten (a new one is written instead).
async fn wait_until_unmapped(path: &std::path::Path) {
    let metadata = std::fs::metadata(path).expect("a retired version is kept");
    for _ in 0..100 {
        if !segd::pack::mapped_inodes::is_mapped(&metadata) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} is still mapped after 5 s", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_pushed_over_a_recycled_larger_file_serve_only_their_own_bytes() {
    let data_dir = tempfile::tempdir().unwrap();
    let packs = data_dir.path().join("packs");
    let server = TestServer::start(config(data_dir.path())).await;
    let mut admin = server.admin().await;
    let mut segments = server.segments().await;

    let large = large_pack(400_000);
    push(&mut admin, &large, false).await.unwrap();
    let large_inode = std::fs::metadata(packs.join("crm.segpack")).unwrap().ino();
    for v in 1..=4 {
        if v == 3 {
            wait_until_unmapped(&packs.join(".retired-crm.segpack.tmp")).await;
        }
        push(&mut admin, &version(v), false).await.unwrap();
        let served = std::fs::metadata(packs.join("crm.segpack")).unwrap();
        assert_eq!(
            served.len(),
            version(v).len() as u64,
            "v{v}: the file is cut at its end"
        );
        assert_eq!(
            lookup_all(&mut segments, "u", BUILT_AT).await.segment_ids,
            [v]
        );
        assert_eq!(
            lookup_all(&mut segments, "other", BUILT_AT)
                .await
                .segment_ids,
            [100]
        );
        if v == 3 {
            assert_eq!(
                served.ino(),
                large_inode,
                "the large version's file was recycled"
            );
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_push_takes_at_least_its_bytes_at_the_rate() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = config(data_dir.path());
    settings.limits.push_mib_per_second = 2;
    let server = TestServer::start(settings).await;
    let mut admin = server.admin().await;

    let bytes = large_pack(400_000);
    let started = Instant::now();
    push(&mut admin, &bytes, false).await.unwrap();
    // Only a lower bound: a sleep never ends early, a busy machine ends it late.
    let at_the_rate = Duration::from_secs_f64(bytes.len() as f64 / (2 << 20) as f64);
    assert!(
        started.elapsed() >= at_the_rate.mul_f64(0.9),
        "{} bytes pushed in {:?} at 2 MiB/s (at least {at_the_rate:?})",
        bytes.len(),
        started.elapsed()
    );
    server.stop().await;
}
