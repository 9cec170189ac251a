//! The domain without a server: a store, the journal in a temp dir, the
//! frequency store beside it.

use std::sync::Arc;

use roaring::RoaringBitmap;

use super::*;
use crate::freq::{FreqConfig, NewImpression};
use crate::pack::{Pack, Segment};
use crate::store::{LoadedPack, Membership};

const BUILT_AT: i64 = 1_000_000;
const USER: u64 = 42;

fn pack(version: &str, built_at: i64) -> Arc<LoadedPack> {
    let segment = |id: u32, ttl_seconds: u32| Segment {
        id,
        name: format!("s{id}"),
        kind: String::new(),
        ttl_seconds,
        members: RoaringBitmap::from_iter([0u32]),
        last_seen_hours_ago: None,
    };
    let pack = Pack {
        name: "crm".into(),
        version: version.into(),
        built_at_unix_seconds: built_at,
        user_fingerprints: vec![USER],
        segments: vec![segment(1, 0), segment(2, 3600)],
    };
    Arc::new(LoadedPack::from_pack(pack, 0, built_at).expect("indexes"))
}

fn config(dir: &std::path::Path, max_overlay_entries: u64) -> RealtimeConfig {
    RealtimeConfig {
        dir: dir.join("realtime"),
        fsync: FsyncPolicy::Never,
        fsync_interval: Duration::from_millis(10),
        max_overlay_entries,
        forget_retention_seconds: 30 * 86_400,
    }
}

struct Fixture {
    store: Arc<Store>,
    realtime: Arc<Realtime>,
    counters: Arc<FreqStore>,
}

fn open(dir: &std::path::Path, packs: Vec<Arc<LoadedPack>>, max_entries: u64) -> Fixture {
    let store = Arc::new(Store::new());
    store.install_at(packs, BUILT_AT).expect("installs");
    let (realtime, forgotten) =
        Realtime::open(config(dir, max_entries), store.clone(), BUILT_AT).expect("opens");
    let (counters, _) =
        FreqStore::open_forgetting(FreqConfig::new(dir.join("freq")), &forgotten).expect("opens");
    realtime.set_counters(counters.clone());
    Fixture {
        store,
        realtime,
        counters,
    }
}

fn update(user_fingerprint: u64, segment_id: u32, op: MemberOp) -> NewUpdate {
    NewUpdate {
        user_fingerprint,
        segment_id,
        op,
        last_seen_unix_seconds: 0,
        expires_at_unix_seconds: 0,
    }
}

fn member(store: &Store, user: u64, segment_id: u32, at: i64) -> bool {
    store.load().user(user).membership(segment_id, 0, at) == Membership::Member
}

fn all(store: &Store, user: u64, at: i64) -> Vec<u32> {
    store.load().lookup(user, &[], 0, at).segment_ids
}

#[test]
fn updates_override_the_pack_and_age_like_members() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = open(dir.path(), vec![pack("v1", BUILT_AT)], 100);
    let now = BUILT_AT + 10;
    let mut add = update(7, 2, MemberOp::Add);
    add.expires_at_unix_seconds = now + 100;
    let remove = update(USER, 1, MemberOp::Remove);
    fixture
        .realtime
        .update_members_at(&[add, remove], now * 1000)
        .expect("applies");
    assert!(member(&fixture.store, 7, 2, now));
    assert!(!member(&fixture.store, 7, 2, now + 100), "expired");
    assert!(!member(&fixture.store, 7, 2, now + 3601), "past the TTL");
    assert!(
        !member(&fixture.store, USER, 1, now),
        "removed over the pack"
    );
    assert_eq!(all(&fixture.store, USER, now), vec![2]);
    assert_eq!(all(&fixture.store, 7, now), vec![2]);
    // The latest update of a (user, segment) wins.
    fixture
        .realtime
        .update_members_at(&[update(USER, 1, MemberOp::Add)], (now + 1) * 1000)
        .expect("applies");
    assert_eq!(all(&fixture.store, USER, now + 1), vec![1, 2]);
}

#[test]
fn a_refused_batch_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = open(dir.path(), vec![pack("v1", BUILT_AT)], 2);
    let now = BUILT_AT + 10;
    let error = fixture
        .realtime
        .update_members_at(
            &[update(7, 1, MemberOp::Add), update(7, 99, MemberOp::Add)],
            now * 1000,
        )
        .expect_err("segment 99 is unknown");
    assert!(matches!(
        error,
        RealtimeError::UnknownSegment {
            index: 1,
            segment_id: 99
        }
    ));
    assert!(!member(&fixture.store, 7, 1, now));
    let full = [
        update(7, 1, MemberOp::Add),
        update(8, 1, MemberOp::Add),
        update(9, 1, MemberOp::Add),
    ];
    let error = fixture
        .realtime
        .update_members_at(&full, now * 1000)
        .expect_err("three entries, room for two");
    assert!(matches!(
        error,
        RealtimeError::OverlayFull { adding: 3, .. }
    ));
    assert!(!member(&fixture.store, 7, 1, now));
    assert_eq!(fixture.realtime.figures().overlay_entries, 0);
    // Replacing an entry needs no room.
    fixture
        .realtime
        .update_members_at(&full[..2], now * 1000)
        .unwrap();
    fixture
        .realtime
        .update_members_at(&[update(8, 1, MemberOp::Remove)], now * 1000)
        .unwrap();
}

#[test]
fn newer_packs_fold_updates_and_rollback_sees_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = open(dir.path(), vec![pack("v1", BUILT_AT)], 100);
    let stamped = BUILT_AT + 100;
    fixture
        .realtime
        .update_members_at(
            &[
                update(7, 1, MemberOp::Add),
                update(USER, 2, MemberOp::Remove),
            ],
            stamped * 1000,
        )
        .unwrap();
    // v2, built after the updates, does not contain them: it wins.
    fixture
        .store
        .install_at(vec![pack("v2", stamped)], stamped)
        .unwrap();
    assert!(!member(&fixture.store, 7, 1, stamped));
    assert!(member(&fixture.store, USER, 2, stamped));
    // v1 was built before them: a rollback shows them again.
    fixture.realtime.maintain(stamped).unwrap();
    assert_eq!(
        fixture.realtime.figures().overlay_entries,
        2,
        "rollback needs them"
    );
    fixture
        .store
        .install_at(vec![pack("v1", BUILT_AT)], stamped)
        .unwrap();
    assert!(member(&fixture.store, 7, 1, stamped));
    assert!(!member(&fixture.store, USER, 2, stamped));
    // v3 replaces v1, which does not carry them: still needed.
    fixture
        .store
        .install_at(vec![pack("v3", stamped + 1)], stamped)
        .unwrap();
    fixture.realtime.maintain(stamped).unwrap();
    assert_eq!(fixture.realtime.figures().overlay_entries, 2);
    // v4 replaces v3, both carry them: folded for good, out of memory, and a
    // newer version built before them does not revive them.
    fixture
        .store
        .install_at(vec![pack("v4", stamped + 1)], stamped)
        .unwrap();
    fixture.realtime.maintain(stamped).unwrap();
    assert_eq!(fixture.realtime.figures().overlay_entries, 0);
    fixture
        .store
        .install_at(vec![pack("v5", BUILT_AT)], stamped)
        .unwrap();
    assert!(!member(&fixture.store, 7, 1, stamped));
    assert!(member(&fixture.store, USER, 2, stamped));
}

#[test]
fn forgets_clear_segments_and_counters_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let now = BUILT_AT + 10;
    let impression = |at: i64| NewImpression {
        user_fingerprint: USER,
        cap_keys: vec!["li:1".into()],
        at_unix_seconds: at,
        impression_id: String::new(),
    };
    let real_now = crate::unix_now_seconds();
    {
        let fixture = open(dir.path(), vec![pack("v1", BUILT_AT)], 100);
        fixture
            .counters
            .record(&[impression(real_now - 5)])
            .unwrap();
        // A checkpoint before the forget holds the impression too.
        fixture.counters.checkpoint().unwrap();
        fixture
            .counters
            .record(&[impression(real_now - 4)])
            .unwrap();
        fixture
            .realtime
            .update_members_at(&[update(USER, 1, MemberOp::Add)], now * 1000)
            .unwrap();
        assert_eq!(
            fixture
                .realtime
                .forget_users_at(&[USER, USER, 7], now)
                .unwrap(),
            2
        );
        assert!(all(&fixture.store, USER, now).is_empty());
        assert_eq!(fixture.counters.count(USER, "li:1", 0, i64::MAX), 0);
        fixture
            .counters
            .record(&[impression(real_now - 3)])
            .unwrap();
        assert_eq!(
            fixture.realtime.forgotten_in_packs()[0].users,
            0,
            "not counted yet"
        );
        fixture.realtime.maintain(now).unwrap();
        assert_eq!(fixture.realtime.forgotten_in_packs()[0].users, 1);
        fixture.counters.stop_without_checkpoint();
    }
    let fixture = open(dir.path(), vec![pack("v2", now + 5)], 100);
    assert!(
        all(&fixture.store, USER, now + 10).is_empty(),
        "a pack built after the forget does not bring the user back"
    );
    assert_eq!(
        fixture.counters.count(USER, "li:1", 0, i64::MAX),
        1,
        "only the impression after the forget"
    );
    assert_eq!(fixture.realtime.figures().forgotten_users, 2);
}

#[test]
fn the_journal_replays_and_compacts_to_the_same_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let now = BUILT_AT + 10;
    let expected = {
        let fixture = open(dir.path(), vec![pack("v1", BUILT_AT)], 1_000_000);
        for round in 0..3u64 {
            let updates: Vec<NewUpdate> = (0..1000u64)
                .map(|user| update(user * 7 + round, 1 + (user % 2) as u32, MemberOp::Add))
                .collect();
            fixture
                .realtime
                .update_members_at(&updates, now * 1000)
                .unwrap();
        }
        fixture.realtime.forget_users_at(&[7, 14], now).unwrap();
        let mut snapshot = fixture.store.overlay().snapshot();
        snapshot.sort_by_key(|(fingerprint, _)| *fingerprint);
        snapshot
    };
    let reopen = || {
        let fixture = open(dir.path(), vec![pack("v1", BUILT_AT)], 1_000_000);
        let mut snapshot = fixture.store.overlay().snapshot();
        snapshot.sort_by_key(|(fingerprint, _)| *fingerprint);
        (fixture, snapshot)
    };
    let (fixture, replayed) = reopen();
    assert_eq!(replayed, expected);
    let mut writer = fixture.realtime.writer.lock();
    let records = snapshot_records(fixture.store.overlay(), &fixture.store.fold_horizons(), 0);
    writer.journal.rewrite(&records).unwrap();
    drop(writer);
    drop(fixture);
    let (_, compacted) = reopen();
    assert_eq!(compacted, expected);
}

#[test]
fn replicated_records_journal_their_position_and_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let now = BUILT_AT + 10;
    let fixture = open(dir.path(), vec![pack("v1", BUILT_AT)], 100);
    let (record, outcome) = fixture
        .realtime
        .prepare_updates(&[update(7, 1, MemberOp::Add)], now * 1000)
        .unwrap();
    assert_eq!(outcome.applied, 1);
    assert!(!member(&fixture.store, 7, 1, now), "prepared, not applied");
    assert!(matches!(
        fixture
            .realtime
            .prepare_updates(&[update(7, 99, MemberOp::Add)], now * 1000),
        Err(RealtimeError::UnknownSegment { index: 0, .. })
    ));
    assert!(fixture.realtime.apply_replicated(5, &record).unwrap());
    assert!(member(&fixture.store, 7, 1, now));
    assert!(
        !fixture.realtime.apply_replicated(5, &record).unwrap(),
        "redelivery"
    );
    let forgets = fixture.realtime.prepare_forgets(&[USER, USER], now);
    assert_eq!(forgets.len(), 1, "each user once");
    assert!(fixture.realtime.apply_replicated(9, &forgets).unwrap());
    assert!(all(&fixture.store, USER, now).is_empty());
    // Impressions handled after it move the position at the next maintenance.
    fixture.realtime.note_stream_seq(12);
    assert_eq!(fixture.realtime.stream_position(), 9);
    fixture.realtime.maintain(now).unwrap();
    assert_eq!(fixture.realtime.stream_position(), 12);
    drop(fixture);

    let reopened = open(dir.path(), vec![pack("v1", BUILT_AT)], 100);
    assert_eq!(reopened.realtime.stream_position(), 12);
    assert!(member(&reopened.store, 7, 1, now));
    assert!(all(&reopened.store, USER, now).is_empty());
    assert!(!reopened.realtime.apply_replicated(9, &forgets).unwrap());
    // A rewritten journal keeps the position.
    let mut writer = reopened.realtime.writer.lock();
    let records = snapshot_records(
        reopened.store.overlay(),
        &reopened.store.fold_horizons(),
        writer.stream_position,
    );
    writer.journal.rewrite(&records).unwrap();
    drop(writer);
    drop(reopened);
    let compacted = open(dir.path(), vec![pack("v1", BUILT_AT)], 100);
    assert_eq!(compacted.realtime.stream_position(), 12);
    assert!(member(&compacted.store, 7, 1, now));
}
