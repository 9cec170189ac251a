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
mod pack_files;
mod state;
pub mod telemetry;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};

pub use dictionary::UserDictionary;
pub use freshness::FreshnessPolicy;
pub use index::{BuildThreads, IndexEntry, IndexError, UserMajorIndex};
pub use loaded::{LoadedPack, SegmentMeta};
pub use state::{
    LookupResult, Membership, OwnershipConflict, SegmentLocation, ServingState, UserView,
};

/// How often the retirement thread looks for states no reader holds any more.
const RETIRE_POLL: Duration = Duration::from_millis(20);

/// The swapped serving state.
pub struct Store {
    current: ArcSwap<ServingState>,
    next_generation: AtomicU64,
    retire: mpsc::Sender<Arc<ServingState>>,
    /// Applied on every install: which packs are withheld as stale.
    freshness: FreshnessPolicy,
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
        }
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
        let old = self.current.swap(Arc::new(state));
        // The retirement thread may have stopped only if the store is being
        // dropped; then dropping here is fine.
        let _ = self.retire.send(old);
        Ok(generation)
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
        waiting.retain(|state| Arc::strong_count(state) > 1);
        if waiting.len() < before {
            // A retired state can be gigabytes of small allocations.
            crate::memory::release_free_memory();
        }
    }
}
