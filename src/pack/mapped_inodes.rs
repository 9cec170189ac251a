//! Which files this process has mapped, by device and inode, so the packs
//! directory can tell whether a file may be overwritten in place: a retired
//! version is recycled as the next upload's file only when no mapping of it
//! is alive (`store::pack_files`; why mapping is sound: `mapped`).

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, MutexGuard};

/// (device, inode) of a file.
type FileKey = (u64, u64);

/// How many live mappings each mapped file has.
static MAPPED: Mutex<BTreeMap<FileKey, usize>> = Mutex::new(BTreeMap::new());

fn mapped() -> MutexGuard<'static, BTreeMap<FileKey, usize>> {
    // The map is consistent after any panic: every update is one call.
    MAPPED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Counts one live mapping of a file until dropped.
#[derive(Debug)]
pub struct MappedInode {
    key: FileKey,
}

impl MappedInode {
    /// Registers a mapping of the file `metadata` describes.
    pub fn register(metadata: &Metadata) -> Self {
        let key = (metadata.dev(), metadata.ino());
        *mapped().entry(key).or_default() += 1;
        Self { key }
    }
}

impl Drop for MappedInode {
    fn drop(&mut self) {
        let mut counts = mapped();
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Whether this process holds a mapping of the file `metadata` describes.
pub fn is_mapped(metadata: &Metadata) -> bool {
    let key = (metadata.dev(), metadata.ino());
    mapped().contains_key(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_mapped_while_any_of_its_registrations_lives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let metadata = std::fs::metadata(&path).unwrap();
        assert!(!is_mapped(&metadata));
        let first = MappedInode::register(&metadata);
        let second = MappedInode::register(&metadata);
        drop(first);
        assert!(is_mapped(&metadata));
        drop(second);
        assert!(!is_mapped(&metadata));
    }
}
