//! The files of the packs directory and every rename between them, ordered so
//! that a crash at any point leaves the served version *and* the previous one
//! intact, plus the start-up recovery that finishes or undoes what a crash
//! interrupted.
//!
//! Files of pack `NAME` in `DATA_DIR/packs`:
//!
//! | file | what |
//! | --- | --- |
//! | `NAME.segpack` | the served version |
//! | `NAME.previous.segpack` | the version before it, for `Rollback` |
//! | `NAME.segpack.next` | a verified, fsynced push about to be served |
//! | `NAME.rollback.tmp` | the served file during the renames of a rollback |
//! | `NAME.dropped` | marker: the pack was dropped (only a previous file is left) |
//! | `.push-PID-N.segpack.tmp` | an upload being received (never served) |
//! | `.retired-NAME.segpack.tmp` | the version before previous, until the next upload is written over it |
//!
//! A push writes and fsyncs the whole upload first, verifies it, renames it to
//! `NAME.segpack.next`, then renames served → previous (the commit point:
//! with a next file and no served one, a restart finishes the push) and
//! next → served, fsyncing the directory after each step; before the commit
//! point a restart removes the next file. This module does no verification and knows nothing of gRPC;
//! [`super::catalog`] decides what to push.
//!
//! **Why the version before previous outlives its push.** The rename that
//! makes the served file the previous one used to delete the old previous
//! file, freeing its page cache at the end of a push; the next upload, a
//! while later, then wrote into memory that had sat free. A virtual machine
//! that reports free memory to its host (Linux `page_reporting`, on the
//! machine of BENCHMARKS.md's sixth session) gets that memory back from the
//! host page by page on reuse: a 1 GB push there cost segd 2.8–3.8 s of CPU,
//! against 1.1–1.7 s when the upload reused memory just freed. So the old
//! previous file keeps a link, `.retired-NAME.segpack.tmp`, and the next
//! upload is written over it in place: its page cache already holds memory,
//! so the upload allocates none (1 GB written: 0.17 s in place, 0.27 s into
//! memory just freed, 3.4 s into memory freed 25 s before; BENCHMARKS.md,
//! "Eighth session"). Overwriting a file is sound here only because nothing
//! else reads it: it is recycled only when no mapping of this process holds
//! its inode (`pack::mapped_inodes`) and no other name links to it, and is
//! deleted otherwise. The link is kept only while the file system has
//! room for two more files of its size, so it does not take the space the
//! next push needs; start-up removes it.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::warn;

use crate::pack::FILE_SUFFIX;
use crate::pack::file_blocks::BlockWriter;
use crate::pack::mapped_inodes;

/// `NAME.previous.segpack` is the version kept for rollback.
pub(super) const PREVIOUS_MARK: &str = ".previous";
const NEXT_SUFFIX: &str = ".segpack.next";
const ROLLBACK_SUFFIX: &str = ".rollback.tmp";
/// Uploads and the old writer's temporary files start with a dot and carry
/// `.tmp`; no pack file does (a pack name never starts with a dot).
const TEMPORARY_MARK: &str = ".tmp";
/// `.retired-NAME.segpack.tmp`: see the module documentation.
const RETIRED_PREFIX: &str = ".retired-";

static STAGED_SEQUENCE: AtomicU64 = AtomicU64::new(0);

pub(super) struct PackFiles {
    dir: PathBuf,
}

/// An upload being received into the packs directory. Dropped without being
/// committed, its file is removed.
pub struct StagedFile {
    path: PathBuf,
    file: Option<File>,
}

impl StagedFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The writer of the upload (taken once).
    pub fn take_writer(&mut self) -> Option<UploadWriter> {
        self.file.take().map(|file| UploadWriter {
            blocks: BlockWriter::new(file),
            written: 0,
        })
    }
}

/// Writes an upload from its first byte in whole 2 MiB blocks
/// (`pack::file_blocks`). The file may be a recycled retired version
/// ([`PackFiles::recycle_retired`]), so [`UploadWriter::finish`] must end
/// every upload: it cuts the file at what was written.
pub struct UploadWriter {
    blocks: BlockWriter<File>,
    written: u64,
}

impl UploadWriter {
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.blocks.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Writes the tail, cuts the file there and makes it durable; the bytes
    /// written. The sync is here, on the upload's thread and before anything
    /// maps the file, rather than only at the commit: writeback of a page
    /// that is mapped walks its mappings to write-protect them, and after the
    /// verifying thread's mapping of a whole pushed pack the commit's fsync
    /// took 0.34–0.51 s, with such walks on a core the readers share
    /// (BENCHMARKS.md, "Tenth session").
    pub fn finish(self) -> io::Result<u64> {
        let file = self.blocks.finish()?;
        file.set_len(self.written)?;
        file.sync_data()?;
        Ok(self.written)
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        if let Err(error) = fs::remove_file(&self.path)
            && error.kind() != io::ErrorKind::NotFound
        {
            warn!(file = %self.path.display(), error = %error, "cannot remove a refused upload; start-up removes it");
        }
    }
}

impl PackFiles {
    pub(super) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub(super) fn current(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{FILE_SUFFIX}"))
    }

    pub(super) fn previous(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{PREVIOUS_MARK}{FILE_SUFFIX}"))
    }

    fn next(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{NEXT_SUFFIX}"))
    }

    fn rollback_swap(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{ROLLBACK_SUFFIX}"))
    }

    pub(super) fn dropped_marker(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.dropped"))
    }

    fn retired(&self, name: &str) -> PathBuf {
        self.dir.join(format!(
            "{RETIRED_PREFIX}{name}{FILE_SUFFIX}{TEMPORARY_MARK}"
        ))
    }

    /// A file for a new upload in the packs directory (same file system as
    /// the served files, so committing it is a rename): a retired version
    /// when one may be overwritten ([`PackFiles::recycle_retired`]), else a
    /// new, empty file. Either way the writer starts at its first byte and
    /// ends with [`UploadWriter::finish`], which cuts off what is left of an
    /// older version.
    pub(super) fn stage(&self) -> io::Result<StagedFile> {
        let sequence = STAGED_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!(
            ".push-{}-{sequence}{FILE_SUFFIX}{TEMPORARY_MARK}",
            std::process::id()
        ));
        let file = if self.recycle_retired(&path) {
            File::options().write(true).open(&path)?
        } else {
            File::options().write(true).create_new(true).open(&path)?
        };
        Ok(StagedFile {
            path,
            file: Some(file),
        })
    }

    /// Serves the verified upload `staged` as `name`: fsync it, rename it to
    /// `NAME.segpack.next`, then the served file (when `keep_served`) to
    /// previous (commit point) and next to served. On an error before the
    /// commit point nothing changed; after it, the served file is put back.
    pub(super) fn commit_push(
        &self,
        mut staged: StagedFile,
        name: &str,
        keep_served: bool,
    ) -> io::Result<()> {
        File::open(&staged.path)?.sync_all()?;
        let next = self.next(name);
        fs::rename(&staged.path, &next)?;
        staged.path = PathBuf::new();
        if let Err(error) = sync_dir(&self.dir) {
            let _ = fs::remove_file(&next);
            return Err(error);
        }
        let current = self.current(name);
        let previous = self.previous(name);
        let served_kept = keep_served && current.exists();
        if served_kept {
            self.retire(name, &previous);
        }
        if served_kept
            && let Err(error) = fs::rename(&current, &previous).and_then(|()| sync_dir(&self.dir))
        {
            let _ = fs::remove_file(&next);
            return Err(error);
        }
        if let Err(error) = fs::rename(&next, &current) {
            if served_kept {
                let _ = fs::rename(&previous, &current);
            }
            let _ = fs::remove_file(&next);
            return Err(error);
        }
        remove_if_present(&self.dropped_marker(name))?;
        sync_dir(&self.dir)
    }

    /// Keeps the previous file of `name`, about to be replaced, under its
    /// retired name while the file system has room for two more files of its
    /// size (the next upload, and as much again). A link, not a rename: a
    /// crash here still leaves the previous file. Failing only costs the next
    /// upload some CPU, so it is not an error.
    fn retire(&self, name: &str, previous: &Path) {
        let Ok(bytes) = fs::metadata(previous).map(|metadata| metadata.len()) else {
            return;
        };
        let room = rustix::fs::statvfs(&self.dir)
            .map(|stats| stats.f_bavail.saturating_mul(stats.f_frsize))
            .unwrap_or(0);
        if room / 2 < bytes {
            return;
        }
        let retired = self.retired(name);
        let linked = remove_if_present(&retired).and_then(|()| fs::hard_link(previous, &retired));
        if let Err(error) = linked {
            warn!(file = %retired.display(), error = %error, "cannot keep the retired version; the next upload costs more CPU");
        }
    }

    /// Renames the largest retired version that may be overwritten in place
    /// to `upload` and removes the others; whether one was renamed. The
    /// upload then rewrites page cache that holds data already, where a new
    /// file would take memory the host may have taken back (see the module
    /// documentation). May be overwritten: no mapping of this process holds
    /// the file (`pack::mapped_inodes`) and no other name links to it, so no
    /// reader and no other version sees a byte of it change. A failure is
    /// logged, not returned: start-up removes what is left.
    fn recycle_retired(&self, upload: &Path) -> bool {
        let mut retired: Vec<(PathBuf, fs::Metadata)> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(RETIRED_PREFIX)
            })
            .filter_map(|entry| Some((entry.path(), entry.metadata().ok()?)))
            .collect();
        retired.sort_by_key(|(_, metadata)| std::cmp::Reverse(metadata.len()));
        let mut recycled = false;
        for (path, metadata) in retired {
            let overwritable = metadata.nlink() == 1 && !mapped_inodes::is_mapped(&metadata);
            if !recycled && overwritable && fs::rename(&path, upload).is_ok() {
                recycled = true;
            } else if let Err(error) = remove_if_present(&path) {
                warn!(file = %path.display(), error = %error, "cannot remove a retired version; start-up removes it");
            }
        }
        recycled
    }

    /// Swaps the served and previous files of `name` (the served one may be
    /// missing: a dropped pack). Recovery finishes a swap a crash interrupted.
    pub(super) fn swap_for_rollback(&self, name: &str) -> io::Result<()> {
        let current = self.current(name);
        let previous = self.previous(name);
        let swap = self.rollback_swap(name);
        let had_current = current.exists();
        if had_current {
            fs::rename(&current, &swap)?;
        }
        fs::rename(&previous, &current)?;
        if had_current {
            fs::rename(&swap, &previous)?;
        }
        remove_if_present(&self.dropped_marker(name))?;
        sync_dir(&self.dir)
    }

    /// Stops serving `name`, keeping its file as the previous version.
    pub(super) fn mark_dropped(&self, name: &str) -> io::Result<()> {
        let current = self.current(name);
        if current.exists() {
            fs::rename(&current, self.previous(name))?;
        }
        fs::write(self.dropped_marker(name), b"")?;
        sync_dir(&self.dir)
    }

    /// Start-up: removes uploads and temporary files of crashed pushes,
    /// finishes a push that reached its commit point, drops one that did not,
    /// and finishes an interrupted rollback. Every action is logged.
    pub(super) fn recover(&self) -> io::Result<()> {
        let mut changed = false;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if file_name.starts_with(RETIRED_PREFIX) {
                // Not a crash's leftover: kept for reuse by the next upload.
                fs::remove_file(&path)?;
            } else if file_name.starts_with('.') && file_name.contains(TEMPORARY_MARK) {
                let bytes = entry.metadata().map(|metadata| metadata.len()).unwrap_or(0);
                fs::remove_file(&path)?;
                warn!(file = ?file_name, bytes, "removed a temporary file left by an interrupted push");
                changed = true;
            } else if let Some(name) = file_name.strip_suffix(NEXT_SUFFIX) {
                changed |= self.recover_push(name)?;
            } else if let Some(name) = file_name.strip_suffix(ROLLBACK_SUFFIX) {
                changed |= self.recover_rollback(name)?;
            }
        }
        if changed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn recover_push(&self, name: &str) -> io::Result<bool> {
        let next = self.next(name);
        if self.current(name).exists() {
            fs::remove_file(&next)?;
            warn!(pack = ?name, "removed a push interrupted before it was served");
        } else {
            fs::rename(&next, self.current(name))?;
            remove_if_present(&self.dropped_marker(name))?;
            warn!(pack = ?name, "finished a push interrupted while its files were renamed");
        }
        Ok(true)
    }

    fn recover_rollback(&self, name: &str) -> io::Result<bool> {
        let swap = self.rollback_swap(name);
        let current = self.current(name);
        let previous = self.previous(name);
        match (current.exists(), previous.exists()) {
            (false, true) => {
                fs::rename(&previous, &current)?;
                fs::rename(&swap, &previous)?;
            }
            (true, false) => fs::rename(&swap, &previous)?,
            _ => {
                warn!(pack = ?name, file = %swap.display(), "a rollback swap file next to both versions; left alone");
                return Ok(false);
            }
        }
        warn!(pack = ?name, "finished a rollback interrupted while its files were renamed");
        Ok(true)
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn push(files: &PackFiles, name: &str, contents: &[u8]) {
        let mut staged = files.stage().unwrap();
        let mut writer = staged.take_writer().unwrap();
        writer.write_all(contents).unwrap();
        writer.finish().unwrap();
        files.commit_push(staged, name, true).unwrap();
    }

    #[test]
    fn the_version_before_previous_lasts_until_the_next_upload_starts() {
        let dir = tempfile::tempdir().unwrap();
        let files = PackFiles::new(dir.path().to_owned());
        push(&files, "crm", b"v1");
        push(&files, "crm", b"v2");
        assert!(!files.retired("crm").exists(), "no previous to retire yet");
        let v1 = fs::metadata(files.previous("crm")).unwrap().ino();

        push(&files, "crm", b"v3");
        assert_eq!(fs::read(files.current("crm")).unwrap(), b"v3");
        assert_eq!(fs::read(files.previous("crm")).unwrap(), b"v2");
        assert_eq!(fs::metadata(files.retired("crm")).unwrap().ino(), v1);

        let refused_upload = files.stage().unwrap();
        assert!(!files.retired("crm").exists(), "an upload starts with it");
        let upload = fs::metadata(refused_upload.path()).unwrap();
        assert_eq!(upload.ino(), v1, "recycled as the upload's file");
        drop(refused_upload);
        assert_eq!(fs::read(files.previous("crm")).unwrap(), b"v2");

        push(&files, "crm", b"v4");
        assert_eq!(fs::read(files.retired("crm")).unwrap(), b"v2");
        files.recover().unwrap();
        assert!(!files.retired("crm").exists(), "start-up removes it");
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["crm.previous.segpack", "crm.segpack"]);
    }

    #[test]
    fn an_upload_over_a_longer_retired_version_holds_only_its_own_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let files = PackFiles::new(dir.path().to_owned());
        let long = vec![7u8; 3 * crate::pack::file_blocks::FILE_BLOCK_BYTES + 5];
        for contents in [&long[..], b"v2", b"v3"] {
            push(&files, "crm", contents);
        }
        let retired = fs::metadata(files.retired("crm")).unwrap().ino();
        push(&files, "crm", b"v4");
        assert_eq!(fs::metadata(files.current("crm")).unwrap().ino(), retired);
        assert_eq!(fs::read(files.current("crm")).unwrap(), b"v4");
    }

    #[test]
    fn a_retired_version_still_mapped_or_linked_elsewhere_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let files = PackFiles::new(dir.path().to_owned());
        for contents in [b"v1", b"v2", b"v3"] {
            push(&files, "crm", contents);
        }
        let mapped = crate::pack::PackBytes::map_file(&files.retired("crm")).unwrap();
        push(&files, "crm", b"v4");
        assert_eq!(mapped.as_bytes(), b"v1", "a new file, not the mapped one");
        drop(mapped);

        let backup = dir.path().join("backup");
        fs::hard_link(files.retired("crm"), &backup).unwrap();
        push(&files, "crm", b"v5");
        assert_eq!(fs::read(&backup).unwrap(), b"v2");
    }
}
