//! Pack freshness: how old a pack may grow (now − built_at) before it is
//! *stale*, and whether a stale pack keeps answering. A pure policy: it takes
//! times as arguments and knows nothing of tokio or gRPC. The [`super::Store`]
//! applies it whenever it installs a state, and a background watcher
//! (`crate::freshness`) re-installs the same packs when one crosses its bound.

use ahash::AHashMap;

/// Freshness bounds and what to do with a stale pack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FreshnessPolicy {
    /// Largest pack age in seconds for packs without an override; 0 = no bound.
    pub default_max_age_seconds: u64,
    /// Per-pack bounds that replace the default; 0 = no bound for that pack.
    pub max_age_seconds_by_pack: AHashMap<String, u64>,
    /// When true a stale pack is *withheld*: its segments answer as unknown
    /// (non-members in `Decide`) until a fresh version is pushed. The pack
    /// stays listed in status and stays on disk.
    pub withhold_stale: bool,
}

impl FreshnessPolicy {
    /// The bound of `pack`, `None` when it has none.
    pub fn max_age_seconds(&self, pack: &str) -> Option<u64> {
        let bound = self
            .max_age_seconds_by_pack
            .get(pack)
            .copied()
            .unwrap_or(self.default_max_age_seconds);
        (bound > 0).then_some(bound)
    }

    /// Whether any pack can ever become stale (else no watcher is needed).
    pub fn has_bounds(&self) -> bool {
        self.default_max_age_seconds > 0 || self.max_age_seconds_by_pack.values().any(|&b| b > 0)
    }

    /// A pack is stale once `now - built_at` exceeds its bound.
    pub fn is_stale(&self, pack: &str, built_at_unix_seconds: i64, now_unix_seconds: i64) -> bool {
        let Some(bound) = self.max_age_seconds(pack) else {
            return false;
        };
        let age_seconds = now_unix_seconds.saturating_sub(built_at_unix_seconds);
        age_seconds > i64::try_from(bound).unwrap_or(i64::MAX)
    }

    /// Whether the pack must stop answering at `now`.
    pub fn withholds(&self, pack: &str, built_at_unix_seconds: i64, now_unix_seconds: i64) -> bool {
        self.withhold_stale && self.is_stale(pack, built_at_unix_seconds, now_unix_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_pack_bound_overrides_the_default() {
        let policy = FreshnessPolicy {
            default_max_age_seconds: 3600,
            max_age_seconds_by_pack: [("crm".to_owned(), 0), ("site".to_owned(), 60)]
                .into_iter()
                .collect(),
            withhold_stale: false,
        };
        assert_eq!(policy.max_age_seconds("other"), Some(3600));
        assert_eq!(policy.max_age_seconds("crm"), None);
        assert_eq!(policy.max_age_seconds("site"), Some(60));
        assert!(!policy.is_stale("site", 1000, 1060));
        assert!(policy.is_stale("site", 1000, 1061));
        assert!(!policy.is_stale("crm", 0, i64::MAX));
        assert!(policy.is_stale("other", 0, 3601));
        assert!(!policy.withholds("other", 0, 3601));
        assert!(policy.has_bounds());
        assert!(!FreshnessPolicy::default().has_bounds());
    }
}
