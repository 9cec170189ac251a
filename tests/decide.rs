//! `Decide` and `RecordImpressions` through a real server against a plain
//! reference: membership from the lookup model, caps from a list of
//! impression times per (user, key).

mod common;

use std::collections::HashMap;

use common::model::{Model, ModelPack};
use common::{TestServer, config, push};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use segd::proto::{
    Calendar, Candidate, DecideRequest, FrequencyCap, Impression, Reason, RecordImpressionsRequest,
    SegmentRef,
};
use tonic::Code;

const BUILT_AT: i64 = 1_790_000_000;
const RETENTION_SECONDS: i64 = 31 * 86_400;

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The first counted second of a cap at `at`, per docs/DESIGN.md.
fn window_start(cap: &FrequencyCap, at: i64) -> i64 {
    let offset = i64::from(cap.utc_offset_minutes) * 60;
    let local_day = (at + offset).div_euclid(86_400);
    let local_midnight = |day: i64| day * 86_400 - offset;
    match Calendar::try_from(cap.calendar).unwrap() {
        Calendar::Rolling if cap.window_seconds == 0 => at - RETENTION_SECONDS + 1,
        Calendar::Rolling => at - i64::from(cap.window_seconds) + 1,
        Calendar::Day => local_midnight(local_day),
        // 1970-01-01 was a Thursday: Monday-based weekday = (day + 3) mod 7.
        Calendar::Week => local_midnight(local_day - (local_day + 3).rem_euclid(7)),
        Calendar::Month => {
            let (_, _, day_of_month) = civil_from_days(local_day);
            local_midnight(local_day - (day_of_month - 1))
        }
    }
}

#[derive(Default)]
struct CapModel {
    /// (user, key) → impression times.
    times: HashMap<(String, String), Vec<i64>>,
}

impl CapModel {
    fn count(&self, user: &str, cap: &FrequencyCap, at: i64) -> u32 {
        let start = window_start(cap, at);
        self.times
            .get(&(user.to_owned(), cap.key.clone()))
            .map(|times| times.iter().filter(|&&t| t >= start && t <= at).count() as u32)
            .unwrap_or(0)
    }
}

fn is_member(model: &Model, user: &str, segment: &SegmentRef, at: i64) -> bool {
    !model
        .lookup(user, &[segment.segment_id], segment.max_age_seconds, at)
        .0
        .is_empty()
}

/// (eligible, reason, detail) per docs/DESIGN.md.
fn expected(
    model: &Model,
    caps: &CapModel,
    user: &str,
    candidate: &Candidate,
    at: i64,
) -> (bool, Reason, String) {
    if let Some(segment) = candidate
        .none_of
        .iter()
        .find(|segment| is_member(model, user, segment, at))
    {
        return (
            false,
            Reason::Excluded,
            format!("segment {}", segment.segment_id),
        );
    }
    if let Some(segment) = candidate
        .all_of
        .iter()
        .find(|segment| !is_member(model, user, segment, at))
    {
        return (
            false,
            Reason::NotInAudience,
            format!("segment {}", segment.segment_id),
        );
    }
    if !candidate.any_of.is_empty()
        && !candidate
            .any_of
            .iter()
            .any(|segment| is_member(model, user, segment, at))
    {
        let listed: Vec<String> = candidate
            .any_of
            .iter()
            .map(|segment| segment.segment_id.to_string())
            .collect();
        return (
            false,
            Reason::NotInAudience,
            format!("none of segments {}", listed.join(",")),
        );
    }
    if let Some(cap) = candidate
        .caps
        .iter()
        .find(|cap| caps.count(user, cap, at) >= cap.limit)
    {
        return (false, Reason::FrequencyCapped, cap.key.clone());
    }
    (true, Reason::Eligible, String::new())
}

fn random_cap(rng: &mut StdRng) -> FrequencyCap {
    let keys = ["li:1", "li:2", "li:3", "camp:9", "adv:4"];
    let calendar = *[
        Calendar::Rolling,
        Calendar::Rolling,
        Calendar::Day,
        Calendar::Week,
        Calendar::Month,
    ]
    .choose(rng)
    .unwrap();
    FrequencyCap {
        key: keys.choose(rng).unwrap().to_string(),
        limit: rng.random_range(1..=6),
        window_seconds: if calendar == Calendar::Rolling {
            *[0u32, 600, 3600, 86_400, 7 * 86_400].choose(rng).unwrap()
        } else {
            0
        },
        calendar: calendar as i32,
        utc_offset_minutes: *[0, 60, -300, 330, -720, 840].choose(rng).unwrap(),
    }
}

fn random_refs(rng: &mut StdRng, count: usize) -> Vec<SegmentRef> {
    (0..count)
        .map(|_| SegmentRef {
            segment_id: *[1u32, 2, 3, 4, 5, 6, 7, 8, 21, 22, 23, 24, 999]
                .choose(rng)
                .unwrap(),
            max_age_seconds: *[0u32, 3600, 86_400, 7 * 86_400].choose(rng).unwrap(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decide_equals_the_reference_model() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(data_dir.path())).await;
    // The store keeps impressions within retention of the server clock, so
    // this test lives in the present.
    let built_at = segd::unix_now_seconds() - 3 * 86_400;
    let model = Model::new(vec![
        ModelPack::random(31, "crm", "v1", built_at, 120, 1..=8),
        ModelPack::random(32, "events", "v1", built_at, 120, 21..=24),
    ]);
    let mut admin = server.admin().await;
    for pack in &model.packs {
        push(&mut admin, &pack.bytes(), false).await.unwrap();
    }
    let mut client = server.segments().await;
    let mut rng = StdRng::seed_from_u64(99);
    let users: Vec<String> = model
        .packs
        .iter()
        .flat_map(|pack| pack.members.keys().take(40).cloned())
        .chain(["nobody-1".to_owned(), "nobody-2".to_owned()])
        .collect();
    let keys = ["li:1", "li:2", "li:3", "camp:9", "adv:4"];
    let at = built_at + 2 * 86_400 + 7 * 3600 + 17;

    // Impressions over the last 40 days, some retried with the same id.
    let mut caps = CapModel::default();
    let mut impressions = Vec::new();
    for number in 0..1500 {
        let user = users.choose(&mut rng).unwrap().clone();
        let key_count = rng.random_range(1..=3);
        let cap_keys: Vec<String> = keys
            .choose_multiple(&mut rng, key_count)
            .map(|key| key.to_string())
            .collect();
        // Keep clear of the retention edge so the clock moving during the test
        // cannot change which impressions are kept.
        let mut time = at - rng.random_range(0..40 * 86_400);
        if (time - (segd::unix_now_seconds() - RETENTION_SECONDS)).abs() < 600 {
            time += 1200;
        }
        let impression_id = format!("imp-{number}");
        if time > segd::unix_now_seconds() - RETENTION_SECONDS + 60 {
            for key in &cap_keys {
                caps.times
                    .entry((user.clone(), key.clone()))
                    .or_default()
                    .push(time);
            }
        }
        impressions.push(Impression {
            user_id: user,
            cap_keys,
            at_unix_seconds: time,
            impression_id,
        });
    }
    let mut recorded = 0;
    let mut duplicates = 0;
    for chunk in impressions.chunks(100) {
        let reply = client
            .record_impressions(RecordImpressionsRequest {
                impressions: chunk.to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        recorded += reply.recorded;
        duplicates += reply.duplicates;
    }
    assert_eq!((recorded, duplicates), (1500, 0));
    // Retries are counted once (ids are remembered within retention; older
    // impressions are accepted but neither stored nor remembered).
    let retained = |impression: &Impression| {
        impression.at_unix_seconds > segd::unix_now_seconds() - RETENTION_SECONDS + 60
    };
    let retry_batch: Vec<Impression> = impressions
        .iter()
        .filter(|i| retained(i))
        .take(50)
        .cloned()
        .collect();
    let retry = client
        .record_impressions(RecordImpressionsRequest {
            impressions: retry_batch,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((retry.recorded, retry.duplicates), (0, 50));

    let mut reasons_seen = std::collections::BTreeSet::new();
    for user in &users {
        let candidates: Vec<Candidate> = (0..20)
            .map(|number| {
                let all = rng.random_range(0..=2);
                let any = rng.random_range(0..=2);
                let none = rng.random_range(0..=1);
                let cap_count = rng.random_range(0..=2);
                Candidate {
                    id: format!("li-{number}"),
                    all_of: random_refs(&mut rng, all),
                    any_of: random_refs(&mut rng, any),
                    none_of: random_refs(&mut rng, none),
                    caps: (0..cap_count).map(|_| random_cap(&mut rng)).collect(),
                }
            })
            .collect();
        let reply = client
            .decide(DecideRequest {
                user_id: user.clone(),
                candidates: candidates.clone(),
                at_unix_seconds: at,
                line_item_ids: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.decisions.len(), candidates.len());
        for (candidate, decision) in candidates.iter().zip(&reply.decisions) {
            let (eligible, reason, detail) = expected(&model, &caps, user, candidate, at);
            assert_eq!(decision.candidate_id, candidate.id);
            assert_eq!(
                (decision.eligible, decision.reason, decision.detail.as_str()),
                (eligible, reason as i32, detail.as_str()),
                "user {user} candidate {candidate:?}"
            );
            reasons_seen.insert(decision.reason);
        }
    }
    assert_eq!(
        reasons_seen.len(),
        4,
        "every reason exercised: {reasons_seen:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_per_day_cap_blocks_the_fourth_impression() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(data_dir.path())).await;
    let mut client = server.segments().await;
    let noon = 1_795_694_400; // 2026-11-26 12:00 UTC
    let candidate = Candidate {
        id: "li-7".into(),
        caps: vec![FrequencyCap {
            key: "li:7".into(),
            limit: 3,
            calendar: Calendar::Day as i32,
            ..Default::default()
        }],
        ..Default::default()
    };
    let decide = |at: i64| DecideRequest {
        user_id: "ifa:alice".into(),
        candidates: vec![candidate.clone()],
        at_unix_seconds: at,
        line_item_ids: Vec::new(),
    };
    for shown in 0..3 {
        let decision = client
            .decide(decide(noon + shown))
            .await
            .unwrap()
            .into_inner()
            .decisions[0]
            .clone();
        assert!(decision.eligible, "impression {} is allowed", shown + 1);
        client
            .record_impressions(RecordImpressionsRequest {
                impressions: vec![Impression {
                    user_id: "ifa:alice".into(),
                    cap_keys: vec!["li:7".into(), "camp:9".into()],
                    at_unix_seconds: noon + shown,
                    impression_id: format!("bid-{shown}"),
                }],
            })
            .await
            .unwrap();
    }
    let fourth = client
        .decide(decide(noon + 10))
        .await
        .unwrap()
        .into_inner()
        .decisions[0]
        .clone();
    assert!(!fourth.eligible);
    assert_eq!(fourth.reason, Reason::FrequencyCapped as i32);
    assert_eq!(fourth.detail, "li:7");
    // A new UTC day has room again.
    let tomorrow = client
        .decide(decide(noon + 12 * 3600 + 1))
        .await
        .unwrap()
        .into_inner()
        .decisions[0]
        .clone();
    assert!(tomorrow.eligible);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_name_the_field_and_record_nothing() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = config(data_dir.path());
    settings.limits.max_candidates = 3;
    let server = TestServer::start(settings).await;
    let mut client = server.segments().await;
    let good = |id: &str| Impression {
        user_id: "u1".into(),
        cap_keys: vec!["li:1".into()],
        at_unix_seconds: BUILT_AT,
        impression_id: id.into(),
    };
    let cases: Vec<(Impression, &str)> = vec![
        (
            Impression {
                user_id: String::new(),
                ..good("a")
            },
            "impressions[1].user_id",
        ),
        (
            Impression {
                cap_keys: vec![String::new()],
                ..good("b")
            },
            "impressions[1].cap_keys[0]",
        ),
        (
            Impression {
                cap_keys: vec!["k".repeat(129)],
                ..good("c")
            },
            "impressions[1].cap_keys[0]",
        ),
        (
            Impression {
                cap_keys: Vec::new(),
                ..good("d")
            },
            "impressions[1].cap_keys",
        ),
    ];
    for (bad, field) in cases {
        let refused = client
            .record_impressions(RecordImpressionsRequest {
                impressions: vec![good("ok"), bad],
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(
            refused.message().contains(field),
            "{field}: {}",
            refused.message()
        );
    }
    // Nothing was recorded: the good impression is not a duplicate now.
    let reply = client
        .record_impressions(RecordImpressionsRequest {
            impressions: vec![good("ok")],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.recorded, reply.duplicates), (1, 0));

    let cap = |limit: u32, window_seconds: u32, calendar: Calendar| FrequencyCap {
        key: "li:1".into(),
        limit,
        window_seconds,
        calendar: calendar as i32,
        utc_offset_minutes: 0,
    };
    let decide_cases: Vec<(Vec<Candidate>, &str)> = vec![
        (
            vec![Candidate {
                id: "a".into(),
                caps: vec![cap(0, 60, Calendar::Rolling)],
                ..Default::default()
            }],
            "candidates[0].caps[0].limit",
        ),
        (
            vec![
                Candidate::default(),
                Candidate {
                    id: "b".into(),
                    caps: vec![
                        cap(1, 60, Calendar::Rolling),
                        cap(1, 40 * 86_400, Calendar::Rolling),
                    ],
                    ..Default::default()
                },
            ],
            "candidates[1].caps[1].window_seconds",
        ),
        (
            vec![Candidate {
                id: "c".into(),
                caps: vec![FrequencyCap {
                    key: String::new(),
                    ..cap(1, 60, Calendar::Rolling)
                }],
                ..Default::default()
            }],
            "candidates[0].caps[0].key",
        ),
        (vec![Candidate::default(); 4], "candidates"),
    ];
    for (candidates, field) in decide_cases {
        let refused = client
            .decide(DecideRequest {
                user_id: "u1".into(),
                candidates,
                at_unix_seconds: BUILT_AT,
                line_item_ids: Vec::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(
            refused.message().contains(field),
            "{field}: {}",
            refused.message()
        );
    }
    let empty_user = client.decide(DecideRequest::default()).await.unwrap_err();
    assert!(empty_user.message().contains("user_id"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_line_items_decide_like_inline_candidates_and_persist() {
    use segd::proto::{PutLineItemsRequest, StatusRequest};
    let data_dir = tempfile::tempdir().unwrap();
    let built_at = segd::unix_now_seconds() - 86_400;
    let pack = ModelPack::random(41, "crm", "v1", built_at, 200, 1..=8);
    let line_items: Vec<Candidate> = {
        let mut rng = StdRng::seed_from_u64(5);
        (0..30)
            .map(|number| Candidate {
                id: format!("li-{number}"),
                all_of: random_refs(&mut rng, number % 2),
                any_of: random_refs(&mut rng, number % 3),
                none_of: random_refs(&mut rng, number % 2),
                caps: vec![random_cap(&mut rng)],
            })
            .collect()
    };
    let ids: Vec<String> = line_items.iter().map(|item| item.id.clone()).collect();
    let users: Vec<String> = pack.members.keys().take(40).cloned().collect();
    let at = segd::unix_now_seconds();

    let inline_answers = {
        let server = TestServer::start(config(data_dir.path())).await;
        push(&mut server.admin().await, &pack.bytes(), false)
            .await
            .unwrap();
        let mut admin = server.admin().await;
        let put = admin
            .put_line_items(PutLineItemsRequest {
                version: "7".into(),
                line_items: line_items.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((put.line_items, put.unchanged), (30, false));
        let again = admin
            .put_line_items(PutLineItemsRequest {
                version: "7".into(),
                line_items: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(again.unchanged, "re-putting the served version is a no-op");
        let invalid = admin
            .put_line_items(PutLineItemsRequest {
                version: "8".into(),
                line_items: vec![Candidate {
                    id: "bad".into(),
                    caps: vec![FrequencyCap {
                        key: "li:x".into(),
                        limit: 0,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(invalid.code(), Code::InvalidArgument);
        assert!(
            invalid.message().contains("line_items[0].caps[0].limit"),
            "{}",
            invalid.message()
        );
        let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
        assert_eq!(
            (status.line_items_version.as_str(), status.line_items),
            ("7", 30)
        );

        let mut client = server.segments().await;
        let mut answers = Vec::new();
        for user in &users {
            let inline = client
                .decide(DecideRequest {
                    user_id: user.clone(),
                    candidates: line_items.clone(),
                    at_unix_seconds: at,
                    line_item_ids: Vec::new(),
                })
                .await
                .unwrap()
                .into_inner();
            answers.push(inline.decisions);
        }
        server.stop().await;
        answers
    };

    // After a restart the registered set is still there and answers the same.
    let server = TestServer::start(config(data_dir.path())).await;
    let mut client = server.segments().await;
    for (user, inline) in users.iter().zip(&inline_answers) {
        let mut line_item_ids = ids.clone();
        line_item_ids.push("no-such-line-item".into());
        let registered = client
            .decide(DecideRequest {
                user_id: user.clone(),
                candidates: Vec::new(),
                at_unix_seconds: at,
                line_item_ids,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&registered.decisions[..30], &inline[..]);
        let unknown = &registered.decisions[30];
        assert_eq!(
            (
                unknown.candidate_id.as_str(),
                unknown.eligible,
                unknown.reason,
                unknown.detail.as_str()
            ),
            (
                "no-such-line-item",
                false,
                Reason::Unspecified as i32,
                "unknown line item"
            )
        );
    }
    server.stop().await;
}
