//! Building a pack from the TSV inputs of `segctl build`.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use segd::pack::{BuildError, Pack, PackBuilder, last_seen_from_hours_ago, read_pack, write_pack};
use segd::user_fingerprint;

const BUILT_AT: i64 = 1_717_200_000;
const HOUR: i64 = 3600;

fn build(segments: &str, memberships: &str) -> Result<Pack, BuildError> {
    let mut builder = PackBuilder::new("crm", "v1", BUILT_AT);
    builder.add_segment_definitions(segments.as_bytes(), "segments.tsv")?;
    builder.add_memberships(memberships.as_bytes(), "members.tsv", |_| {})?;
    builder.finish()
}

/// Segment id → user id → last seen, read back out of a pack.
fn members_of(pack: &Pack, user_ids: &[&str]) -> BTreeMap<u32, BTreeMap<String, i64>> {
    let ordinal_of = |user_id: &str| {
        pack.user_fingerprints
            .binary_search(&user_fingerprint(user_id))
            .ok()
            .map(|ordinal| ordinal as u32)
    };
    let mut result = BTreeMap::new();
    for segment in &pack.segments {
        let mut members = BTreeMap::new();
        for user_id in user_ids {
            let Some(ordinal) = ordinal_of(user_id) else {
                continue;
            };
            if !segment.members.contains(ordinal) {
                continue;
            }
            let rank = segment.members.rank(ordinal) as usize - 1;
            let hours = segment
                .last_seen_hours_ago
                .as_ref()
                .map_or(0, |hours| hours[rank]);
            members.insert(
                user_id.to_string(),
                last_seen_from_hours_ago(pack.built_at_unix_seconds, hours),
            );
        }
        result.insert(segment.id, members);
    }
    result
}

fn parse_error(result: Result<Pack, BuildError>) -> (String, usize, String) {
    match result {
        Err(BuildError::Parse {
            file,
            line,
            message,
        }) => (file, line, message),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn builds_segments_members_and_definitions() {
    let segments = "# id\tname\tkind\tttl\n\
                    7\tcart-abandoners\tretargeting\t2592000\n\
                    \n\
                    42\tconverters\texclusion\n\
                    100\tdefined-but-empty\n";
    let memberships = format!(
        "# user\tsegment\tlast_seen\n\
         ifa:a\t7\t{}\n\
         ifa:b\t7\n\
         \n\
         ck:c\t42\n\
         ifa:a\t9\n",
        BUILT_AT - 2 * HOUR
    );
    let pack = build(segments, &memberships).expect("builds");
    assert_eq!(pack.name, "crm");
    assert_eq!(pack.version, "v1");
    assert_eq!(pack.user_fingerprints.len(), 3);
    let ids: Vec<u32> = pack.segments.iter().map(|segment| segment.id).collect();
    assert_eq!(ids, [7, 9, 42, 100]);

    let cart = &pack.segments[0];
    assert_eq!(
        (cart.name.as_str(), cart.kind.as_str(), cart.ttl_seconds),
        ("cart-abandoners", "retargeting", 2_592_000)
    );
    let undefined = &pack.segments[1];
    assert_eq!(
        (
            undefined.name.as_str(),
            undefined.kind.as_str(),
            undefined.ttl_seconds
        ),
        ("segment-9", "", 0)
    );
    assert_eq!(pack.segments[2].kind, "exclusion");
    assert!(pack.segments[3].members.is_empty());
    assert_eq!(pack.segments[3].name, "defined-but-empty");

    // Recency only where a line carried a time; members without one are at build time.
    assert!(cart.last_seen_hours_ago.is_some());
    assert!(undefined.last_seen_hours_ago.is_none());
    assert!(pack.segments[2].last_seen_hours_ago.is_none());
    let members = members_of(&pack, &["ifa:a", "ifa:b", "ck:c"]);
    assert_eq!(
        members[&7],
        BTreeMap::from([
            ("ifa:a".to_string(), BUILT_AT - 2 * HOUR),
            ("ifa:b".to_string(), BUILT_AT)
        ])
    );
    assert_eq!(members[&9].keys().collect::<Vec<_>>(), ["ifa:a"]);
    assert_eq!(members[&42].keys().collect::<Vec<_>>(), ["ck:c"]);

    // What the builder makes, the writer writes and the reader reads.
    let bytes = write_pack(&pack).expect("writes");
    assert_eq!(read_pack(&bytes).expect("reads"), pack);
}

#[test]
fn a_duplicate_keeps_the_most_recent_time() {
    let memberships = format!(
        "u1\t5\t{}\nu1\t5\t{}\nu1\t5\t{}\nu2\t5\t{}\nu2\t5\n",
        BUILT_AT - 50 * HOUR,
        BUILT_AT - 3 * HOUR,
        BUILT_AT - 10 * HOUR,
        BUILT_AT - 7 * HOUR,
    );
    let pack = build("", &memberships).expect("builds");
    let segment = &pack.segments[0];
    assert_eq!(segment.members.len(), 2);
    assert_eq!(pack.memberships(), 2);
    let members = members_of(&pack, &["u1", "u2"]);
    // A line without a time means "seen at build time", the most recent of all.
    assert_eq!(
        members[&5],
        BTreeMap::from([
            ("u1".to_string(), BUILT_AT - 3 * HOUR),
            ("u2".to_string(), BUILT_AT)
        ])
    );
}

#[test]
fn recency_rounds_toward_older_by_less_than_an_hour() {
    let memberships = format!(
        "one-second\t1\t{}\n\
         exact-hour\t1\t{}\n\
         hour-and-a-bit\t1\t{}\n\
         future\t1\t{}\n\
         ancient\t1\t0\n",
        BUILT_AT - 1,
        BUILT_AT - HOUR,
        BUILT_AT - HOUR - 1,
        BUILT_AT + 86_400,
    );
    let pack = build("", &memberships).expect("builds");
    let members = members_of(
        &pack,
        &[
            "one-second",
            "exact-hour",
            "hour-and-a-bit",
            "future",
            "ancient",
        ],
    );
    let last_seen = &members[&1];
    assert_eq!(last_seen["one-second"], BUILT_AT - HOUR);
    assert_eq!(last_seen["exact-hour"], BUILT_AT - HOUR);
    assert_eq!(last_seen["hour-and-a-bit"], BUILT_AT - 2 * HOUR);
    assert_eq!(last_seen["future"], BUILT_AT);
    // Saturates at u16::MAX hours (about 7.5 years), older than the truth never younger.
    assert_eq!(last_seen["ancient"], BUILT_AT - 65_535 * HOUR);
}

#[test]
fn windows_line_endings_and_whitespace_lines_are_accepted() {
    let pack = build("3\tthree\r\n", "u1\t3\r\n   \r\n\r\nu2\t3\t1717199999\r\n").expect("builds");
    assert_eq!(pack.segments[0].name, "three");
    assert_eq!(pack.segments[0].members.len(), 2);
}

#[test]
fn malformed_membership_lines_name_file_and_line() {
    let cases: [(&[u8], usize, &str); 9] = [
        (b"u1\t5\nu2\tfive\n", 2, "bad segment id \"five\""),
        (b"u1\t-5\n", 1, "bad segment id"),
        (b"u1\t4294967296\n", 1, "bad segment id"),
        (b"# comment\nu1 5\n", 2, "missing tab"),
        (
            b"u1\t5\t17172O0000\n",
            1,
            "bad last-seen time \"17172O0000\"",
        ),
        (b"u1\t5\t\n", 1, "bad last-seen time"),
        (b"\t5\n", 1, "empty user id"),
        (b"u1\t5\t1\textra\n", 1, "too many fields"),
        (b"u\x00\t5\nbad\xff\t5\n", 2, "not valid UTF-8"),
    ];
    for (input, expected_line, expected_message) in cases {
        let mut builder = PackBuilder::new("crm", "v1", BUILT_AT);
        let result = builder.add_memberships(input, "-", |_| {}).map(|_| ());
        let Err(BuildError::Parse {
            file,
            line,
            message,
        }) = result
        else {
            panic!("{input:?}: expected a parse error, got {result:?}");
        };
        assert_eq!(file, "-", "{input:?}");
        assert_eq!(line, expected_line, "{input:?}");
        assert!(
            message.contains(expected_message),
            "{input:?}: {message:?} lacks {expected_message:?}"
        );
    }
}

#[test]
fn malformed_segment_lines_name_file_and_line() {
    let (file, line, message) = parse_error(build("1\tok\n2\n", ""));
    assert_eq!((file.as_str(), line), ("segments.tsv", 2));
    assert!(message.contains("missing tab"), "{message}");

    let (_, line, message) = parse_error(build("1\tok\tretargeting\tsoon\n", ""));
    assert_eq!(line, 1);
    assert!(message.contains("bad ttl_seconds \"soon\""), "{message}");

    let (_, _, message) = parse_error(build("x1\tname\n", ""));
    assert!(message.contains("bad segment id"), "{message}");

    let (_, _, message) = parse_error(build("1\t\n", ""));
    assert!(message.contains("empty segment name"), "{message}");

    let long_name = "n".repeat(256);
    let (_, _, message) = parse_error(build(&format!("1\t{long_name}\n"), ""));
    assert!(message.contains("256 bytes"), "{message}");

    let (_, line, message) = parse_error(build("1\ta\n# again\n1\tb\n", ""));
    assert_eq!(line, 3);
    assert!(
        message.contains("segment 1 defined twice (first at segments.tsv:1)"),
        "{message}"
    );

    let error = build("1\ta\t\t\t\n", "").expect_err("five fields");
    assert_eq!(
        error.to_string(),
        "segments.tsv:1: too many fields: expected segment_id<TAB>name[<TAB>kind[<TAB>ttl_seconds]]"
    );
}

#[test]
fn an_invalid_pack_name_is_refused_at_finish() {
    let mut builder = PackBuilder::new("../etc", "v1", BUILT_AT);
    builder
        .add_memberships("u\t1\n".as_bytes(), "-", |_| {})
        .expect("parses");
    assert!(matches!(builder.finish(), Err(BuildError::Pack(_))));
}

#[test]
fn progress_reports_the_lines_read() {
    let input: String = (0..10).map(|user| format!("u{user}\t1\n")).collect();
    let mut builder = PackBuilder::new("crm", "v1", BUILT_AT);
    let mut reported = Vec::new();
    let lines = builder
        .add_memberships(input.as_bytes(), "-", |lines_read| {
            reported.push(lines_read)
        })
        .expect("parses");
    assert_eq!(lines, 10);
    assert_eq!(reported.last(), Some(&10));
}

proptest! {
    /// Against a plain reference model: segment → user → most recent time.
    #[test]
    fn builder_matches_a_reference_model(
        lines in proptest::collection::vec(
            (0u8..40, 0u32..6, proptest::option::of(0i64..400_000)),
            0..300,
        ),
    ) {
        let mut input = String::new();
        let mut model: BTreeMap<u32, BTreeMap<String, i64>> = BTreeMap::new();
        let mut user_ids = BTreeSet::new();
        for (user, segment_id, seconds_ago) in &lines {
            let user_id = format!("user-{user}");
            let last_seen = match seconds_ago {
                Some(seconds_ago) => {
                    input.push_str(&format!("{user_id}\t{segment_id}\t{}\n", BUILT_AT - seconds_ago));
                    // Rounded toward older by less than an hour.
                    BUILT_AT - (seconds_ago + HOUR - 1) / HOUR * HOUR
                }
                None => {
                    input.push_str(&format!("{user_id}\t{segment_id}\n"));
                    BUILT_AT
                }
            };
            let entry = model.entry(*segment_id).or_default().entry(user_id.clone()).or_insert(last_seen);
            *entry = (*entry).max(last_seen);
            user_ids.insert(user_id);
        }
        let pack = build("", &input).expect("builds");
        let user_ids: Vec<&str> = user_ids.iter().map(String::as_str).collect();
        prop_assert_eq!(pack.user_fingerprints.len(), user_ids.len());
        prop_assert_eq!(members_of(&pack, &user_ids), model);
    }
}
