//! The local record path: claim impression ids and encode one log record
//! under the log's queue lock, wait until it is as durable as the fsync
//! policy promises, then apply it to the counters. Must never change memory
//! for a record that did not become durable (see the consistency notes in
//! [`super`]).

use std::sync::atomic::Ordering;

use super::{FreqError, Inner, NewImpression, RecordOutcome};
use crate::freq::counters::{IdState, cap_key_hash, impression_id_hash};
use crate::freq::log::{LogImpression, encode_impression};

/// What one `record` call decided under the log's queue lock.
#[derive(Default)]
struct RecordPlan {
    outcome: RecordOutcome,
    /// (counter, time) pairs to apply to memory.
    to_apply: Vec<LogImpression>,
    /// Id hashes this call claimed (to forget if its write fails).
    claimed_ids: Vec<u64>,
    /// Records of earlier calls holding ids this call found duplicate.
    depends_on: Vec<u64>,
}

impl Inner {
    pub(super) fn record(&self, impressions: &[NewImpression]) -> Result<RecordOutcome, FreqError> {
        if self.config.replicated {
            return Err(FreqError::InvalidConfig(
                "replicated store: impressions are recorded through the stream".to_owned(),
            ));
        }
        let cutoff = crate::unix_now_seconds().saturating_sub(self.config.retention_seconds);
        let gate = self.apply_gate.read();
        let (seq, plan) = self
            .log
            .append(|seq, payload| self.plan_record(impressions, cutoff, seq, payload))?;
        // Memory changes only once the record is in the log: a refused
        // request changes nothing, so counts before and after a restart agree
        // and a retry counts once. The gate stays held until then, so a
        // checkpoint never sees a record logged but not yet applied.
        if let Some(seq) = seq
            && let Err(error) = self.log.wait_durable(seq)
        {
            for &id_hash in &plan.claimed_ids {
                self.ids.remove_if_from(id_hash, seq);
            }
            return Err(error);
        }
        for impression in &plan.to_apply {
            self.counters.add_impression(
                impression.user_fingerprint,
                &impression.cap_key_hashes,
                impression.at_unix_seconds,
            );
        }
        drop(gate);
        let mut depends_on = plan.depends_on;
        depends_on.sort_unstable();
        depends_on.dedup();
        for earlier in depends_on {
            self.log.wait_durable(earlier)?;
        }
        self.recorded_impressions
            .fetch_add(u64::from(plan.outcome.recorded), Ordering::Relaxed);
        self.duplicate_impressions
            .fetch_add(u64::from(plan.outcome.duplicates), Ordering::Relaxed);
        Ok(plan.outcome)
    }

    /// Runs under the log's queue lock for the record numbered `seq`: claims
    /// the impression ids, encodes what is stored into `payload` (a count,
    /// then the impressions; left empty when nothing is stored) and says what
    /// to apply once the record is durable.
    fn plan_record(
        &self,
        impressions: &[NewImpression],
        cutoff: i64,
        seq: u64,
        payload: &mut Vec<u8>,
    ) -> RecordPlan {
        let mut plan = RecordPlan::default();
        payload.extend_from_slice(&0u32.to_le_bytes());
        let mut stored = 0u32;
        for impression in impressions {
            plan.outcome.recorded += 1;
            if impression.at_unix_seconds <= cutoff {
                continue;
            }
            let id_hash = (!impression.impression_id.is_empty())
                .then(|| impression_id_hash(&impression.impression_id));
            if let Some(id_hash) = id_hash {
                let claim = IdState {
                    at_unix_seconds: impression.at_unix_seconds,
                    log_seq: seq,
                };
                if let Some(existing) = self.ids.check_and_insert(id_hash, claim) {
                    plan.outcome.recorded -= 1;
                    plan.outcome.duplicates += 1;
                    if existing.log_seq != 0 && existing.log_seq != seq {
                        plan.depends_on.push(existing.log_seq);
                    }
                    continue;
                }
                plan.claimed_ids.push(id_hash);
            }
            let cap_key_hashes: Vec<u64> = impression
                .cap_keys
                .iter()
                .map(|key| cap_key_hash(key))
                .collect();
            let impression = LogImpression {
                user_fingerprint: impression.user_fingerprint,
                at_unix_seconds: impression.at_unix_seconds,
                impression_id_hash: id_hash,
                cap_key_hashes,
            };
            encode_impression(&impression, payload);
            plan.to_apply.push(impression);
            stored += 1;
        }
        if stored == 0 {
            payload.clear();
        } else {
            payload[..4].copy_from_slice(&stored.to_le_bytes());
        }
        plan
    }
}
