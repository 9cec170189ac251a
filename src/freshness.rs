//! The pack freshness watcher: once a second it re-judges every served pack
//! against the bounds of `--max-pack-age-seconds` / `--max-pack-age`, has the
//! catalog install a new generation when a pack crosses its bound under
//! `--stale-packs drop` (so the hot path only reads a flag it already loads),
//! and logs each pack version that turns stale once, not per request.
//!
//! The policy itself is [`crate::store::FreshnessPolicy`]; this module only
//! drives it in time. It never touches pack files.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::periodic::Ticker;
use crate::store::catalog::Catalog;

/// How often staleness is re-judged.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Watches until `shutdown` is cancelled. Returns at once when no pack has a bound.
pub async fn watch(catalog: Arc<Catalog>, shutdown: CancellationToken) {
    if !catalog.store().freshness().has_bounds() {
        return;
    }
    let mut ticker = Ticker::new(CHECK_INTERVAL, shutdown);
    // (pack, version) already reported stale.
    let mut reported: HashSet<(String, String)> = HashSet::new();
    while ticker.tick().await {
        let now = crate::unix_now_seconds();
        let refresh_catalog = catalog.clone();
        // Installing builds a state (a map over every segment): off the runtime.
        match tokio::task::spawn_blocking(move || refresh_catalog.refresh_freshness(now)).await {
            Ok(Ok(Some(generation))) => {
                info!(generation, "pack freshness changed, state reinstalled")
            }
            Ok(Ok(None)) => {}
            Ok(Err(error)) => warn!(error = %error, "pack freshness check failed"),
            Err(join_error) => warn!(error = %join_error, "pack freshness task failed"),
        }
        report_stale(&catalog, now, &mut reported);
    }
}

/// Warns once per pack version that is stale; forgets versions no longer served.
fn report_stale(
    catalog: &Catalog,
    now_unix_seconds: i64,
    reported: &mut HashSet<(String, String)>,
) {
    let state = catalog.store().load_full();
    let policy = catalog.store().freshness();
    let mut stale_now: HashSet<(String, String)> = HashSet::new();
    for pack in state.packs() {
        if !policy.is_stale(&pack.name, pack.built_at_unix_seconds, now_unix_seconds) {
            continue;
        }
        let key = (pack.name.clone(), pack.version.clone());
        if !reported.contains(&key) {
            warn!(
                pack = %pack.name,
                version = %pack.version,
                age_seconds = now_unix_seconds - pack.built_at_unix_seconds,
                max_age_seconds = policy.max_age_seconds(&pack.name).unwrap_or(0),
                withheld = state.is_withheld(&pack.name),
                "pack is stale"
            );
        }
        stale_now.insert(key);
    }
    *reported = stale_now;
}
