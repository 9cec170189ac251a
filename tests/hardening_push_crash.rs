//! Hardening: a failed or crashed replacement push keeps the served version
//! and the one kept for rollback; start-up removes what crashed pushes left.
//!
//! Seen before the fix: the served file was renamed to `.previous` before the
//! new one was written, so a push failing on a full disk, or `kill -9` during
//! a push, lost the old previous version and `Status` showed the served
//! version as its own previous; temp files of killed pushes survived every
//! restart. Every test here runs the real binary.

mod common;

use std::path::Path;
use std::time::Instant;

use common::admin_client;
use common::process::SegdProcess;
use common::tmpfs::Tmpfs;
use segd::pack::{Pack, Segment, write_pack};
use segd::proto::{RollbackRequest, StatusRequest};

/// A pack of `users` users, all in segment 1: about 8 bytes a user.
fn pack_bytes(version: &str, users: u64) -> Vec<u8> {
    write_pack(&Pack {
        name: "crm".into(),
        version: version.into(),
        built_at_unix_seconds: segd::unix_now_seconds() - 60,
        user_fingerprints: (1..=users).map(|user| user * 7_919).collect(),
        segments: vec![Segment {
            id: 1,
            name: "all".into(),
            kind: "retargeting".into(),
            ttl_seconds: 0,
            members: (0..users as u32).collect(),
            last_seen_hours_ago: None,
        }],
    })
    .unwrap()
}

fn version(number: u32) -> String {
    format!("v{number}")
}

/// (served version, previous version) of pack `crm`.
async fn served_and_previous(segd: &SegdProcess) -> (String, String) {
    let mut admin = admin_client(&format!("http://{}", segd.admin_addr), None).await;
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    let crm = status
        .packs
        .iter()
        .find(|pack| pack.name == "crm")
        .expect("crm is served");
    (crm.version.clone(), crm.previous_version.clone())
}

/// Rolls back and forth: both files are whole and loadable.
async fn assert_both_versions_load(segd: &SegdProcess, served: &str, previous: &str) {
    let mut admin = admin_client(&format!("http://{}", segd.admin_addr), None).await;
    for expected in [previous, served] {
        let rolled = admin
            .rollback(RollbackRequest { pack: "crm".into() })
            .await
            .unwrap_or_else(|error| panic!("rollback to {expected}: {error:?}"))
            .into_inner();
        assert_eq!(rolled.version, expected);
    }
    assert_eq!(
        served_and_previous(segd).await,
        (served.to_owned(), previous.to_owned())
    );
}

/// Files in the packs directory that are neither a served, previous or
/// dropped file of a pack.
fn leftovers(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("packs"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !(name.ends_with(".segpack") || name.ends_with(".dropped")))
        .collect()
}

async fn push_file(segd: &SegdProcess, bytes: &[u8]) -> Result<(), tonic::Status> {
    let mut admin = admin_client(&format!("http://{}", segd.admin_addr), None).await;
    common::push(&mut admin, bytes, false).await.map(|_| ())
}

/// When to kill a push: after a delay, or as soon as the packs directory
/// shows a stage of the push (polled every millisecond).
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// This fraction of an undisturbed push's time after it started.
    Fraction(f64),
    /// An upload file exists.
    UploadStarted,
    /// The upload file holds at least half the pack.
    UploadHalfWritten,
    /// A pack file other than the served or previous one appeared.
    NewPackFile,
    /// The previous file was replaced: the rotation began.
    PreviousReplaced,
    /// The served file was replaced.
    ServedReplaced,
}

#[derive(Default, PartialEq, Eq)]
struct PacksDirView {
    upload_bytes: Option<u64>,
    other_pack_files: usize,
    served_inode: Option<u64>,
    previous_inode: Option<u64>,
}

fn view_packs_dir(data_dir: &Path) -> PacksDirView {
    use std::os::unix::fs::MetadataExt;
    let mut view = PacksDirView::default();
    let Ok(entries) = std::fs::read_dir(data_dir.join("packs")) else {
        return view;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        match name.as_str() {
            "crm.segpack" => view.served_inode = Some(metadata.ino()),
            "crm.previous.segpack" => view.previous_inode = Some(metadata.ino()),
            _ if name.starts_with(".push-") => view.upload_bytes = Some(metadata.len()),
            // The version before previous, kept between pushes for its page
            // cache (store/pack_files.rs): not a stage of this push.
            _ if name.starts_with(".retired-") => {}
            _ => view.other_pack_files += 1,
        }
    }
    view
}

/// Waits for `kill_at` (at most `give_up_after`), polling the directory.
async fn wait_for(
    kill_at: KillAt,
    data_dir: &Path,
    push_time: std::time::Duration,
    pack_bytes: u64,
) {
    if let KillAt::Fraction(fraction) = kill_at {
        tokio::time::sleep(push_time.mul_f64(fraction)).await;
        return;
    }
    let initial = view_packs_dir(data_dir);
    let give_up_at = Instant::now() + push_time * 4;
    while Instant::now() < give_up_at {
        let view = view_packs_dir(data_dir);
        let reached = match kill_at {
            KillAt::Fraction(_) => true,
            KillAt::UploadStarted => view.upload_bytes.is_some(),
            KillAt::UploadHalfWritten => view
                .upload_bytes
                .is_some_and(|bytes| bytes >= pack_bytes / 2),
            KillAt::NewPackFile => view.other_pack_files > initial.other_pack_files,
            KillAt::PreviousReplaced => view.previous_inode != initial.previous_inode,
            KillAt::ServedReplaced => view.served_inode != initial.served_inode,
        };
        if reached {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    eprintln!(
        "{kill_at:?} not seen within {:?}; killing anyway",
        push_time * 4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_many_points_of_a_push_keeps_served_and_previous() {
    const USERS: u64 = 1_000_000;
    let data = tempfile::tempdir().unwrap();
    let segd = SegdProcess::start(data.path(), &[]).await;
    push_file(&segd, &pack_bytes(&version(1), USERS))
        .await
        .unwrap();
    push_file(&segd, &pack_bytes(&version(2), USERS))
        .await
        .unwrap();
    // One undisturbed push measures how long a push takes here.
    let third = pack_bytes(&version(3), USERS);
    let started = Instant::now();
    push_file(&segd, &third).await.unwrap();
    let push_time = started.elapsed();
    let mut kill_points: Vec<KillAt> = (0..=6)
        .map(|step| KillAt::Fraction(0.2 * f64::from(step)))
        .collect();
    kill_points.extend([
        KillAt::UploadStarted,
        KillAt::UploadHalfWritten,
        KillAt::NewPackFile,
        KillAt::PreviousReplaced,
        KillAt::ServedReplaced,
    ]);
    let mut served_number = 3;
    let mut completed_by_crash = 0;
    let mut segd = segd;
    for kill_at in kill_points.iter().copied() {
        let next = pack_bytes(&version(served_number + 1), USERS);
        let next_bytes = next.len() as u64;
        let admin_addr = segd.admin_addr.clone();
        let pushing = tokio::spawn(async move {
            let mut admin = admin_client(&format!("http://{admin_addr}"), None).await;
            common::push(&mut admin, &next, false).await.map(|_| ())
        });
        // Not a synchronisation: any instant must leave a consistent directory.
        wait_for(kill_at, data.path(), push_time, next_bytes).await;
        segd.kill_9();
        let _ = pushing.await;
        segd = SegdProcess::start(data.path(), &[]).await;
        let (served, previous) = served_and_previous(&segd).await;
        let before = (version(served_number), version(served_number - 1));
        let after = (version(served_number + 1), version(served_number));
        let found = (served.clone(), previous.clone());
        assert!(
            found == before || found == after,
            "killed at {kill_at:?}: served {served}, previous {previous}; expected {before:?} or {after:?}"
        );
        if found == after {
            served_number += 1;
            completed_by_crash += 1;
        }
        assert_both_versions_load(&segd, &served, &previous).await;
        let left = leftovers(data.path());
        assert!(
            left.is_empty(),
            "killed at {kill_at:?}: left behind {left:?}"
        );
    }
    eprintln!(
        "{completed_by_crash} of {} killed pushes were served after the restart (push time {push_time:?})",
        kill_points.len()
    );
    segd.terminate();
}

/// Files of a packs directory: (file name, pack version; `None` = a partial upload).
type PackFiles = Vec<(&'static str, Option<&'static str>)>;

/// Puts `files` (name, version) into a fresh packs directory.
fn packs_dir_with(files: &[(&str, Option<&str>)]) -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    let packs = data.path().join("packs");
    std::fs::create_dir_all(&packs).unwrap();
    for (file_name, pack_version) in files {
        let bytes = match pack_version {
            Some(pack_version) => pack_bytes(pack_version, 1_000),
            // A partial upload: the first bytes of a pack.
            None => pack_bytes("v9", 1_000)[..5_000].to_vec(),
        };
        std::fs::write(packs.join(file_name), bytes).unwrap();
    }
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_crash_point_of_the_push_and_rollback_renames_recovers() {
    // (files at the crash, expected (served, previous) after the restart)
    let cases: [(&str, PackFiles, (&str, &str)); 6] = [
        (
            "upload being received",
            vec![
                ("crm.segpack", Some("v2")),
                ("crm.previous.segpack", Some("v1")),
                (".push-77-0.segpack.tmp", None),
                (".crm.segpack.tmp-77-3", None),
            ],
            ("v2", "v1"),
        ),
        (
            "verified upload renamed to next",
            vec![
                ("crm.segpack", Some("v2")),
                ("crm.previous.segpack", Some("v1")),
                ("crm.segpack.next", Some("v3")),
            ],
            ("v2", "v1"),
        ),
        (
            "served renamed to previous",
            vec![
                ("crm.previous.segpack", Some("v2")),
                ("crm.segpack.next", Some("v3")),
            ],
            ("v3", "v2"),
        ),
        (
            "push done",
            vec![
                ("crm.segpack", Some("v3")),
                ("crm.previous.segpack", Some("v2")),
            ],
            ("v3", "v2"),
        ),
        (
            "rollback: served moved aside",
            vec![
                ("crm.previous.segpack", Some("v1")),
                ("crm.rollback.tmp", Some("v2")),
            ],
            ("v1", "v2"),
        ),
        (
            "rollback: previous now served",
            vec![
                ("crm.segpack", Some("v1")),
                ("crm.rollback.tmp", Some("v2")),
            ],
            ("v1", "v2"),
        ),
    ];
    for (crash_point, files, (served, previous)) in cases {
        let data = packs_dir_with(&files);
        let log_path = data.path().join("segd.log");
        let segd = SegdProcess::start_logging_to(data.path(), &[], &log_path).await;
        assert_eq!(
            served_and_previous(&segd).await,
            (served.to_owned(), previous.to_owned()),
            "{crash_point}"
        );
        let left = leftovers(data.path());
        assert!(left.is_empty(), "{crash_point}: left behind {left:?}");
        assert_both_versions_load(&segd, served, previous).await;
        segd.terminate();
        let log = std::fs::read_to_string(&log_path).unwrap();
        if files.iter().any(|(name, _)| name.starts_with('.')) {
            assert_eq!(
                log.matches("removed a temporary file left by an interrupted push")
                    .count(),
                2,
                "{crash_point}: {log}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_failing_on_a_full_disk_changes_nothing() {
    let Some(disk) = Tmpfs::mount(40) else {
        return;
    };
    let data_dir = disk.path().join("data");
    let segd = SegdProcess::start(&data_dir, &["--fsync", "always"]).await;
    push_file(&segd, &pack_bytes("v1", 50_000)).await.unwrap();
    push_file(&segd, &pack_bytes("v2", 50_000)).await.unwrap();
    let filler = disk.fill();
    let refused = push_file(&segd, &pack_bytes("v3", 50_000))
        .await
        .expect_err("a full disk refuses the push");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("No space left"), "{refused:?}");
    assert_eq!(
        served_and_previous(&segd).await,
        ("v2".to_owned(), "v1".to_owned())
    );
    let left = leftovers(&data_dir);
    assert!(left.is_empty(), "left behind {left:?}");
    // Rollback needs no new space: renames only.
    assert_both_versions_load(&segd, "v2", "v1").await;
    std::fs::remove_file(filler).unwrap();
    segd.kill_9();
    let segd = SegdProcess::start(&data_dir, &[]).await;
    assert_eq!(
        served_and_previous(&segd).await,
        ("v2".to_owned(), "v1".to_owned())
    );
    push_file(&segd, &pack_bytes("v3", 50_000)).await.unwrap();
    assert_eq!(
        served_and_previous(&segd).await,
        ("v3".to_owned(), "v2".to_owned())
    );
    segd.terminate();
}
