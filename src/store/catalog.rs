//! The data directory and every change to what is served: push, rollback,
//! drop, and loading everything at start-up.
//!
//! Layout: `DATA_DIR/packs/NAME.segpack` is what is served for pack `NAME`,
//! `DATA_DIR/packs/NAME.previous.segpack` the version before it, kept for
//! `Rollback`. A pushed pack is verified whole, written atomically (temp,
//! fsync, rename, fsync dir) and only then swapped in, so a restart serves
//! what was last acknowledged. Changes are serialised by one mutex; each runs
//! on a blocking thread (the caller's job), never on the async runtime.

use std::cmp::Ordering;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use tracing::{info, warn};

use super::{BuildThreads, IndexError, LoadedPack, OwnershipConflict, Store};
use crate::pack::{self, PackError};

/// `NAME.previous.segpack` is the version kept for rollback.
const PREVIOUS_MARK: &str = ".previous";
/// More than any pack header takes (name and version are short strings).
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
    #[error(
        "invalid pack name {0:?}: use 1 to 64 characters from A-Z a-z 0-9 . _ - not starting with a dot"
    )]
    InvalidPackName(String),
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
    store: Arc<Store>,
    /// Serialises changes; a std mutex held only on blocking threads.
    change_lock: Mutex<()>,
}

impl Catalog {
    /// Opens (creating if needed) `data_dir/packs`.
    pub fn open(data_dir: &Path, store: Arc<Store>) -> Result<Self, CatalogError> {
        let packs_dir = data_dir.join("packs");
        fs::create_dir_all(&packs_dir)
            .map_err(io_error(format!("create {}", packs_dir.display())))?;
        Ok(Self {
            packs_dir,
            store,
            change_lock: Mutex::new(()),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn packs_dir(&self) -> &Path {
        &self.packs_dir
    }

    fn current_path(&self, name: &str) -> PathBuf {
        self.packs_dir.join(format!("{name}{}", pack::FILE_SUFFIX))
    }

    fn previous_path(&self, name: &str) -> PathBuf {
        self.packs_dir
            .join(format!("{name}{PREVIOUS_MARK}{}", pack::FILE_SUFFIX))
    }

    /// The version kept for rollback of a pack, if any (reads its header only).
    pub fn previous_version(&self, name: &str) -> Option<String> {
        pack::read_header_file(self.previous_path(name))
            .ok()
            .map(|header| header.version)
    }

    /// When the version kept for rollback of a pack was built, if any. Reads
    /// the file's first bytes only (the header).
    pub fn previous_built_at(&self, name: &str) -> Option<i64> {
        use std::io::Read;
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
            let loaded = load_pack_file(&path, loaded_at_unix_seconds, BuildThreads::AllCores)?;
            // Both versions on disk were served one after the other: the
            // real-time updates both carry are folded (see `Store::install_at`).
            if let Some(previous_built_at) = self.previous_built_at(name) {
                self.store
                    .raise_fold_horizon(name, previous_built_at.min(loaded.built_at_unix_seconds));
            }
            info!(
                pack = %loaded.name,
                version = %loaded.version,
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
        self.packs_dir.join(format!("{name}.dropped"))
    }

    fn is_dropped_marker(&self, name: &str) -> bool {
        self.dropped_marker_path(name).exists()
    }

    /// Verifies a pack file whole and, when it is new, serves it.
    pub fn push(
        &self,
        pack_bytes: Vec<u8>,
        allow_older_version: bool,
        loaded_at_unix_seconds: i64,
    ) -> Result<PushOutcome, CatalogError> {
        let pack = pack::read_pack(&pack_bytes)?;
        if !valid_pack_name(&pack.name) {
            return Err(CatalogError::InvalidPackName(pack.name));
        }
        let _change = self.change_lock.lock();
        let state = self.store.load_full();
        if let Some(served) = state.pack(&pack.name) {
            if served.version == pack.version {
                return Ok(PushOutcome {
                    pack: pack.name.clone(),
                    version: pack.version.clone(),
                    segments: served.segments.len() as u32,
                    users: served.users(),
                    memberships: served.memberships(),
                    generation: state.generation,
                    unchanged: true,
                });
            }
            if compare_versions(&pack.version, &served.version) == Ordering::Less
                && !allow_older_version
            {
                return Err(CatalogError::OlderVersion {
                    pack: pack.name.clone(),
                    pushed: pack.version.clone(),
                    served: served.version.clone(),
                });
            }
        }
        // Pushes happen while serving: one core builds, the rest keep answering.
        let loaded = Arc::new(LoadedPack::from_pack_on(
            pack,
            pack_bytes.len() as u64,
            loaded_at_unix_seconds,
            BuildThreads::One,
        )?);
        // Check ownership before touching the disk: a refused pack changes nothing.
        state.check_ownership(&loaded)?;
        let packs = state.packs_with(loaded.clone());

        let name = loaded.name.clone();
        let current = self.current_path(&name);
        if current.exists() && state.pack(&name).is_some() {
            fs::rename(&current, self.previous_path(&name))
                .map_err(io_error(format!("keep previous version of {name}")))?;
        }
        pack::write_pack_file_atomic(&pack_bytes, &current)
            .map_err(io_error(format!("write {}", current.display())))?;
        let _ = fs::remove_file(self.dropped_marker_path(&name));
        if let Some(served) = state.pack(&name) {
            loaded.carry_match_counts_from(served);
        }
        let generation = self.store.install_at(packs, loaded_at_unix_seconds)?;
        info!(pack = %name, version = %loaded.version, generation, "pack pushed");
        Ok(PushOutcome {
            pack: name,
            version: loaded.version.clone(),
            segments: loaded.segments.len() as u32,
            users: loaded.users(),
            memberships: loaded.memberships(),
            generation,
            unchanged: false,
        })
    }

    /// Serves the previous version of a pack again; the current one becomes
    /// the previous, so a second rollback undoes the first.
    pub fn rollback(
        &self,
        name: &str,
        loaded_at_unix_seconds: i64,
    ) -> Result<RollbackOutcome, CatalogError> {
        if !valid_pack_name(name) {
            return Err(CatalogError::InvalidPackName(name.to_owned()));
        }
        let _change = self.change_lock.lock();
        let previous = self.previous_path(name);
        if !previous.exists() {
            return Err(CatalogError::NoPreviousVersion(name.to_owned()));
        }
        let loaded = Arc::new(load_pack_file(
            &previous,
            loaded_at_unix_seconds,
            BuildThreads::One,
        )?);
        let state = self.store.load_full();
        state.check_ownership(&loaded)?;
        let packs = state.packs_with(loaded.clone());

        let current = self.current_path(name);
        let swap_path = self.packs_dir.join(format!("{name}.rollback.tmp"));
        if current.exists() {
            fs::rename(&current, &swap_path).map_err(io_error(format!("rollback {name}")))?;
        }
        fs::rename(&previous, &current).map_err(io_error(format!("rollback {name}")))?;
        if swap_path.exists() {
            fs::rename(&swap_path, &previous).map_err(io_error(format!("rollback {name}")))?;
        }
        sync_dir(&self.packs_dir)?;
        let _ = fs::remove_file(self.dropped_marker_path(name));
        if let Some(served) = state.pack(name) {
            loaded.carry_match_counts_from(served);
        }
        let generation = self.store.install_at(packs, loaded_at_unix_seconds)?;
        warn!(pack = %name, version = %loaded.version, generation, "pack rolled back");
        Ok(RollbackOutcome {
            pack: name.to_owned(),
            version: loaded.version.clone(),
            generation,
        })
    }

    /// Stops serving a pack. Its file is kept as the previous version, so a
    /// `Rollback` brings it back.
    pub fn drop_pack(&self, name: &str) -> Result<u64, CatalogError> {
        if !valid_pack_name(name) {
            return Err(CatalogError::InvalidPackName(name.to_owned()));
        }
        let _change = self.change_lock.lock();
        let state = self.store.load_full();
        if state.pack(name).is_none() {
            return Err(CatalogError::NoSuchPack(name.to_owned()));
        }
        let current = self.current_path(name);
        if current.exists() {
            fs::rename(&current, self.previous_path(name))
                .map_err(io_error(format!("drop {name}")))?;
        }
        fs::write(self.dropped_marker_path(name), b"").map_err(io_error(format!("drop {name}")))?;
        sync_dir(&self.packs_dir)?;
        let generation = self.store.install(state.packs_without(name))?;
        warn!(pack = %name, generation, "pack dropped");
        Ok(generation)
    }
}

fn load_pack_file(
    path: &Path,
    loaded_at_unix_seconds: i64,
    threads: BuildThreads,
) -> Result<LoadedPack, CatalogError> {
    let bytes = fs::read(path).map_err(io_error(format!("read {}", path.display())))?;
    let file_bytes = bytes.len() as u64;
    let pack = pack::read_pack(&bytes).map_err(|source| CatalogError::Damaged {
        path: path.to_path_buf(),
        source,
    })?;
    drop(bytes);
    Ok(LoadedPack::from_pack_on(
        pack,
        file_bytes,
        loaded_at_unix_seconds,
        threads,
    )?)
}

fn sync_dir(dir: &Path) -> Result<(), CatalogError> {
    fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error(format!("fsync {}", dir.display())))
}

/// Pack names become file names: keep them plain.
pub fn valid_pack_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
        && !name.ends_with(".previous")
        && !name.ends_with(".rollback")
}

/// Orders versions naturally: runs of digits compare as numbers, the rest as
/// text, so `v9 < v10` and `2026-11-02 < 2026-11-10`.
pub fn compare_versions(left: &str, right: &str) -> Ordering {
    let mut left_chunks = chunks(left);
    let mut right_chunks = chunks(right);
    loop {
        match (left_chunks.next(), right_chunks.next()) {
            (None, None) => return left.cmp(right),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(left_chunk), Some(right_chunk)) => {
                let both_numeric = left_chunk.as_bytes()[0].is_ascii_digit()
                    && right_chunk.as_bytes()[0].is_ascii_digit();
                let order = if both_numeric {
                    let left_digits = left_chunk.trim_start_matches('0');
                    let right_digits = right_chunk.trim_start_matches('0');
                    left_digits
                        .len()
                        .cmp(&right_digits.len())
                        .then_with(|| left_digits.cmp(right_digits))
                } else {
                    left_chunk.cmp(right_chunk)
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

/// Splits into maximal runs of digits and of non-digits.
fn chunks(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        let first = rest.as_bytes().first()?;
        let digit = first.is_ascii_digit();
        let end = rest
            .bytes()
            .position(|byte| byte.is_ascii_digit() != digit)
            .unwrap_or(rest.len());
        let (chunk, tail) = rest.split_at(end);
        rest = tail;
        Some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_naturally() {
        assert_eq!(compare_versions("v9", "v10"), Ordering::Less);
        assert_eq!(compare_versions("2026-11-02", "2026-11-10"), Ordering::Less);
        assert_eq!(compare_versions("7", "7"), Ordering::Equal);
        assert_eq!(compare_versions("1.2", "1.10"), Ordering::Less);
        assert_eq!(compare_versions("b", "a"), Ordering::Greater);
        assert_eq!(compare_versions("v1", "v1.1"), Ordering::Less);
    }

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
    }
}
