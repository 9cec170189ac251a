//! Frequency caps against a plain reference: a `Vec<i64>` of impression times per
//! (user, cap key), and a naive calendar written independently of `freq::window`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use segd::freq::{
    Calendar, CapWindow, CountQuery, EXACT_LIMIT, FreqConfig, FreqStore, FsyncPolicy,
    NewImpression, cap_key_hash,
};
use segd::user_fingerprint;

/// 100 years: nothing in these tests leaves retention.
const RETENTION_SECONDS: i64 = 100 * 365 * 86_400;
/// 2024-01-01T00:00:00Z.
const BASE_UNIX_SECONDS: i64 = 1_704_067_200;
const CAP_KEYS: [&str; 3] = ["li:123", "camp:9", "adv:4"];
const OFFSETS_MINUTES: [i32; 7] = [-720, -570, -300, 0, 60, 345, 840];

fn open_store(dir: &std::path::Path) -> Arc<FreqStore> {
    let config = FreqConfig {
        fsync: FsyncPolicy::Never,
        retention_seconds: RETENTION_SECONDS,
        checkpoint_interval: Duration::from_secs(3_600),
        sweep_interval: Duration::from_secs(3_600),
        ..FreqConfig::new(dir)
    };
    FreqStore::open(config).expect("open").0
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// (year, month) of a day number counted from 1970-01-01, by walking years and
/// months: slow, obvious, independent of the library's arithmetic.
fn naive_year_month(mut day: i64) -> (i64, u32) {
    assert!(day >= 0, "naive calendar covers 1970 on");
    let mut year = 1970;
    loop {
        let year_days = if is_leap(year) { 366 } else { 365 };
        if day < year_days {
            break;
        }
        day -= year_days;
        year += 1;
    }
    let month_days = [
        31,
        if is_leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    for (index, length) in month_days.iter().enumerate() {
        if day < *length {
            return (year, index as u32 + 1);
        }
        day -= length;
    }
    unreachable!()
}

/// Whether a cap with `window` counts an impression at `time` at instant `at`.
fn reference_counts(window: &CapWindow, time: i64, at: i64) -> bool {
    if time > at {
        return false;
    }
    let local_day =
        |instant: i64| (instant + i64::from(window.utc_offset_minutes) * 60).div_euclid(86_400);
    match window.calendar {
        Calendar::Rolling if window.window_seconds == 0 => time > at - RETENTION_SECONDS,
        Calendar::Rolling => time > at - i64::from(window.window_seconds),
        Calendar::Day => local_day(time) == local_day(at),
        // Day 0 was a Thursday: (day + 3) / 7 numbers weeks starting Monday.
        Calendar::Week => (local_day(time) + 3).div_euclid(7) == (local_day(at) + 3).div_euclid(7),
        Calendar::Month => naive_year_month(local_day(time)) == naive_year_month(local_day(at)),
    }
}

fn window_strategy() -> impl Strategy<Value = CapWindow> {
    let rolling = prop_oneof![
        Just(0u32),
        Just(60u32),
        Just(3_600u32),
        Just(86_400u32),
        Just(7 * 86_400u32),
        1u32..40 * 86_400
    ]
    .prop_map(|window_seconds| CapWindow {
        window_seconds,
        calendar: Calendar::Rolling,
        utc_offset_minutes: 0,
    });
    let calendar = (
        prop_oneof![
            Just(Calendar::Day),
            Just(Calendar::Week),
            Just(Calendar::Month)
        ],
        prop::sample::select(OFFSETS_MINUTES.to_vec()),
    )
        .prop_map(|(calendar, utc_offset_minutes)| CapWindow {
            window_seconds: 0,
            calendar,
            utc_offset_minutes,
        });
    prop_oneof![rolling, calendar]
}

#[derive(Debug, Clone)]
struct GeneratedImpression {
    user: u8,
    key_mask: u8,
    at_offset_seconds: i64,
    id: Option<u8>,
}

fn impression_strategy() -> impl Strategy<Value = GeneratedImpression> {
    (
        0u8..3,
        1u8..8,
        // Around month ends: late January to early March 2024 (a leap February).
        prop_oneof![
            0i64..70 * 86_400,
            (29 * 86_400i64)..(32 * 86_400),
            (58 * 86_400i64)..(61 * 86_400)
        ],
        prop::option::of(0u8..40),
    )
        .prop_map(
            |(user, key_mask, at_offset_seconds, id)| GeneratedImpression {
                user,
                key_mask,
                at_offset_seconds,
                id,
            },
        )
}

fn to_new_impression(generated: &GeneratedImpression) -> NewImpression {
    NewImpression {
        user_fingerprint: user_fingerprint(&format!("ck:user-{}", generated.user)),
        cap_keys: CAP_KEYS
            .iter()
            .enumerate()
            .filter(|(index, _)| generated.key_mask & (1 << index) != 0)
            .map(|(_, key)| key.to_string())
            .collect(),
        at_unix_seconds: BASE_UNIX_SECONDS + generated.at_offset_seconds,
        impression_id: generated
            .id
            .map(|id| format!("imp-{id}"))
            .unwrap_or_default(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn caps_match_a_reference_of_timestamps(
        batches in prop::collection::vec(prop::collection::vec(impression_strategy(), 1..20), 1..8),
        queries in prop::collection::vec((0u8..3, 0usize..3, -86_400i64..72 * 86_400, window_strategy(), 1u32..4), 1..40),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path());
        let mut reference: HashMap<(u8, &str), Vec<i64>> = HashMap::new();
        let mut seen_ids = HashSet::new();
        for batch in &batches {
            let mut expected_recorded = 0;
            let mut expected_duplicates = 0;
            for generated in batch {
                if let Some(id) = generated.id
                    && !seen_ids.insert(id)
                {
                    expected_duplicates += 1;
                    continue;
                }
                expected_recorded += 1;
                for (index, key) in CAP_KEYS.iter().enumerate() {
                    if generated.key_mask & (1 << index) != 0 {
                        reference.entry((generated.user, key)).or_default().push(BASE_UNIX_SECONDS + generated.at_offset_seconds);
                    }
                }
            }
            let impressions: Vec<NewImpression> = batch.iter().map(to_new_impression).collect();
            let outcome = store.record(&impressions).expect("record");
            prop_assert_eq!(outcome.recorded, expected_recorded);
            prop_assert_eq!(outcome.duplicates, expected_duplicates);
        }
        for (user, key_index, at_offset, window, limit) in queries {
            let key = CAP_KEYS[key_index];
            let at = BASE_UNIX_SECONDS + at_offset;
            let fingerprint = user_fingerprint(&format!("ck:user-{user}"));
            let counted = store.count_in_window(fingerprint, key, &window, at);
            let truth = reference
                .get(&(user, key))
                .map(|times| times.iter().filter(|&&time| reference_counts(&window, time, at)).count() as u32)
                .unwrap_or(0);
            prop_assert_eq!(counted, truth, "user {} key {} at {} window {:?}", user, key, at, window);
            // All caps of the user at once give the same counts.
            let queries: Vec<CountQuery> = CAP_KEYS
                .iter()
                .map(|cap_key| {
                    let (after_exclusive, until_inclusive) = window.count_range(at, RETENTION_SECONDS);
                    CountQuery { cap_key_hash: cap_key_hash(cap_key), after_exclusive, until_inclusive }
                })
                .collect();
            let mut counts = vec![7];
            store.count_many(fingerprint, &queries, &mut counts);
            prop_assert_eq!(counts.len(), 1 + CAP_KEYS.len());
            prop_assert_eq!(counts[1 + key_index], counted);
            // A cap has room while the count is below the limit (limit 1 = cooldown).
            prop_assert_eq!(counted < limit, truth < limit);
        }
        store.shutdown().expect("shutdown");
    }

    #[test]
    fn entries_beyond_the_exact_limit_never_under_count(
        gaps in prop::collection::vec(0i64..5_000, 1..2_600),
        queries in prop::collection::vec((0i64..13_000_000, 0u32..(30 * 86_400)), 1..30),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path());
        let fingerprint = user_fingerprint("ifa:heavy");
        let mut times = Vec::new();
        let mut time = BASE_UNIX_SECONDS;
        for gap in gaps {
            // Mostly ascending, sometimes out of order.
            time += gap;
            times.push(if gap % 11 == 0 { time - 20_000 } else { time });
        }
        for chunk in times.chunks(100) {
            let impressions: Vec<NewImpression> = chunk
                .iter()
                .map(|&at| NewImpression { user_fingerprint: fingerprint, cap_keys: vec!["li:1".into()], at_unix_seconds: at, impression_id: String::new() })
                .collect();
            store.record(&impressions).expect("record");
        }
        for (at_offset, window_seconds) in queries {
            let at = BASE_UNIX_SECONDS + at_offset;
            let window = CapWindow { window_seconds, ..CapWindow::default() };
            let counted = store.count_in_window(fingerprint, "li:1", &window, at);
            let truth = times.iter().filter(|&&t| reference_counts(&window, t, at)).count() as u32;
            if times.len() <= EXACT_LIMIT {
                prop_assert_eq!(counted, truth);
            } else {
                prop_assert!(counted >= truth, "{} < {}", counted, truth);
            }
        }
        store.shutdown().expect("shutdown");
    }
}

#[test]
fn concurrent_retries_of_one_impression_count_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = FreqConfig {
        fsync: FsyncPolicy::Always,
        retention_seconds: RETENTION_SECONDS,
        ..FreqConfig::new(dir.path())
    };
    let (store, _) = FreqStore::open(config).expect("open");
    let fingerprint = user_fingerprint("ifa:retry");
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut totals = (0, 0);
                for id in 0..50 {
                    let impression = NewImpression {
                        user_fingerprint: fingerprint,
                        cap_keys: vec!["li:7".into(), "camp:1".into()],
                        at_unix_seconds: BASE_UNIX_SECONDS + id,
                        impression_id: format!("bid-{id}"),
                    };
                    let outcome = store.record(&[impression]).expect("record");
                    totals.0 += outcome.recorded;
                    totals.1 += outcome.duplicates;
                }
                totals
            })
        })
        .collect();
    let (recorded, duplicates) = threads
        .into_iter()
        .map(|thread| thread.join().expect("thread"))
        .fold((0, 0), |sum, totals| (sum.0 + totals.0, sum.1 + totals.1));
    assert_eq!(recorded, 50);
    assert_eq!(duplicates, 7 * 50);
    assert_eq!(store.count(fingerprint, "li:7", i64::MIN, i64::MAX), 50);
    assert_eq!(store.count(fingerprint, "camp:1", i64::MIN, i64::MAX), 50);
    store.shutdown().expect("shutdown");
}

#[test]
fn impressions_older_than_retention_are_accepted_but_not_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = FreqConfig {
        retention_seconds: 86_400,
        ..FreqConfig::new(dir.path())
    };
    let (store, _) = FreqStore::open(config).expect("open");
    let now = segd::unix_now_seconds();
    let fingerprint = user_fingerprint("ck:old");
    let impressions = [now - 2 * 86_400, now - 60].map(|at| NewImpression {
        user_fingerprint: fingerprint,
        cap_keys: vec!["li:1".into()],
        at_unix_seconds: at,
        impression_id: String::new(),
    });
    let outcome = store.record(&impressions).expect("record");
    assert_eq!(outcome.recorded, 2);
    assert_eq!(store.count(fingerprint, "li:1", i64::MIN, i64::MAX), 1);
    store.sweep(now + 86_400);
    assert_eq!(store.count(fingerprint, "li:1", i64::MIN, i64::MAX), 0);
    assert_eq!(store.stats().entries, 0);
    store.shutdown().expect("shutdown");
}
