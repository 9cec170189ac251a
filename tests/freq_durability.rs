//! Durability of the frequency store: restart, torn tails, mid-log corruption,
//! checkpoints, and storage failures.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use segd::freq::{
    FreqConfig, FreqError, FreqStore, FsyncPolicy, InjectedFault, NewImpression, RecoveryReport,
};
use segd::user_fingerprint;

const RETENTION_SECONDS: i64 = 100 * 365 * 86_400;
const BASE_UNIX_SECONDS: i64 = 1_704_067_200;

fn config(dir: &Path, fsync: FsyncPolicy) -> FreqConfig {
    FreqConfig {
        fsync,
        fsync_interval: Duration::from_millis(5),
        retention_seconds: RETENTION_SECONDS,
        // Only the explicit calls below checkpoint or sweep.
        checkpoint_interval: Duration::from_secs(3_600),
        sweep_interval: Duration::from_secs(3_600),
        ..FreqConfig::new(dir)
    }
}

fn open(dir: &Path) -> (Arc<FreqStore>, RecoveryReport) {
    FreqStore::open(config(dir, FsyncPolicy::Never)).expect("open")
}

/// Batch `index`: one impression for user `index % 3` on two keys, with an id.
fn batch(index: i64) -> Vec<NewImpression> {
    vec![NewImpression {
        user_fingerprint: user_fingerprint(&format!("ck:{}", index % 3)),
        cap_keys: vec!["li:1".into(), format!("camp:{}", index % 2)],
        at_unix_seconds: BASE_UNIX_SECONDS + index * 600,
        impression_id: format!("imp-{index}"),
    }]
}

/// Every count the batches below can touch, in a fixed order.
fn all_counts(store: &FreqStore) -> Vec<u32> {
    let mut counts = Vec::new();
    for user in 0..3 {
        let fingerprint = user_fingerprint(&format!("ck:{user}"));
        for key in ["li:1", "camp:0", "camp:1", "li:heavy"] {
            for (after, until) in [
                (i64::MIN, i64::MAX),
                (BASE_UNIX_SECONDS + 1_000, BASE_UNIX_SECONDS + 5_000),
                (BASE_UNIX_SECONDS - 1, BASE_UNIX_SECONDS + 86_400),
            ] {
                counts.push(store.count(fingerprint, key, after, until));
            }
        }
    }
    counts
}

fn expected_li_total(batches: i64) -> u32 {
    batches as u32
}

fn total_li(store: &FreqStore) -> u32 {
    (0..3)
        .map(|user| {
            store.count(
                user_fingerprint(&format!("ck:{user}")),
                "li:1",
                i64::MIN,
                i64::MAX,
            )
        })
        .sum()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "seg"))
        .collect();
    paths.sort();
    paths
}

/// The one segment holding records (open always starts a fresh one).
fn only_segment_with_records(dir: &Path) -> PathBuf {
    let with_records: Vec<PathBuf> = segments(dir)
        .into_iter()
        .filter(|path| fs::metadata(path).expect("metadata").len() > 32)
        .collect();
    assert_eq!(with_records.len(), 1, "{with_records:?}");
    with_records[0].clone()
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[test]
fn acknowledged_impressions_survive_restart_and_retries_stay_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    for index in 0..10 {
        store.record(&batch(index)).expect("record");
    }
    store.stop_without_checkpoint();
    drop(store);
    let (store, report) = open(dir.path());
    assert_eq!(report.replayed_records, 10);
    assert_eq!(report.torn_tail_bytes, 0);
    assert_eq!(total_li(&store), expected_li_total(10));
    let retry = store.record(&batch(3)).expect("retry");
    assert_eq!((retry.recorded, retry.duplicates), (0, 1));
    store.shutdown().expect("shutdown");
    store.shutdown().expect("shutdown is idempotent");
    assert!(matches!(store.record(&batch(11)), Err(FreqError::ShutDown)));
    drop(store);
    // After a clean shutdown everything is in the checkpoint.
    let (store, report) = open(dir.path());
    assert_eq!(report.replayed_records, 0);
    assert_eq!(report.checkpoint_events, 20);
    assert_eq!(report.checkpoint_ids, 10);
    assert_eq!(total_li(&store), expected_li_total(10));
    // An idle store's checkpoints leave no files behind.
    let files_before = fs::read_dir(dir.path()).expect("read dir").count();
    for _ in 0..3 {
        store.checkpoint().expect("checkpoint");
    }
    assert_eq!(
        fs::read_dir(dir.path()).expect("read dir").count(),
        files_before
    );
}

#[test]
fn torn_tail_at_every_byte_of_the_last_record_recovers_the_complete_records() {
    let source = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(source.path());
    for index in 0..4 {
        store.record(&batch(index)).expect("record");
    }
    let segment = only_segment_with_records(source.path());
    // FsyncPolicy::Never acknowledges after write(): the bytes are in the file.
    let length_before_last = fs::metadata(&segment).expect("metadata").len();
    store.record(&batch(4)).expect("record");
    store.stop_without_checkpoint();
    drop(store);
    let full = fs::read(&segment).expect("read");
    let segment_name = segment.file_name().expect("name").to_owned();

    for cut in length_before_last..=full.len() as u64 {
        let copy = tempfile::tempdir().expect("tempdir");
        copy_dir(source.path(), copy.path());
        fs::write(copy.path().join(&segment_name), &full[..cut as usize]).expect("truncate");
        let (store, report) = open(copy.path());
        let complete = if cut == full.len() as u64 { 5 } else { 4 };
        assert_eq!(report.replayed_records, complete, "cut at {cut}");
        assert_eq!(
            report.torn_tail_bytes,
            cut - if complete == 5 {
                cut
            } else {
                length_before_last
            }
        );
        assert_eq!(
            total_li(&store),
            expected_li_total(complete as i64),
            "cut at {cut}"
        );
        store.stop_without_checkpoint();
        drop(store);
        // The tail was cut off for good: a second open finds nothing torn.
        let (store, report) = open(copy.path());
        assert_eq!(report.torn_tail_bytes, 0);
        assert_eq!(total_li(&store), expected_li_total(complete as i64));
        store.stop_without_checkpoint();
    }

    for garbage in [
        vec![0u8; 4096],
        vec![0xAB; 7],
        (0..=255u8).cycle().take(1000).collect::<Vec<_>>(),
    ] {
        let copy = tempfile::tempdir().expect("tempdir");
        copy_dir(source.path(), copy.path());
        let mut damaged = full.clone();
        damaged.extend_from_slice(&garbage);
        fs::write(copy.path().join(&segment_name), &damaged).expect("append garbage");
        let (store, report) = open(copy.path());
        assert_eq!(report.replayed_records, 5);
        assert_eq!(report.torn_tail_bytes, garbage.len() as u64);
        assert_eq!(total_li(&store), expected_li_total(5));
        store.stop_without_checkpoint();
    }
}

#[test]
fn a_flipped_byte_mid_log_refuses_open_naming_file_and_offset_unless_recovering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    store.record(&batch(0)).expect("record");
    let segment = only_segment_with_records(dir.path());
    let second_record_offset = fs::metadata(&segment).expect("metadata").len();
    for index in 1..6 {
        store.record(&batch(index)).expect("record");
    }
    store.stop_without_checkpoint();
    drop(store);
    let mut bytes = fs::read(&segment).expect("read");
    bytes[second_record_offset as usize + 20] ^= 0x10;
    fs::write(&segment, &bytes).expect("write");

    let refused = FreqStore::open(config(dir.path(), FsyncPolicy::Never))
        .err()
        .expect("refused");
    match &refused {
        FreqError::CorruptLog { path, offset, .. } => {
            assert_eq!(path, &segment);
            assert_eq!(*offset, second_record_offset);
        }
        other => panic!("expected CorruptLog, got {other}"),
    }
    let message = refused.to_string();
    assert!(
        message.contains(&segment.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&format!("offset {second_record_offset}")),
        "{message}"
    );

    let recovering = FreqConfig {
        recover_corrupt_log: true,
        ..config(dir.path(), FsyncPolicy::Never)
    };
    let (store, report) = FreqStore::open(recovering).expect("recovering open");
    assert_eq!(
        report.corrupt_offset,
        Some((segment.clone(), second_record_offset))
    );
    assert_eq!(
        report.corrupt_bytes_dropped,
        bytes.len() as u64 - second_record_offset
    );
    assert_eq!(total_li(&store), expected_li_total(1));
    store.record(&batch(9)).expect("record after recovery");
    store.stop_without_checkpoint();
    drop(store);
    // Recovery truncated the damage: a normal open works now.
    let (store, _) = open(dir.path());
    assert_eq!(total_li(&store), expected_li_total(2));
}

#[test]
fn checkpoint_plus_replay_equals_replay_alone() {
    let with_checkpoints = tempfile::tempdir().expect("tempdir");
    let replay_only = tempfile::tempdir().expect("tempdir");
    let (checkpointed, _) = open(with_checkpoints.path());
    let (replayed, _) = open(replay_only.path());
    let heavy_user = user_fingerprint("ck:0");
    for index in 0..60 {
        for store in [&checkpointed, &replayed] {
            store.record(&batch(index)).expect("record");
            // Over 1,000 impressions on one counter: the coarse buckets must
            // survive a checkpoint exactly as a replay rebuilds them.
            let heavy: Vec<NewImpression> = (0..40)
                .map(|offset| NewImpression {
                    user_fingerprint: heavy_user,
                    cap_keys: vec!["li:heavy".into()],
                    at_unix_seconds: BASE_UNIX_SECONDS + index * 97 + offset * 13,
                    impression_id: String::new(),
                })
                .collect();
            store.record(&heavy).expect("record heavy");
        }
        if index % 20 == 10 {
            checkpointed.checkpoint().expect("checkpoint");
        }
    }
    assert!(checkpointed.stats().last_checkpoint_unix_seconds > 0);
    assert_eq!(all_counts(&checkpointed), all_counts(&replayed));
    checkpointed.stop_without_checkpoint();
    replayed.stop_without_checkpoint();
    drop((checkpointed, replayed));

    let (checkpointed, checkpoint_report) = open(with_checkpoints.path());
    let (replayed, replay_report) = open(replay_only.path());
    assert!(checkpoint_report.checkpoint_path.is_some());
    assert!(checkpoint_report.replayed_records < replay_report.replayed_records);
    assert_eq!(replay_report.replayed_records, 120);
    assert_eq!(all_counts(&checkpointed), all_counts(&replayed));
    assert!(checkpointed.stats().coarse_entries > 0);
    // Covered segments were deleted.
    assert!(checkpointed.stats().log_segments < replayed.stats().log_segments + 3);
    for index in [0, 15, 59] {
        assert_eq!(
            checkpointed
                .record(&batch(index))
                .expect("retry")
                .duplicates,
            1
        );
        assert_eq!(replayed.record(&batch(index)).expect("retry").duplicates, 1);
    }
}

#[test]
fn checkpoints_taken_during_concurrent_records_lose_and_double_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = FreqStore::open(config(dir.path(), FsyncPolicy::Interval)).expect("open");
    let users: Vec<u64> = (0..50)
        .map(|user| user_fingerprint(&format!("ck:c{user}")))
        .collect();
    let stop_checkpoints = std::sync::atomic::AtomicBool::new(false);
    let checkpoints = std::thread::scope(|scope| {
        let recorders: Vec<_> = (0..4u64)
            .map(|caller| {
                let (store, users) = (&store, &users);
                scope.spawn(move || {
                    for round in 0..200u64 {
                        // No impression ids: a double-applied record would show.
                        let batch: Vec<NewImpression> = (0..10u64)
                            .map(|index| NewImpression {
                                user_fingerprint: users
                                    [((caller * 7 + round * 3 + index) % 50) as usize],
                                cap_keys: vec!["li:c".into(), "adv:c".into()],
                                at_unix_seconds: BASE_UNIX_SECONDS + (round * 10 + index) as i64,
                                impression_id: String::new(),
                            })
                            .collect();
                        store.record(&batch).expect("record");
                    }
                })
            })
            .collect();
        let checkpointer = scope.spawn(|| {
            let mut taken = 0;
            while !stop_checkpoints.load(std::sync::atomic::Ordering::Relaxed) {
                store.checkpoint().expect("checkpoint");
                taken += 1;
            }
            taken
        });
        for recorder in recorders {
            recorder.join().expect("recorder");
        }
        stop_checkpoints.store(true, std::sync::atomic::Ordering::Relaxed);
        checkpointer.join().expect("checkpointer")
    });
    assert!(checkpoints > 0);
    let total = |store: &FreqStore, key: &str| -> u32 {
        users
            .iter()
            .map(|&user| store.count(user, key, i64::MIN, i64::MAX))
            .sum()
    };
    assert_eq!(total(&store, "li:c"), 8_000);
    store.stop_without_checkpoint();
    drop(store);
    let (store, report) =
        FreqStore::open(config(dir.path(), FsyncPolicy::Interval)).expect("reopen");
    assert!(report.checkpoint_path.is_some());
    assert_eq!(total(&store, "li:c"), 8_000, "{report:?}");
    assert_eq!(total(&store, "adv:c"), 8_000, "{report:?}");
}

#[test]
fn a_failing_write_or_fsync_returns_an_error_and_records_nothing_it_reports() {
    for (policy, fault) in [
        (FsyncPolicy::Always, InjectedFault::FailFsyncs),
        (FsyncPolicy::Always, InjectedFault::FailWrites),
        (FsyncPolicy::Interval, InjectedFault::FailWrites),
        (FsyncPolicy::Never, InjectedFault::FailWrites),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = FreqStore::open(config(dir.path(), policy)).expect("open");
        store.record(&batch(0)).expect("record");
        store.inject_fault(fault);
        let failed = store.record(&batch(1));
        assert!(
            matches!(failed, Err(FreqError::Storage { .. })),
            "{policy:?} {fault:?}: {failed:?}"
        );
        let checkpoint = store.checkpoint();
        assert!(
            checkpoint.is_err(),
            "{policy:?} {fault:?}: checkpoint must fail too {checkpoint:?} {:?}",
            store.stats()
        );
        store.inject_fault(InjectedFault::None);
        // The failed impression's id was released: its retry records it.
        let retry = store.record(&batch(1)).expect("retry");
        assert_eq!(
            (retry.recorded, retry.duplicates),
            (1, 0),
            "{policy:?} {fault:?}"
        );
        store.record(&batch(2)).expect("record");
        assert!(store.stats().write_failures >= 1);
        store.stop_without_checkpoint();
        drop(store);
        let (store, _) = FreqStore::open(config(dir.path(), policy)).expect("reopen");
        // Everything acknowledged is there; the failed attempt is not counted twice.
        assert_eq!(
            total_li(&store),
            expected_li_total(3),
            "{policy:?} {fault:?}"
        );
        store.checkpoint().expect("checkpoint");
    }
}

#[test]
fn a_truncated_segment_header_is_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    store.record(&batch(0)).expect("record");
    store.stop_without_checkpoint();
    drop(store);
    fs::write(dir.path().join("log-00000000000000000099.seg"), b"SEGDF").expect("write");
    let (store, report) = open(dir.path());
    assert_eq!(report.torn_tail_bytes, 5);
    assert_eq!(total_li(&store), 1);
}

#[test]
fn a_damaged_checkpoint_refuses_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    store.record(&batch(0)).expect("record");
    store.shutdown().expect("shutdown");
    drop(store);
    let checkpoint = fs::read_dir(dir.path())
        .expect("read dir")
        .map(|entry| entry.expect("entry").path())
        .find(|path| {
            path.extension()
                .is_some_and(|extension| extension == "ckpt")
        })
        .expect("a checkpoint");
    let mut bytes = fs::read(&checkpoint).expect("read");
    bytes[40] ^= 1;
    fs::write(&checkpoint, bytes).expect("write");
    let refused = FreqStore::open(config(dir.path(), FsyncPolicy::Never))
        .err()
        .expect("refused");
    assert!(
        matches!(refused, FreqError::CorruptCheckpoint { .. }),
        "{refused}"
    );
}
