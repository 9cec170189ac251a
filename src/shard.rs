//! Audience shards: which of `N` shards a user belongs to, and this replica's
//! shard (`segd serve --shard I/N`).
//!
//! A user's shard among `count` is `floor(fingerprint × count / 2^64)`, with
//! the fingerprint of [`crate::user_fingerprint`] (xxh3-64, seed 0): shards are
//! contiguous fingerprint ranges, so going from `N` to `2N` shards splits each
//! range in two (shard `i` of `N` becomes shards `2i` and `2i + 1` of `2N`).
//! Clients route with the same function; the README lists test vectors that
//! [`tests`] asserts, so the documented function cannot drift from this one.
//!
//! Pure arithmetic: this module knows nothing of packs, gRPC or NATS.

use std::fmt;
use std::str::FromStr;

use clap::Args;

/// Most shards a fleet may have: far beyond any fleet, small enough that a
/// typo (`--shard 0/40000000`) is caught.
pub const MAX_SHARD_COUNT: u32 = 65_536;

/// One shard among `count`: `index` in `0..count`. `0/1` is unsharded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// One shard holding every user.
    pub const UNSHARDED: Shard = Shard { index: 0, count: 1 };

    /// `index` of `count`, or why it is not a shard.
    pub fn new(index: u32, count: u32) -> Result<Shard, String> {
        if count == 0 || count > MAX_SHARD_COUNT {
            return Err(format!(
                "shard count {count} is out of range (1..={MAX_SHARD_COUNT})"
            ));
        }
        if index >= count {
            return Err(format!(
                "shard index {index} is not below the shard count {count} (indexes start at 0)"
            ));
        }
        Ok(Shard { index, count })
    }

    pub fn is_sharded(&self) -> bool {
        self.count > 1
    }

    /// Whether a user of this fingerprint belongs to this shard.
    pub fn owns(&self, user_fingerprint: u64) -> bool {
        shard_of_fingerprint(user_fingerprint, self.count) == self.index
    }
}

/// `floor(fingerprint × count / 2^64)`, in u128 so nothing overflows.
/// `count` 0 is treated as 1 (every user in shard 0).
pub fn shard_of_fingerprint(user_fingerprint: u64, count: u32) -> u32 {
    let count = count.max(1);
    ((user_fingerprint as u128 * count as u128) >> 64) as u32
}

/// The shard among `count` of a user id.
pub fn shard_of_user(user_id: &str, count: u32) -> u32 {
    shard_of_fingerprint(crate::user_fingerprint(user_id), count)
}

impl fmt::Display for Shard {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `I/N`, e.g. `0/2` (the first of two shards).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (index, count) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{text:?}: expected INDEX/COUNT, e.g. 0/2"))?;
        let index = index
            .trim()
            .parse()
            .map_err(|error| format!("{text:?}: shard index {index:?}: {error}"))?;
        let count = count
            .trim()
            .parse()
            .map_err(|error| format!("{text:?}: shard count {count:?}: {error}"))?;
        Shard::new(index, count).map_err(|error| format!("{text:?}: {error}"))
    }
}

/// The `segd serve` flag of audience sharding, flattened into
/// [`crate::settings::ServeConfig`].
#[derive(Debug, Clone, Args)]
pub struct ShardSettings {
    /// This replica's audience shard, INDEX/COUNT (e.g. 0/2): it serves only
    /// packs of that shard and refuses queries for users of other shards with
    /// FAILED_PRECONDITION. 0/1 = unsharded.
    #[arg(
        long = "shard",
        env = "SEGD_SHARD",
        default_value = "0/1",
        value_name = "I/N"
    )]
    pub shard: Shard,
}

impl Default for ShardSettings {
    fn default() -> Self {
        Self {
            shard: Shard::UNSHARDED,
        }
    }
}

/// A query for a user of another shard, as the message a caller sees.
pub fn misrouted_message(user_id: &str, replica_shard: Shard) -> String {
    let user_shard = shard_of_user(user_id, replica_shard.count);
    format!(
        "user {user_id:?} belongs to shard {user_shard}/{count}, this replica serves shard {replica_shard}: route by floor(xxh3_64(user_id) * {count} / 2^64)",
        count = replica_shard.count
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's test vectors ("Sharding" section): id, fingerprint, and
    /// the shard among 2, 3 and 16. A change here must change the README.
    const VECTORS: &[(&str, u64, [u32; 3])] = &[
        ("user-1", 0x7c7615c11438e5c9, [0, 1, 7]),
        ("user-2", 0x20333bb6481664d4, [0, 0, 2]),
        ("user-3", 0xa67a7f4df31cf255, [1, 1, 10]),
        ("user-7", 0xb1de7a364def053e, [1, 2, 11]),
        ("user-8", 0xc931fcb1bab0270c, [1, 2, 12]),
        ("alice", 0x4da10dd61a0116b0, [0, 0, 4]),
        ("bob", 0x1403c0c40f49b8e5, [0, 0, 1]),
        ("carol", 0xe2fdb994ad3fcba4, [1, 2, 14]),
    ];

    #[test]
    fn readme_vectors_hold() {
        for (user_id, fingerprint, shards) in VECTORS {
            assert_eq!(
                crate::user_fingerprint(user_id),
                *fingerprint,
                "{user_id:?}"
            );
            for (count, shard) in [2, 3, 16].into_iter().zip(shards) {
                assert_eq!(
                    shard_of_user(user_id, count),
                    *shard,
                    "{user_id:?} of {count}"
                );
            }
        }
    }

    #[test]
    fn readme_lists_the_vectors() {
        let readme = include_str!("../README.md");
        for (user_id, fingerprint, shards) in VECTORS {
            let row = format!(
                "| `{user_id}` | `{fingerprint:#018x}` | {} | {} | {} |",
                shards[0], shards[1], shards[2]
            );
            assert!(readme.contains(&row), "README lacks the row {row}");
        }
    }

    #[test]
    fn ranges_are_contiguous_and_split_in_two() {
        assert_eq!(shard_of_fingerprint(0, 7), 0);
        assert_eq!(shard_of_fingerprint(u64::MAX, 7), 6);
        assert_eq!(shard_of_fingerprint(1 << 63, 2), 1);
        assert_eq!(shard_of_fingerprint((1 << 63) - 1, 2), 0);
        for step in 0..10_000u64 {
            let fingerprint = step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for count in [1u32, 2, 3, 5, 16, 1000] {
                let coarse = shard_of_fingerprint(fingerprint, count);
                let fine = shard_of_fingerprint(fingerprint, count * 2);
                assert!(coarse < count);
                assert_eq!(
                    fine / 2,
                    coarse,
                    "{fingerprint:#x} of {count} vs {}",
                    count * 2
                );
            }
        }
    }

    #[test]
    fn parses_and_refuses() {
        assert_eq!("1/3".parse::<Shard>(), Ok(Shard { index: 1, count: 3 }));
        assert_eq!(" 0 / 1 ".parse::<Shard>(), Ok(Shard::UNSHARDED));
        for (bad, expected) in [
            ("3/3", "not below the shard count 3"),
            ("0/0", "shard count 0 is out of range"),
            ("1", "expected INDEX/COUNT"),
            ("a/2", "shard index \"a\""),
            ("0/-2", "shard count \"-2\""),
            ("0/70000", "out of range"),
        ] {
            let error = bad.parse::<Shard>().unwrap_err();
            assert!(error.contains(expected), "{bad}: {error}");
        }
    }

    #[test]
    fn misrouted_message_names_both_shards() {
        let replica = Shard { index: 0, count: 2 };
        let user = (0..100)
            .map(|n| format!("u{n}"))
            .find(|id| shard_of_user(id, 2) == 1)
            .expect("some user of shard 1");
        let message = misrouted_message(&user, replica);
        assert!(message.contains("belongs to shard 1/2"), "{message}");
        assert!(message.contains("serves shard 0/2"), "{message}");
    }
}
