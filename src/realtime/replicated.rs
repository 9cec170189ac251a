//! Real-time changes in a fleet: the stream is the log. The receiving
//! replica prepares a change (validated and stamped, nothing logged) and the
//! fleet publishes it; every replica of the shard, the receiving one
//! included, applies it from the stream in stream order here. Each applied
//! record is journaled with its stream sequence (one write), so memory, the
//! journal and the position agree: a restart replays the journal and resumes
//! the stream right after the position. A record whose position was torn
//! off by a crash comes again from the stream and is applied a second time
//! in a row, which changes nothing (updates set entries, forgets set marks).
//!
//! Forgets carry no frequency-log boundary here (0): the counters follow the
//! same stream, where the forget is ordered among the impressions (see
//! `crate::fleet::members`).

use std::sync::atomic::Ordering;

use super::journal::{JournalError, JournalRecord};
use super::{Realtime, apply_record, count_in_served_packs, distinct};
use crate::store::Forget;

impl Realtime {
    /// The record that forgets `user_fingerprints` (each once) at
    /// `now_unix_seconds`, logging nothing (fleet mode publishes it).
    pub fn prepare_forgets(
        &self,
        user_fingerprints: &[u64],
        now_unix_seconds: i64,
    ) -> JournalRecord {
        let forget = Forget {
            at_unix_seconds: now_unix_seconds,
            freq_boundary_seq: 0,
        };
        JournalRecord::Forgets(
            distinct(user_fingerprints)
                .into_iter()
                .map(|fingerprint| (fingerprint, forget))
                .collect(),
        )
    }

    /// Applies the record at `stream_seq` of the fleet's stream: journals it
    /// with the position, then changes memory. `Ok(false)` when the journal
    /// already holds it (a redelivery after a restart). Records come in
    /// increasing sequence order.
    pub fn apply_replicated(
        &self,
        stream_seq: u64,
        record: &JournalRecord,
    ) -> Result<bool, JournalError> {
        let state = self.store.load_full();
        let mut writer = self.writer.lock();
        if stream_seq <= writer.stream_position {
            return Ok(false);
        }
        writer
            .journal
            .append_all(&[record.clone(), JournalRecord::Position(stream_seq)])?;
        let newly_forgotten: Vec<u64> = match record {
            JournalRecord::Forgets(forgets) => forgets
                .iter()
                .map(|(fingerprint, _)| *fingerprint)
                .filter(|&fingerprint| {
                    self.store
                        .overlay()
                        .user(fingerprint)
                        .is_none_or(|user| user.forgotten.is_none())
                })
                .collect(),
            _ => Vec::new(),
        };
        apply_record(&self.store, record);
        writer.stream_position = stream_seq;
        match record {
            JournalRecord::Updates(updates) => {
                self.updates_applied
                    .fetch_add(updates.len() as u64, Ordering::Relaxed);
            }
            JournalRecord::Forgets(forgets) => {
                count_in_served_packs(&mut writer.maintenance, &state, &newly_forgotten);
                self.users_forgotten
                    .fetch_add(forgets.len() as u64, Ordering::Relaxed);
            }
            JournalRecord::Horizons(_) | JournalRecord::Position(_) => {}
        }
        Ok(true)
    }

    /// Notes that every stream message through `stream_seq` was handled
    /// (maintenance journals it as the position within a second).
    pub fn note_stream_seq(&self, stream_seq: u64) {
        self.stream_seen.fetch_max(stream_seq, Ordering::Relaxed);
    }

    /// The last fleet stream sequence applied (0 = none): where the stream
    /// consumer resumes.
    pub fn stream_position(&self) -> u64 {
        self.writer.lock().stream_position
    }

    /// Moves the position back to `stream_seq` when beyond it: the stream
    /// lost its tail or was recreated and reuses sequence numbers. Memory
    /// keeps what it holds; the next applied record journals the new position.
    pub fn rewind_stream_position(&self, stream_seq: u64) {
        let mut writer = self.writer.lock();
        writer.stream_position = writer.stream_position.min(stream_seq);
        self.stream_seen.fetch_min(stream_seq, Ordering::Relaxed);
    }
}
