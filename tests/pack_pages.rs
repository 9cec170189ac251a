//! The pack file a push leaves in the data directory is served from 2 MiB
//! pages where the kernel can map files so (ext4's large folios): segd writes
//! it in whole aligned 2 MiB blocks whatever the pushed chunks, so its page
//! cache holds 2 MiB folios (`pack::file_blocks`). A file written as it
//! arrives, in the push's 64 KiB chunks, is mapped in 4 KiB pages.

mod common;

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use roaring::RoaringBitmap;
use segd::pack::mapped::PackBytes;
use segd::pack::{self, Pack, Segment};

use common::{TestServer, config, push};

const BUILT_AT: i64 = 1_790_000_000;

/// ~2.4M memberships over 300k users: a file of several MiB, so its index
/// columns span whole 2 MiB blocks.
fn big_pack() -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(7);
    let users: u32 = 300_000;
    let mut fingerprints: Vec<u64> = (0..users).map(|_| rng.random()).collect();
    fingerprints.sort_unstable();
    fingerprints.dedup();
    let segments = (1..=16)
        .map(|id| Segment {
            id,
            name: format!("segment-{id}"),
            kind: "retargeting".to_owned(),
            ttl_seconds: 0,
            members: (0..fingerprints.len() as u32)
                .filter(|_| rng.random_bool(0.5))
                .collect::<RoaringBitmap>(),
            last_seen_hours_ago: None,
        })
        .collect();
    pack::write_pack(&Pack {
        name: "big".to_owned(),
        version: "v1".to_owned(),
        built_at_unix_seconds: BUILT_AT,
        user_fingerprints: fingerprints,
        segments,
    })
    .expect("the pack writes")
}

/// KiB of this process's mappings of `path` that are mapped with huge
/// (PMD) entries, from `/proc/self/smaps`; `None` when `path` is not mapped.
fn pmd_mapped_kib(path: &Path) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps reads");
    let wanted = path.to_str().expect("a UTF-8 temp path");
    let mut in_wanted = false;
    let mut total = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: address range, perms, offset, dev, inode, path.
            in_wanted = line.ends_with(wanted);
        } else if in_wanted && first == "FilePmdMapped:" {
            let kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            total = Some(total.unwrap_or(0) + kib);
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_pack_is_mapped_in_huge_pages_where_the_kernel_can() {
    let bytes = big_pack();

    // The control: the same bytes written in one call, mapped as segd maps
    // packs. A kernel that maps neither (no large folios for this file
    // system, no THP) makes the property moot.
    let control_dir = tempfile::tempdir().unwrap();
    let control_path = control_dir.path().join("control.segpack");
    std::fs::write(&control_path, &bytes).unwrap();
    let control = PackBytes::map_file(&control_path).unwrap();
    let control_kib = pmd_mapped_kib(&control_path).expect("the control is mapped");
    drop(control);
    if control_kib == 0 {
        eprintln!("skipped: this kernel maps no file in huge pages (the control has 0 KiB)");
        return;
    }

    let data_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(data_dir.path())).await;
    let mut admin = server.admin().await;
    push(&mut admin, &bytes, false).await.unwrap();
    let served_path = data_dir.path().join("packs").join("big.segpack");
    let served_kib = pmd_mapped_kib(&served_path).expect("the served pack is mapped");
    // The bitmaps are released after the checked load, so less of the served
    // file stays mapped than of the control; its index must be in huge pages.
    assert!(
        served_kib >= 2048,
        "the served pack has {served_kib} KiB mapped in huge pages (control: {control_kib} KiB of {} bytes)",
        bytes.len()
    );
    server.stop().await;
}
