//! The serving state and how it changes.
//!
//! All serving data is one immutable [`ServingState`] behind an `ArcSwap`: a
//! request does exactly one `load()` and answers from it, so no answer mixes
//! generations. Changes (push, rollback, drop) build a new state off the
//! request path and `store` it; the old one is handed to a retirement thread
//! that frees it once no reader holds it, so a request thread never pays for
//! freeing a multi-gigabyte pack. This module knows nothing of gRPC or tokio;
//! [`catalog`] adds the data directory.

pub mod catalog;
mod dictionary;
pub mod freshness;
mod index;
mod loaded;
pub mod overlay;
mod pack_files;
mod state;
pub mod telemetry;
mod user_view;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};

pub use dictionary::UserDictionary;
pub use freshness::FreshnessPolicy;
pub use index::{BuildThreads, EntrySlice, IndexEntry, IndexError, UserMajorIndex};
pub use loaded::{LoadedPack, SegmentMeta};
pub use overlay::{Forget, MemberOp, Overlay, OverlayEntry, UserOverlay, UserOverlayRef};
pub use state::{LookupResult, OwnershipConflict, SegmentLocation, ServingState};
pub use user_view::{Membership, UserView};

/// How often the retirement thread looks for states no reader holds any more.
const RETIRE_POLL: Duration = Duration::from_millis(20);

/// The swapped serving state.
pub struct Store {
    current: ArcSwap<ServingState>,
    next_generation: AtomicU64,
    retire: mpsc::Sender<Arc<ServingState>>,
    /// Applied on every install: which packs are withheld as stale.
    freshness: FreshnessPolicy,
    /// Real-time updates and forgotten users, handed to every generation.
    overlay: Arc<Overlay>,
    /// Per pack name, the fold horizon (see [`Store::install_at`]); kept
    /// across a drop so a pack brought back still has it.
    fold_horizons: parking_lot::Mutex<ahash::AHashMap<String, i64>>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store (generation 0) with its retirement thread, no freshness bound.
    pub fn new() -> Self {
        Self::with_freshness(FreshnessPolicy::default())
    }

    /// An empty store that withholds stale packs as `freshness` says.
    pub fn with_freshness(freshness: FreshnessPolicy) -> Self {
        let (retire, retired) = mpsc::channel();
        std::thread::Builder::new()
            .name("segd-retire".into())
            .spawn(move || retire_states(retired))
            .expect("spawn the state retirement thread");
        Self {
            current: ArcSwap::from_pointee(ServingState::default()),
            next_generation: AtomicU64::new(1),
            retire,
            freshness,
            overlay: Arc::default(),
            fold_horizons: parking_lot::Mutex::default(),
        }
    }

    /// Raises a pack's fold horizon to at least `horizon` (from the real-time
    /// journal, or the build times of the versions on disk, at start-up).
    pub fn raise_fold_horizon(&self, pack: &str, horizon: i64) {
        let mut horizons = self.fold_horizons.lock();
        let current = horizons.entry(pack.to_owned()).or_insert(i64::MIN);
        *current = (*current).max(horizon);
    }

    /// Every pack's fold horizon.
    pub fn fold_horizons(&self) -> ahash::AHashMap<String, i64> {
        self.fold_horizons.lock().clone()
    }

    /// The real-time overlay every generation answers with.
    pub fn overlay(&self) -> &Arc<Overlay> {
        &self.overlay
    }

    /// The freshness policy applied on every install.
    pub fn freshness(&self) -> &FreshnessPolicy {
        &self.freshness
    }

    /// The current state. Cheap; never hold the guard across an `.await`.
    #[inline]
    pub fn load(&self) -> Guard<Arc<ServingState>> {
        self.current.load()
    }

    /// The current state as an owned `Arc`, for work that outlives a guard.
    pub fn load_full(&self) -> Arc<ServingState> {
        self.current.load_full()
    }

    /// Builds a state of the next generation from `packs` and swaps it in.
    /// Callers serialise changes (the catalog holds a lock), so the state they
    /// derived `packs` from is still the current one.
    pub fn install(&self, packs: Vec<Arc<LoadedPack>>) -> Result<u64, OwnershipConflict> {
        self.install_at(packs, crate::unix_now_seconds())
    }

    /// [`Store::install`] judging freshness at `now_unix_seconds`.
    pub fn install_at(
        &self,
        packs: Vec<Arc<LoadedPack>>,
        now_unix_seconds: i64,
    ) -> Result<u64, OwnershipConflict> {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let state = ServingState::with_withheld(generation, packs, |pack| {
            self.freshness
                .withholds(&pack.name, pack.built_at_unix_seconds, now_unix_seconds)
        })?;
        let horizons = self.advance_fold_horizons(&state);
        let state = state
            .with_overlay(self.overlay.clone())
            .with_fold_horizons(|pack| horizons.get(&pack.name).copied().unwrap_or(i64::MIN));
        let old = self.current.swap(Arc::new(state));
        // The retirement thread may have stopped only if the store is being
        // dropped; then dropping here is fine.
        let _ = self.retire.send(old);
        Ok(generation)
    }
}

impl Store {
    /// Folding: when a pack's served version changes, overlay updates that
    /// both the new and the replaced version carry (stamped at or before both
    /// build times) are folded for good; the replaced one is what `Rollback`
    /// restores, so an update only one of them carries stays. Deterministic:
    /// decided here, at the swap, not by a background sweep.
    fn advance_fold_horizons(&self, next: &ServingState) -> ahash::AHashMap<String, i64> {
        let current = self.current.load();
        let mut horizons = self.fold_horizons.lock();
        for pack in next.packs() {
            if let Some(replaced) = current.pack(&pack.name)
                && !Arc::ptr_eq(replaced, pack)
            {
                let both_carry = replaced
                    .built_at_unix_seconds
                    .min(pack.built_at_unix_seconds);
                let horizon = horizons.entry(pack.name.clone()).or_insert(i64::MIN);
                *horizon = (*horizon).max(both_carry);
            }
        }
        horizons.clone()
    }
}

/// Frees retired states once the retirement thread holds the last reference,
/// so the (possibly large) deallocation happens here and not in a request.
fn retire_states(retired: mpsc::Receiver<Arc<ServingState>>) {
    let mut waiting: Vec<Arc<ServingState>> = Vec::new();
    loop {
        match retired.recv_timeout(RETIRE_POLL) {
            Ok(state) => waiting.push(state),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if waiting.is_empty() {
                    return;
                }
                std::thread::sleep(RETIRE_POLL);
            }
        }
        let before = waiting.len();
        let freeing_started = std::time::Instant::now();
        waiting.retain(|state| Arc::strong_count(state) > 1);
        if waiting.len() < before {
            // A retired state can be gigabytes of small allocations.
            crate::memory::release_free_memory();
            tracing::debug!(
                states = before - waiting.len(),
                free_ms = freeing_started.elapsed().as_millis() as u64,
                "retired serving state freed"
            );
        }
    }
}
