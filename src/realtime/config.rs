//! The `segd serve` flags of real-time audiences and forgetting, flattened
//! into [`crate::settings::ServeConfig`].

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct RealtimeArgs {
    /// Most (user, segment) entries the real-time overlay holds; an
    /// UpdateMembers that would add more is refused with RESOURCE_EXHAUSTED.
    /// Entries leave once the packs carry them (a newer build is served).
    #[arg(long, env = "SEGD_MAX_OVERLAY_ENTRIES", default_value_t = 10_000_000)]
    pub max_overlay_entries: u64,

    /// How long a ForgetUsers is kept and applied to every pack, including
    /// packs built after it.
    #[arg(long, env = "SEGD_FORGET_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3660))]
    pub forget_retention_days: u32,

    /// Most updates in one UpdateMembers, and users in one ForgetUsers.
    #[arg(long, env = "SEGD_MAX_UPDATES_PER_REQUEST", default_value_t = 100_000)]
    pub max_updates_per_request: usize,
}

impl RealtimeArgs {
    pub fn forget_retention_seconds(&self) -> i64 {
        i64::from(self.forget_retention_days) * 86_400
    }
}
