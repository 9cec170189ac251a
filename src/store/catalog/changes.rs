//! The changes an operator asks for: push (whole bytes or a staged upload),
//! rollback and drop, each checked in full before anything on disk or in
//! memory changes.
//!
//! Owns the order of a change: refuse what can be refused from the header
//! alone, verify the whole file, check version order and ownership, then
//! rotate files (through `PackFiles`) and install the new state. Must never
//! touch a served or previous file before the change is known to succeed,
//! and never run on the async runtime (callers use a blocking thread).

use std::cmp::Ordering;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::versions::compare_versions;
use super::{
    Catalog, CatalogError, PushOutcome, RollbackOutcome, StagedFile, io_error, load_pack_file,
    shard_of_header, valid_pack_name, verify_pack_file,
};
use crate::pack;
use crate::store::BuildThreads;

impl Catalog {
    /// Everything a push would check before serving, without serving or
    /// building an index: the whole file verifies, the name is valid, the
    /// shard is this replica's, and the version is not older than the served
    /// one (unless allowed). For a fleet, which stores the file for the
    /// other replicas only once this replica would take it. Returns the header.
    /// Checks the file at `path` from its mapping, as `push_staged` does
    /// (a v2 pack is never copied or decoded into memory).
    pub fn check_push_file(
        &self,
        path: &Path,
        allow_older_version: bool,
    ) -> Result<pack::PackHeader, CatalogError> {
        let header = pack::read_header_file(path)?;
        if !valid_pack_name(&header.name) {
            return Err(CatalogError::InvalidPackName(header.name));
        }
        let pack_shard = shard_of_header(&header);
        if pack_shard != self.shard {
            return Err(CatalogError::WrongShard {
                pack: header.name,
                pack_shard,
                replica_shard: self.shard,
            });
        }
        verify_pack_file(path, 0, BuildThreads::One)?;
        let state = self.store.load_full();
        if let Some(served) = state.pack(&header.name)
            && compare_versions(&header.version, &served.version) == Ordering::Less
            && !allow_older_version
        {
            return Err(CatalogError::OlderVersion {
                pack: header.name.clone(),
                pushed: header.version.clone(),
                served: served.version.clone(),
            });
        }
        Ok(header)
    }

    /// Verifies pack bytes whole and, when they are new, serves them: staged
    /// into a file first, like an upload ([`Catalog::push_staged`]).
    pub fn push(
        &self,
        pack_bytes: Vec<u8>,
        allow_older_version: bool,
        loaded_at_unix_seconds: i64,
    ) -> Result<PushOutcome, CatalogError> {
        let mut staged = self.stage_upload()?;
        let mut file = staged.take_writer().expect("a new upload has its writer");
        file.write_all(&pack_bytes)
            .and_then(|()| file.finish())
            .map_err(io_error(format!("write {}", staged.path().display())))?;
        drop(pack_bytes);
        self.push_staged(staged, allow_older_version, loaded_at_unix_seconds)
    }

    /// A re-push of the served version judged from its header alone: same
    /// name and version, and of this replica's shard (a pack of another shard
    /// goes on to be refused, never answered "unchanged").
    pub fn unchanged_header(&self, header: &pack::PackHeader) -> Option<PushOutcome> {
        if shard_of_header(header) != self.shard {
            return None;
        }
        self.unchanged_push(&header.name, &header.version)
    }

    /// The answer to a push of `version` of pack `name` when that version is
    /// the one served: success, nothing changed (batch jobs retry). `None`
    /// when it is not served.
    pub fn unchanged_push(&self, name: &str, version: &str) -> Option<PushOutcome> {
        let state = self.store.load_full();
        let served = state.pack(name)?;
        (served.version == version).then(|| PushOutcome {
            pack: served.name.clone(),
            version: served.version.clone(),
            segments: served.segments.len() as u32,
            users: served.users(),
            memberships: served.memberships(),
            generation: state.generation,
            unchanged: true,
        })
    }

    /// Verifies the staged upload whole, from its file, and, when it is new,
    /// rotates it in and serves it. A refused or failed push changes nothing:
    /// the served and previous files stay, and the upload is removed.
    pub fn push_staged(
        &self,
        staged: StagedFile,
        allow_older_version: bool,
        loaded_at_unix_seconds: i64,
    ) -> Result<PushOutcome, CatalogError> {
        // The header alone says the shard: refuse before the whole file is read.
        self.check_shard(staged.path())?;
        // The header alone (its own checksum) names the pack and version: a
        // re-push of the served version is answered before the body is read.
        let header = pack::read_header_file(staged.path())?;
        if let Some(outcome) = self.unchanged_push(&header.name, &header.version) {
            return Ok(outcome);
        }
        // Pushes happen while serving: a v1 index is built on one core, the
        // rest keep answering; a v2 pack is checked in one pass and served
        // from the mapped file.
        let verify_started = Instant::now();
        let loaded = Arc::new(verify_pack_file(
            staged.path(),
            loaded_at_unix_seconds,
            BuildThreads::One,
        )?);
        if !valid_pack_name(&loaded.name) {
            return Err(CatalogError::InvalidPackName(loaded.name.clone()));
        }
        let _change = self.change_lock.lock();
        let state = self.store.load_full();
        if let Some(served) = state.pack(&loaded.name) {
            if served.version == loaded.version {
                return Ok(PushOutcome {
                    pack: loaded.name.clone(),
                    version: loaded.version.clone(),
                    segments: served.segments.len() as u32,
                    users: served.users(),
                    memberships: served.memberships(),
                    generation: state.generation,
                    unchanged: true,
                });
            }
            if compare_versions(&loaded.version, &served.version) == Ordering::Less
                && !allow_older_version
            {
                return Err(CatalogError::OlderVersion {
                    pack: loaded.name.clone(),
                    pushed: loaded.version.clone(),
                    served: served.version.clone(),
                });
            }
        }
        // Check ownership before touching the disk: a refused pack changes nothing.
        state.check_ownership(&loaded)?;
        let packs = state.packs_with(loaded.clone());

        let name = loaded.name.clone();
        let verified = verify_started.elapsed();
        self.files
            .commit_push(staged, &name, state.pack(&name).is_some())
            .map_err(io_error(format!("serve the push of {name}")))?;
        if let Some(served) = state.pack(&name) {
            loaded.carry_match_counts_from(served);
        }
        let generation = self.store.install_at(packs, loaded_at_unix_seconds)?;
        // The phases' durations let an operator (and a swap-under-load run)
        // lay a reader tail against what the push was doing then.
        info!(
            pack = ?name,
            version = ?loaded.version,
            generation,
            verify_ms = verified.as_millis() as u64,
            commit_ms = (verify_started.elapsed() - verified).as_millis() as u64,
            "pack pushed"
        );
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
        self.check_shard(&previous)?;
        let loaded = Arc::new(load_pack_file(
            &previous,
            loaded_at_unix_seconds,
            BuildThreads::One,
        )?);
        let state = self.store.load_full();
        state.check_ownership(&loaded)?;
        let packs = state.packs_with(loaded.clone());

        self.files
            .swap_for_rollback(name)
            .map_err(io_error(format!("rollback {name}")))?;
        if let Some(served) = state.pack(name) {
            loaded.carry_match_counts_from(served);
        }
        let generation = self.store.install_at(packs, loaded_at_unix_seconds)?;
        warn!(pack = %name, version = ?loaded.version, generation, "pack rolled back");
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
        self.files
            .mark_dropped(name)
            .map_err(io_error(format!("drop {name}")))?;
        let generation = self.store.install(state.packs_without(name))?;
        warn!(pack = ?name, generation, "pack dropped");
        Ok(generation)
    }
}
