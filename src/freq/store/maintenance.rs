//! The store's upkeep: checkpoints (a copy-on-write snapshot of counters and
//! ids that lets covered log segments be deleted), sweeps of impressions
//! that left retention, and the periodic threads that run both. Must never
//! hold the apply gate longer than it takes to request a new segment and
//! flag the shards.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{FreqError, Inner};
use crate::freq::checkpoint::{CheckpointData, write_checkpoint};
use crate::freq::recovery::delete_covered_files;
use crate::periodic::Periodic;

/// The store's two upkeep threads: periodic checkpoints and sweeps.
pub(super) fn spawn_upkeep(inner: &Arc<Inner>) -> Result<Vec<Periodic>, FreqError> {
    Ok(vec![
        spawn_periodic(
            inner,
            "freq-checkpoint",
            inner.config.checkpoint_interval,
            |inner| {
                if let Err(error) = inner.checkpoint() {
                    tracing::warn!(error = %error, "periodic frequency checkpoint failed");
                }
            },
        )?,
        spawn_periodic(inner, "freq-sweep", inner.config.sweep_interval, |inner| {
            inner.sweep(crate::unix_now_seconds())
        })?,
    ])
}

fn spawn_periodic(
    inner: &Arc<Inner>,
    name: &str,
    interval: Duration,
    job: fn(&Inner),
) -> Result<Periodic, FreqError> {
    let inner = Arc::clone(inner);
    Periodic::spawn(name, interval, move || job(&inner))
        .map_err(|error| FreqError::storage(format!("spawn {name}"), error))
}

impl Inner {
    pub(super) fn sweep(&self, now_unix_seconds: i64) {
        let cutoff = now_unix_seconds.saturating_sub(self.config.retention_seconds);
        let mut outcome = self.counters.sweep(cutoff);
        outcome.ids_removed = self.ids.sweep(cutoff);
        tracing::debug!(
            events_dropped = outcome.events_dropped,
            entries_removed = outcome.entries_removed,
            ids_removed = outcome.ids_removed,
            "frequency sweep"
        );
    }

    pub(super) fn checkpoint(&self) -> Result<(), FreqError> {
        let mut last_covered = self.checkpoint_lock.lock();
        let failures_before = self.log.failure_count();
        let started = Instant::now();
        let (mut data, ticket, pause) = {
            let _exclusive = self.apply_gate.write();
            let applied_stream_seq = self.applied_stream_seq.load(Ordering::Relaxed);
            if self.log.next_seq() == *last_covered
                && applied_stream_seq == self.checkpointed_stream_seq.load(Ordering::Relaxed)
            {
                // Nothing logged or applied since the last checkpoint: it still holds.
                return Ok(());
            }
            // A replicated store appends nothing to its log: no rotation, and
            // the checkpoint replaces the previous one under the same name.
            let (covers_before_seq, ticket) = if self.config.replicated {
                (self.log.next_seq(), None)
            } else {
                let (covers_before_seq, ticket) = self.log.request_rotation()?;
                (covers_before_seq, Some(ticket))
            };
            let data = CheckpointData {
                covers_before_seq,
                created_unix_seconds: crate::unix_now_seconds(),
                applied_stream_seq,
                entries: Vec::new(),
                ids: Vec::new(),
            };
            // Only flags the shards: the copies are made below, or by the
            // first writer to touch a shard, so `record` barely waits.
            self.counters.begin_snapshot();
            self.ids.begin_snapshot();
            (data, ticket, started.elapsed())
        };
        data.entries = self.counters.finish_snapshot();
        data.ids = self.ids.finish_snapshot();
        // The old segment is fsynced and closed once the rotation is processed.
        if let Some(ticket) = ticket {
            self.log.wait_rotation(ticket)?;
        }
        if self.log.failure_count() != failures_before {
            return Err(FreqError::storage(
                "checkpoint abandoned",
                std::io::Error::other("a log write failed while it was taken"),
            ));
        }
        let path = write_checkpoint(&self.config.dir, &data)?;
        *last_covered = data.covers_before_seq;
        self.checkpointed_stream_seq
            .store(data.applied_stream_seq, Ordering::Relaxed);
        self.last_checkpoint_unix_seconds
            .store(data.created_unix_seconds, Ordering::Relaxed);
        delete_covered_files(&self.config, data.covers_before_seq);
        self.last_checkpoint_pause_micros
            .store(pause.as_micros() as u64, Ordering::Relaxed);
        self.last_checkpoint_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        tracing::info!(
            checkpoint = %path.display(),
            entries = data.entries.len(),
            ids = data.ids.len(),
            pause_micros = pause.as_micros() as u64,
            "frequency checkpoint written"
        );
        Ok(())
    }
}
