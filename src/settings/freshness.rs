//! How old a pack may be, and what a stale one does.

use clap::{Args, ValueEnum};

use crate::store::FreshnessPolicy;

/// What a pack older than its freshness bound does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StalePacks {
    /// Keep answering from it; it is reported stale in status, metrics and logs.
    Serve,
    /// Stop using it: its segments answer as unknown (non-members in Decide)
    /// until a fresh version is pushed. The file stays on disk.
    Drop,
}

/// A per-pack freshness bound, `PACK=SECONDS` on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackMaxAge {
    pub pack: String,
    /// 0 = no bound for this pack.
    pub max_age_seconds: u64,
}

impl std::str::FromStr for PackMaxAge {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (pack, seconds) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: expected PACK=SECONDS"))?;
        if !crate::store::catalog::valid_pack_name(pack) {
            return Err(format!("{text:?}: {pack:?} is not a valid pack name"));
        }
        let max_age_seconds = seconds
            .parse()
            .map_err(|error| format!("{text:?}: seconds {seconds:?}: {error}"))?;
        Ok(Self {
            pack: pack.to_owned(),
            max_age_seconds,
        })
    }
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Pack freshness")]
pub struct FreshnessSettings {
    /// A pack older than this (now - built_at, in seconds) is stale; 0 = no bound.
    #[arg(long, env = "SEGD_MAX_PACK_AGE_SECONDS", default_value_t = 0)]
    pub max_pack_age_seconds: u64,

    /// Per-pack freshness bound, PACK=SECONDS (0 = none), replacing
    /// --max-pack-age-seconds for that pack. Repeatable; comma-separated in the env.
    #[arg(
        long,
        env = "SEGD_MAX_PACK_AGE",
        value_name = "PACK=SECONDS",
        value_delimiter = ','
    )]
    pub max_pack_age: Vec<PackMaxAge>,

    /// What a stale pack does: keep serving (reported stale) or stop answering
    /// until a fresh version is pushed.
    #[arg(long, env = "SEGD_STALE_PACKS", value_enum, default_value_t = StalePacks::Serve)]
    pub stale_packs: StalePacks,
}

impl FreshnessSettings {
    /// The pack freshness bounds and stale-pack behaviour of the flags.
    pub fn policy(&self) -> FreshnessPolicy {
        FreshnessPolicy {
            default_max_age_seconds: self.max_pack_age_seconds,
            max_age_seconds_by_pack: self
                .max_pack_age
                .iter()
                .map(|bound| (bound.pack.clone(), bound.max_age_seconds))
                .collect(),
            withhold_stale: self.stale_packs == StalePacks::Drop,
        }
    }
}
