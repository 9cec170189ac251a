//! The watched directory (`--watch-dir`): pack files a sidecar syncs from
//! object storage are served without anyone calling `PushSnapshot`.
//!
//! The watcher polls the directory (portable, no extra crate, and a sidecar's
//! cadence is minutes, not milliseconds). A `*.segpack` file is applied once
//! its size and modification time are the same across two consecutive polls,
//! so a file still being written is left alone; dotfiles and `*.tmp` files are
//! ignored, so the usual write-then-rename of sync tools never shows a partial
//! file. Applying is exactly a push ([`Catalog::push`], never an older
//! version): verified whole, written to the data directory, swapped in. Each
//! file is remembered by (name, size, mtime), so it is applied once, not every
//! poll; a changed file is applied again. A refused file (damaged, ownership
//! conflict, older version) is logged, counted and skipped while the served
//! data stays. Re-applying the served version is a no-op.
//!
//! It owns only its own bookkeeping: all changes go through the catalog, on a
//! blocking thread, never on the async runtime. It never deletes or rewrites
//! the files it watches.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::periodic::Ticker;
use crate::store::catalog::{Catalog, PushOutcome};

/// Files still being written by the usual sync tools.
const TEMP_SUFFIX: &str = ".tmp";

/// What the watcher did; exported at `GET /metrics` (`segd_watch_*_total`).
#[derive(Debug, Default)]
pub struct WatchCounters {
    /// Files verified and swapped in as a new version.
    pub watch_loaded_total: AtomicU64,
    /// Files refused (damaged, unreadable, ownership conflict, older version).
    pub watch_rejected_total: AtomicU64,
    /// Files holding the version already served: nothing changed.
    pub watch_unchanged_total: AtomicU64,
}

impl WatchCounters {
    pub fn loaded(&self) -> u64 {
        self.watch_loaded_total.load(Ordering::Relaxed)
    }

    pub fn rejected(&self) -> u64 {
        self.watch_rejected_total.load(Ordering::Relaxed)
    }

    pub fn unchanged(&self) -> u64 {
        self.watch_unchanged_total.load(Ordering::Relaxed)
    }
}

impl crate::telemetry::Collector for WatchCounters {
    fn encode(
        &self,
        mut encoder: crate::telemetry::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        for (name, help, value) in [
            (
                "segd_watch_loaded",
                "Pack files from --watch-dir verified and swapped in.",
                self.loaded(),
            ),
            (
                "segd_watch_rejected",
                "Pack files from --watch-dir refused (damaged, unreadable, ownership conflict, older version); the served data stayed.",
                self.rejected(),
            ),
            (
                "segd_watch_unchanged",
                "Pack files from --watch-dir holding the version already served.",
                self.unchanged(),
            ),
        ] {
            crate::telemetry::counter(&mut encoder, name, help, value)?;
        }
        Ok(())
    }
}

/// A file's identity between polls: a rewrite changes its size or mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    size_bytes: u64,
    modified: Option<SystemTime>,
}

/// The outcome of applying one file.
#[derive(Debug)]
pub enum Applied {
    Loaded(PushOutcome),
    Unchanged(PushOutcome),
    Rejected(String),
}

/// The synchronous half of the watcher: one `poll` scans the directory and
/// applies the files that became stable. Blocking; call it off the runtime.
pub struct DirPoller {
    dir: PathBuf,
    catalog: Arc<Catalog>,
    counters: Arc<WatchCounters>,
    /// Files seen once with this stamp, waiting for a second identical poll.
    pending: HashMap<OsString, FileStamp>,
    /// Files already applied (or refused) with this stamp.
    applied: HashMap<OsString, FileStamp>,
    /// The last directory read error, logged once rather than every poll.
    last_scan_error: Option<String>,
}

impl DirPoller {
    pub fn new(dir: PathBuf, catalog: Arc<Catalog>, counters: Arc<WatchCounters>) -> Self {
        Self {
            dir,
            catalog,
            counters,
            pending: HashMap::new(),
            applied: HashMap::new(),
            last_scan_error: None,
        }
    }

    /// Scans once; applies, in name order, each file whose stamp matches the
    /// previous poll and was not applied with that stamp yet.
    pub fn poll(&mut self) -> Vec<(PathBuf, Applied)> {
        let files = match self.scan() {
            Ok(files) => {
                if self.last_scan_error.take().is_some() {
                    info!(dir = %self.dir.display(), "watched directory readable again");
                }
                files
            }
            Err(error) => {
                let message = error.to_string();
                if self.last_scan_error.as_deref() != Some(message.as_str()) {
                    warn!(dir = %self.dir.display(), error = %message, "cannot read the watched directory");
                    self.last_scan_error = Some(message);
                }
                return Vec::new();
            }
        };
        // Forget files that are gone: one dropped in again is applied again.
        self.pending
            .retain(|name, _| files.iter().any(|(present, _)| present == name));
        self.applied
            .retain(|name, _| files.iter().any(|(present, _)| present == name));

        let mut results = Vec::new();
        for (name, stamp) in files {
            if self.applied.get(&name) == Some(&stamp) {
                continue;
            }
            if self.pending.get(&name) != Some(&stamp) {
                // New or still changing: wait for a poll that sees it unchanged.
                self.pending.insert(name, stamp);
                continue;
            }
            self.pending.remove(&name);
            self.applied.insert(name.clone(), stamp);
            let path = self.dir.join(&name);
            let applied = self.apply(&path);
            results.push((path, applied));
        }
        results
    }

    /// The candidate files and their stamps, sorted by name.
    fn scan(&self) -> std::io::Result<Vec<(OsString, FileStamp)>> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if !is_candidate(&name) {
                continue;
            }
            // Follows symlinks: sidecars often link to their download.
            let Ok(metadata) = fs::metadata(entry.path()) else {
                continue;
            };
            if !metadata.is_file() {
                continue;
            }
            let stamp = FileStamp {
                size_bytes: metadata.len(),
                modified: metadata.modified().ok(),
            };
            files.push((name, stamp));
        }
        files.sort_by(|left, right| left.0.cmp(&right.0));
        Ok(files)
    }

    fn apply(&self, path: &Path) -> Applied {
        let result = fs::read(path)
            .map_err(|error| format!("read: {error}"))
            .and_then(|bytes| {
                self.catalog
                    .push(bytes, false, crate::unix_now_seconds())
                    .map_err(|error| error.to_string())
            });
        match result {
            Ok(outcome) if outcome.unchanged => {
                self.counters
                    .watch_unchanged_total
                    .fetch_add(1, Ordering::Relaxed);
                info!(
                    file = ?path,
                    pack = ?outcome.pack,
                    version = ?outcome.version,
                    "watched pack already served"
                );
                Applied::Unchanged(outcome)
            }
            Ok(outcome) => {
                self.counters
                    .watch_loaded_total
                    .fetch_add(1, Ordering::Relaxed);
                info!(
                    file = ?path,
                    pack = ?outcome.pack,
                    version = ?outcome.version,
                    generation = outcome.generation,
                    "watched pack loaded"
                );
                Applied::Loaded(outcome)
            }
            Err(error) => {
                self.counters
                    .watch_rejected_total
                    .fetch_add(1, Ordering::Relaxed);
                warn!(
                    file = ?path,
                    error = ?error,
                    "watched pack refused; the served data is unchanged"
                );
                Applied::Rejected(error)
            }
        }
    }
}

/// `*.segpack`, not a dotfile, not a temp file.
fn is_candidate(name: &OsString) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    !name.starts_with('.')
        && !name.ends_with(TEMP_SUFFIX)
        && name.ends_with(crate::pack::FILE_SUFFIX)
}

/// Refuses a watched directory that is the data directory's own pack
/// directory: the watcher would re-push the catalog's files to itself.
pub fn check_watch_dir(watch_dir: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let packs_dir = data_dir.join("packs");
    let canonical = |path: &Path| fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if canonical(watch_dir) == canonical(&packs_dir) {
        anyhow::bail!(
            "--watch-dir {} is the data directory's pack directory: use a directory of its own",
            watch_dir.display()
        );
    }
    Ok(())
}

/// Polls `dir` every `poll_interval` until `stop` is cancelled. The directory is
/// created if missing. Each poll runs on a blocking thread.
pub fn spawn(
    dir: PathBuf,
    poll_interval: Duration,
    catalog: Arc<Catalog>,
    counters: Arc<WatchCounters>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let create_dir = dir.clone();
        match tokio::task::spawn_blocking(move || fs::create_dir_all(&create_dir)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                warn!(dir = %dir.display(), error = %error, "cannot create the watched directory")
            }
            Err(error) => warn!(error = %error, "watched directory task failed"),
        }
        info!(dir = %dir.display(), poll_ms = poll_interval.as_millis() as u64, "watching for packs");
        let mut poller = Some(DirPoller::new(dir, catalog, counters));
        let mut ticker = Ticker::new(poll_interval, stop);
        while ticker.tick().await {
            let Some(mut current) = poller.take() else {
                break;
            };
            match tokio::task::spawn_blocking(move || {
                current.poll();
                current
            })
            .await
            {
                Ok(current) => poller = Some(current),
                Err(error) => {
                    warn!(error = %error, "watched directory poll failed; watcher stopped");
                    break;
                }
            }
        }
        info!("directory watcher stopped");
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{Pack, Segment, write_pack};
    use crate::store::Store;
    use roaring::RoaringBitmap;

    fn pack_bytes(name: &str, version: &str, segment_id: u32) -> Vec<u8> {
        let pack = Pack {
            name: name.to_owned(),
            version: version.to_owned(),
            built_at_unix_seconds: 1_790_000_000,
            user_fingerprints: vec![crate::user_fingerprint("alice")],
            segments: vec![Segment {
                id: segment_id,
                name: format!("segment-{segment_id}"),
                kind: String::new(),
                ttl_seconds: 0,
                members: RoaringBitmap::from_iter([0u32]),
                last_seen_hours_ago: None,
            }],
        };
        write_pack(&pack).expect("valid pack")
    }

    struct Fixture {
        _data: tempfile::TempDir,
        watched: tempfile::TempDir,
        catalog: Arc<Catalog>,
        counters: Arc<WatchCounters>,
        poller: DirPoller,
    }

    fn fixture() -> Fixture {
        let data = tempfile::tempdir().unwrap();
        let watched = tempfile::tempdir().unwrap();
        let catalog = Arc::new(Catalog::open(data.path(), Arc::new(Store::new())).unwrap());
        catalog.load_all(0).unwrap();
        let counters = Arc::new(WatchCounters::default());
        let poller = DirPoller::new(
            watched.path().to_path_buf(),
            catalog.clone(),
            counters.clone(),
        );
        Fixture {
            _data: data,
            watched,
            catalog,
            counters,
            poller,
        }
    }

    fn served_version(catalog: &Catalog, name: &str) -> Option<String> {
        let state = catalog.store().load_full();
        state.pack(name).map(|pack| pack.version.clone())
    }

    #[test]
    fn a_file_is_applied_once_after_two_identical_polls() {
        let mut fixture = fixture();
        fs::write(
            fixture.watched.path().join("crm.segpack"),
            pack_bytes("crm", "v1", 1),
        )
        .unwrap();
        assert!(fixture.poller.poll().is_empty(), "first sighting waits");
        assert_eq!(served_version(&fixture.catalog, "crm"), None);
        let applied = fixture.poller.poll();
        assert!(
            matches!(applied[..], [(_, Applied::Loaded(_))]),
            "{applied:?}"
        );
        assert_eq!(
            served_version(&fixture.catalog, "crm").as_deref(),
            Some("v1")
        );
        assert!(fixture.poller.poll().is_empty(), "not applied again");
        assert_eq!(fixture.counters.loaded(), 1);
        assert_eq!(fixture.counters.rejected(), 0);
    }

    #[test]
    fn temp_files_dotfiles_and_other_names_are_ignored() {
        let mut fixture = fixture();
        let bytes = pack_bytes("crm", "v1", 1);
        for name in [
            ".crm.segpack",
            "crm.segpack.tmp",
            "crm.tmp",
            "crm.bin",
            "crm.segpack.part",
        ] {
            fs::write(fixture.watched.path().join(name), &bytes).unwrap();
        }
        for _ in 0..3 {
            assert!(fixture.poller.poll().is_empty());
        }
        assert_eq!(served_version(&fixture.catalog, "crm"), None);
    }

    #[test]
    fn damaged_and_older_files_are_refused_and_counted() {
        let mut fixture = fixture();
        let path = fixture.watched.path().join("crm.segpack");
        fs::write(&path, pack_bytes("crm", "v2", 1)).unwrap();
        fixture.poller.poll();
        fixture.poller.poll();
        assert_eq!(
            served_version(&fixture.catalog, "crm").as_deref(),
            Some("v2")
        );

        let mut damaged = pack_bytes("crm", "v3", 1);
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0x10;
        fs::write(fixture.watched.path().join("crm-damaged.segpack"), damaged).unwrap();
        fs::write(
            fixture.watched.path().join("crm-old.segpack"),
            pack_bytes("crm", "v1", 1),
        )
        .unwrap();
        // Segment 1 belongs to pack crm.
        fs::write(
            fixture.watched.path().join("thief.segpack"),
            pack_bytes("thief", "v1", 1),
        )
        .unwrap();
        fixture.poller.poll();
        let applied = fixture.poller.poll();
        assert_eq!(applied.len(), 3, "{applied:?}");
        assert!(
            applied
                .iter()
                .all(|(_, applied)| matches!(applied, Applied::Rejected(_))),
            "{applied:?}"
        );
        assert_eq!(fixture.counters.rejected(), 3);
        assert_eq!(
            served_version(&fixture.catalog, "crm").as_deref(),
            Some("v2")
        );
        assert_eq!(served_version(&fixture.catalog, "thief"), None);
        assert!(fixture.poller.poll().is_empty(), "refusals are remembered");
        assert_eq!(fixture.counters.rejected(), 3);
    }

    #[test]
    fn a_rewritten_file_is_applied_again_and_the_served_version_is_a_no_op() {
        let mut fixture = fixture();
        let path = fixture.watched.path().join("crm.segpack");
        fs::write(&path, pack_bytes("crm", "v1", 1)).unwrap();
        fixture.poller.poll();
        fixture.poller.poll();
        // Same version under another name: a no-op.
        fs::write(
            fixture.watched.path().join("crm-copy.segpack"),
            pack_bytes("crm", "v1", 1),
        )
        .unwrap();
        fixture.poller.poll();
        let applied = fixture.poller.poll();
        assert!(
            matches!(applied[..], [(_, Applied::Unchanged(_))]),
            "{applied:?}"
        );
        // A new version replaces the file (a different size).
        fs::write(&path, pack_bytes("crm", "v10-longer", 1)).unwrap();
        fixture.poller.poll();
        fixture.poller.poll();
        assert_eq!(
            served_version(&fixture.catalog, "crm").as_deref(),
            Some("v10-longer")
        );
        assert_eq!(fixture.counters.loaded(), 2);
        assert_eq!(fixture.counters.unchanged(), 1);
    }

    #[test]
    fn the_pack_directory_itself_is_refused() {
        let data = tempfile::tempdir().unwrap();
        fs::create_dir_all(data.path().join("packs")).unwrap();
        assert!(check_watch_dir(&data.path().join("packs"), data.path()).is_err());
        assert!(check_watch_dir(&data.path().join("incoming"), data.path()).is_ok());
    }
}
