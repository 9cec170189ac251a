//! The data directory and every change to what is served: push, rollback,
//! drop, and loading everything at start-up.
//!
//! Layout: `DATA_DIR/packs/NAME.segpack` is what is served for pack `NAME`,
//! `DATA_DIR/packs/NAME.previous.segpack` the version before it, kept for
//! `Rollback`. A pushed pack arrives as a staged file in the packs directory
//! ([`pack_files`](super::pack_files) owns the files and their renames); it
//! is verified from that file, fsynced, rotated in with renames only and then
//! swapped in, so a restart serves what was last acknowledged and a crash or a
//! full disk at any point keeps both the served and the previous version.
//! Changes are serialised by one mutex; each runs on a blocking thread (the
//! caller's job), never on the async runtime.
//!
//! This file owns the directory, start-up loading, the freshness re-install
//! and the header-only reads `Status` makes; [`changes`] the operator's
//! changes (push, rollback, drop), [`versions`] the version order.

mod changes;
mod versions;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use tracing::{info, warn};

use super::pack_files::{PREVIOUS_MARK, PackFiles};
pub use super::pack_files::{StagedFile, UploadWriter};
use super::{BuildThreads, IndexError, LoadedPack, OwnershipConflict, Store};
use crate::pack::{self, PackBytes, PackError};
use crate::shard::Shard;
pub use versions::compare_versions;

/// `Status` reads at most this much of a previous file: its header.
const HEADER_READ_BYTES: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("invalid pack: {0}")]
    Pack(#[from] PackError),
    #[error("invalid pack: {0}")]
    Index(#[from] IndexError),
    #[error(transparent)]
    Ownership(#[from] OwnershipConflict),
    #[error(
        "pack {pack:?} version {pushed:?} is older than the served version {served:?}; push with allow_older_version to go back"
    )]
    OlderVersion {
        pack: String,
        pushed: String,
        served: String,
    },
    #[error("invalid pack name {0:?}: {rule}", rule = pack::names::PACK_NAME_RULE)]
    InvalidPackName(String),
    #[error(
        "pack {pack:?} is of shard {pack_shard}, this replica serves shard {replica_shard} (--shard): push it to a replica of shard {pack_shard}"
    )]
    WrongShard {
        pack: String,
        pack_shard: Shard,
        replica_shard: Shard,
    },
    #[error("no pack named {0:?} is served")]
    NoSuchPack(String),
    #[error("no previous version of pack {0:?} is kept")]
    NoPreviousVersion(String),
    /// A pack file of the server's own (served, or kept for rollback) no
    /// longer verifies: data loss on disk, not bad input and not a passing
    /// storage failure.
    #[error("load {}: {source}", path.display())]
    Damaged {
        path: PathBuf,
        #[source]
        source: PackError,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CatalogError {
    let context = context.into();
    move |source| CatalogError::Io { context, source }
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    pub pack: String,
    pub version: String,
    pub segments: u32,
    pub users: u64,
    pub memberships: u64,
    pub generation: u64,
    /// The version pushed was already served: nothing changed.
    pub unchanged: bool,
}

/// What a rollback restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackOutcome {
    pub pack: String,
    pub version: String,
    pub generation: u64,
}

pub struct Catalog {
    packs_dir: PathBuf,
    files: PackFiles,
    store: Arc<Store>,
    /// Serialises changes; a std mutex held only on blocking threads.
    change_lock: Mutex<()>,
    /// `--shard`: only packs of this shard are served.
    shard: Shard,
}

impl Catalog {
    /// Opens (creating if needed) `data_dir/packs`.
    pub fn open(data_dir: &Path, store: Arc<Store>) -> Result<Self, CatalogError> {
        let packs_dir = data_dir.join("packs");
        fs::create_dir_all(&packs_dir)
            .map_err(io_error(format!("create {}", packs_dir.display())))?;
        Ok(Self {
            files: PackFiles::new(packs_dir.clone()),
            packs_dir,
            store,
            change_lock: Mutex::new(()),
            shard: Shard::UNSHARDED,
        })
    }

    /// Serves only packs of `shard` (`--shard I/N`): a pushed, watched or
    /// rolled-back pack of another shard or shard count is refused, one in the
    /// data directory at start-up is skipped.
    pub fn with_shard(mut self, shard: Shard) -> Self {
        self.shard = shard;
        self
    }

    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// Refuses the pack file at `path` unless its header names this
    /// replica's shard. Reads the header only.
    fn check_shard(&self, path: &Path) -> Result<(), CatalogError> {
        let header = pack::read_header_file(path)?;
        let pack_shard = shard_of_header(&header);
        if pack_shard != self.shard {
            return Err(CatalogError::WrongShard {
                pack: header.name,
                pack_shard,
                replica_shard: self.shard,
            });
        }
        Ok(())
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn packs_dir(&self) -> &Path {
        &self.packs_dir
    }

    fn current_path(&self, name: &str) -> PathBuf {
        self.files.current(name)
    }

    /// The file kept for rollback of a pack (a fleet rollback shares it).
    pub fn previous_path(&self, name: &str) -> PathBuf {
        self.files.previous(name)
    }

    /// The version kept for rollback of a pack, if any (reads its header only,
    /// never the whole file).
    pub fn previous_version(&self, name: &str) -> Option<String> {
        pack::read_header_file(self.previous_path(name))
            .ok()
            .map(|header| header.version)
    }

    /// When the version kept for rollback of a pack was built, if any. Reads
    /// the file's first bytes only (the header).
    pub fn previous_built_at(&self, name: &str) -> Option<i64> {
        let mut head = Vec::new();
        fs::File::open(self.previous_path(name))
            .ok()?
            .take(HEADER_READ_BYTES)
            .read_to_end(&mut head)
            .ok()?;
        pack::read_header(&head)
            .ok()
            .map(|header| header.built_at_unix_seconds)
    }

    /// Whether any pack file is on disk (the demo fills only an empty directory).
    pub fn is_empty(&self) -> Result<bool, CatalogError> {
        let mut entries = fs::read_dir(&self.packs_dir)
            .map_err(io_error(format!("read {}", self.packs_dir.display())))?;
        Ok(entries.next().is_none())
    }

    /// Loads every served pack in the data directory and swaps them in as one
    /// generation. A pack whose current file is missing (a crash between the
    /// renames of a push) is served from its previous file.
    pub fn load_all(&self, loaded_at_unix_seconds: i64) -> Result<u64, CatalogError> {
        let _change = self.change_lock.lock();
        self.files
            .recover()
            .map_err(io_error(format!("recover {}", self.packs_dir.display())))?;
        let mut names: Vec<String> = Vec::new();
        let entries = fs::read_dir(&self.packs_dir)
            .map_err(io_error(format!("read {}", self.packs_dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_error(format!("read {}", self.packs_dir.display())))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file_name.strip_suffix(pack::FILE_SUFFIX) else {
                continue;
            };
            let name = name.strip_suffix(PREVIOUS_MARK).unwrap_or(name);
            if valid_pack_name(name) && !names.iter().any(|known| known == name) {
                names.push(name.to_owned());
            }
        }
        names.sort();
        let mut packs = Vec::with_capacity(names.len());
        for name in &names {
            let current = self.current_path(name);
            let path = if current.exists() {
                current
            } else {
                let previous = self.previous_path(name);
                // Only a dropped pack leaves a previous file and no current one.
                if self.is_dropped_marker(name) {
                    continue;
                }
                previous
            };
            // A file of another shard (a replica restarted with another
            // --shard, a file copied in by hand) is never served.
            if let Err(error @ CatalogError::WrongShard { .. }) = self.check_shard(&path) {
                warn!(file = %path.display(), error = %error, "pack of another shard in the data directory skipped");
                continue;
            }
            let loaded = load_pack_file(&path, loaded_at_unix_seconds, BuildThreads::AllCores)?;
            // Both versions on disk were served one after the other: the
            // real-time updates both carry are folded (see `Store::install_at`).
            if let Some(previous_built_at) = self.previous_built_at(name) {
                self.store
                    .raise_fold_horizon(name, previous_built_at.min(loaded.built_at_unix_seconds));
            }
            info!(
                pack = ?loaded.name,
                version = ?loaded.version,
                users = loaded.users(),
                memberships = loaded.memberships(),
                "pack loaded"
            );
            packs.push(Arc::new(loaded));
        }
        let generation = self.store.install_at(packs, loaded_at_unix_seconds)?;
        // The packs' bitmaps were freed after indexing; give the pages back.
        crate::memory::release_free_memory();
        Ok(generation)
    }

    /// Re-judges freshness at `now_unix_seconds`: when a pack crossed its bound
    /// (or a withheld one is no longer stale) the same packs are installed as a
    /// new generation. Returns that generation, `None` when nothing changed.
    /// Files are not touched: a withheld pack is still on disk and in status.
    pub fn refresh_freshness(&self, now_unix_seconds: i64) -> Result<Option<u64>, CatalogError> {
        let _change = self.change_lock.lock();
        let state = self.store.load_full();
        let policy = self.store.freshness();
        let changed = state.packs().iter().any(|pack| {
            state.is_withheld(&pack.name)
                != policy.withholds(&pack.name, pack.built_at_unix_seconds, now_unix_seconds)
        });
        if !changed {
            return Ok(None);
        }
        let generation = self
            .store
            .install_at(state.packs().to_vec(), now_unix_seconds)?;
        Ok(Some(generation))
    }

    fn dropped_marker_path(&self, name: &str) -> PathBuf {
        self.files.dropped_marker(name)
    }

    /// A new upload file in the packs directory for a push to stream into.
    pub fn stage_upload(&self) -> Result<StagedFile, CatalogError> {
        self.files.stage().map_err(io_error(format!(
            "create an upload in {}",
            self.packs_dir.display()
        )))
    }

    fn is_dropped_marker(&self, name: &str) -> bool {
        self.dropped_marker_path(name).exists()
    }
}

/// The shard a pack header names (format v1 packs read as 0 of 1).
fn shard_of_header(header: &pack::PackHeader) -> Shard {
    Shard {
        index: header.shard_index,
        count: header.shard_count,
    }
}

/// Loading a file of our own (start-up, rollback): one that no longer
/// verifies is `Damaged` (DATA_LOSS), naming the file.
fn load_pack_file(
    path: &Path,
    loaded_at_unix_seconds: i64,
    threads: BuildThreads,
) -> Result<LoadedPack, CatalogError> {
    verify_pack_file(path, loaded_at_unix_seconds, threads).map_err(|error| match error {
        CatalogError::Pack(source) => CatalogError::Damaged {
            path: path.to_path_buf(),
            source,
        },
        other => other,
    })
}

/// Verifies a pack file with a checked load and makes it servable: the one
/// verify step of pushes and loads. The file is memory-mapped: a v2 pack is
/// then served from the mapping (one checksum pass plus structural checks,
/// nothing decoded); a v1 pack is decoded and indexed and the mapping dropped.
/// Sound because files in the packs directory are only ever replaced by
/// rename, never written in place (see `pack::mapped`).
fn verify_pack_file(
    path: &Path,
    loaded_at_unix_seconds: i64,
    threads: BuildThreads,
) -> Result<LoadedPack, CatalogError> {
    // Format v2 is served in place from the mapping; v1 is decoded and indexed.
    // A pushed file that does not verify is bad input (`Pack`); a file of
    // our own is damage, which `load_pack_file` says.
    let bytes = PackBytes::map_file(path).map_err(io_error(format!("read {}", path.display())))?;
    Ok(LoadedPack::from_bytes(
        Arc::new(bytes),
        loaded_at_unix_seconds,
        threads,
    )?)
}

/// Pack names become file names: the one rule of [`pack::names`].
pub fn valid_pack_name(name: &str) -> bool {
    pack::names::check_pack_name(name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_version_is_read_from_the_header_alone() {
        let data_dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(data_dir.path(), Arc::new(Store::new())).unwrap();
        let pack = crate::pack::Pack {
            name: "crm".into(),
            version: "v7".into(),
            built_at_unix_seconds: 1_790_000_000,
            user_fingerprints: vec![1, 2],
            segments: Vec::new(),
        };
        let path = catalog.previous_path("crm");
        fs::write(&path, crate::pack::write_pack(&pack).unwrap()).unwrap();
        // A terabyte (sparse): reading the whole file could never succeed.
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        assert_eq!(catalog.previous_version("crm").as_deref(), Some("v7"));
        assert_eq!(catalog.previous_version("events"), None);
    }

    #[test]
    fn pack_names_stay_plain() {
        assert!(valid_pack_name("crm"));
        assert!(valid_pack_name("site-events_v2"));
        assert!(!valid_pack_name(""));
        assert!(!valid_pack_name("../etc"));
        assert!(!valid_pack_name(".hidden"));
        assert!(!valid_pack_name("a/b"));
        assert!(!valid_pack_name("x.previous"));
        assert!(!valid_pack_name("x.rollback"));
        assert!(!valid_pack_name(&"x".repeat(65)));
    }
}
