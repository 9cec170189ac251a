//! The details rendered into the shared buffer against the `format!` texts
//! they replaced (the old `decide.rs` built each detail as its own
//! `String` with these formats).

use proptest::prelude::*;

use super::*;

/// One step of building an answer.
#[derive(Debug, Clone)]
enum Step {
    Eligible,
    Segment(bool, u32),
    NoneOf(Vec<u32>),
    Unknown,
    /// Refuse the decision at this position (of those so far) by a cap key.
    Capped(prop::sample::Index, String),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(Step::Eligible),
        (any::<bool>(), any::<u32>()).prop_map(|(excluded, id)| Step::Segment(excluded, id)),
        prop::collection::vec(prop_oneof![0u32..20, any::<u32>()], 1..6).prop_map(Step::NoneOf),
        Just(Step::Unknown),
        (any::<prop::sample::Index>(), "[a-z:0-9é]{0,12}")
            .prop_map(|(index, key)| Step::Capped(index, key)),
    ]
}

/// The decision the old code built for `step`, by `format!`.
fn old_decision(step: &Step) -> Decision {
    let refused = |reason: Reason, detail: String| Decision {
        candidate_id: String::new(),
        eligible: false,
        reason: reason as i32,
        detail,
    };
    match step {
        Step::Eligible => Decision {
            candidate_id: String::new(),
            eligible: true,
            reason: Reason::Eligible as i32,
            detail: String::new(),
        },
        Step::Segment(true, id) => refused(Reason::Excluded, format!("segment {id}")),
        Step::Segment(false, id) => refused(Reason::NotInAudience, format!("segment {id}")),
        Step::NoneOf(ids) => {
            let listed: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
            refused(
                Reason::NotInAudience,
                format!("none of segments {}", listed.join(",")),
            )
        }
        Step::Unknown => Decision {
            candidate_id: String::new(),
            eligible: false,
            reason: Reason::Unspecified as i32,
            detail: "unknown line item".to_owned(),
        },
        Step::Capped(..) => unreachable!("applied to an earlier decision"),
    }
}

/// Builds an answer of `steps` through the `Answer` interface `decide` uses.
fn answer_of<A: Answer>(mut answer: A, steps: &[Step]) -> A {
    let mut len = 0usize;
    for step in steps {
        match step {
            Step::Eligible => answer.push_eligible(),
            Step::Segment(excluded, id) => {
                let reason = if *excluded {
                    Reason::Excluded
                } else {
                    Reason::NotInAudience
                };
                answer.push_segment(reason, *id);
            }
            Step::NoneOf(ids) => {
                let refs: Vec<SegmentRef> = ids
                    .iter()
                    .map(|&segment_id| SegmentRef {
                        segment_id,
                        max_age_seconds: 0,
                    })
                    .collect();
                answer.push_none_of(&refs);
            }
            Step::Unknown => answer.push_unknown_line_item(),
            Step::Capped(index, key) => {
                if len > 0 {
                    answer.refuse(index.index(len), Reason::FrequencyCapped, key);
                }
                continue;
            }
        }
        len += 1;
    }
    answer
}

/// What the old code answered for `steps`.
fn old_answer(steps: &[Step]) -> Vec<Decision> {
    let mut expected: Vec<Decision> = Vec::new();
    for step in steps {
        if let Step::Capped(index, key) = step {
            if !expected.is_empty() {
                let at = index.index(expected.len());
                expected[at] = Decision {
                    candidate_id: String::new(),
                    eligible: false,
                    reason: Reason::FrequencyCapped as i32,
                    detail: key.clone(),
                };
            }
            continue;
        }
        expected.push(old_decision(step));
    }
    expected
}

proptest! {
    #[test]
    fn details_render_the_old_format_texts(steps in prop::collection::vec(step(), 0..40)) {
        let mut expected = old_answer(&steps);
        // The library's owned form (ids are the caller's).
        let owned = answer_of(Vec::<Decision>::new(), &steps);
        prop_assert_eq!(&owned, &expected);
        // The server's form.
        let decisions = answer_of(Decisions::with_capacity(2), &steps);
        prop_assert_eq!(decisions.len(), expected.len());
        let ids: Vec<String> = (0..expected.len()).map(|index| format!("c{index}")).collect();
        for (decision, id) in expected.iter_mut().zip(&ids) {
            decision.candidate_id = id.clone();
        }
        prop_assert_eq!(decisions.to_proto(ids.iter().map(String::as_str)), expected.clone());
        for (index, decision) in expected.iter().enumerate() {
            prop_assert_eq!(decisions.is_eligible(index), decision.eligible);
            prop_assert_eq!(decisions.get(index).detail, decision.detail.as_str());
            prop_assert_eq!(decisions.get_bytes(index).1, decision.detail.as_bytes());
        }
    }
}

#[test]
fn numbers_are_spelled_like_display() {
    for number in [
        0u32,
        7,
        9,
        10,
        99,
        100,
        123_456,
        999_999_999,
        1_000_000_000,
        u32::MAX,
    ]
    .into_iter()
    // Every number of up to 5 digits, and those next to each group of four.
    .chain(0..=100_000)
    .chain(
        [10u32.pow(8), 10u32.pow(9)]
            .into_iter()
            .flat_map(|power| power - 2..=power + 2),
    )
    .chain([100_000_001, 1_000_010_000, 4_000_000_009])
    {
        let mut decisions = Decisions::default();
        decisions.push_segment(Reason::Excluded, number);
        assert_eq!(decisions.get(0).detail, format!("segment {number}"));
    }
}
