//! Opening the frequency store from disk: the newest checkpoint, the log
//! segments after it (a torn tail cut, damage mid-log refused unless
//! `recover_corrupt_log`), and the clean-up of files a checkpoint covers.
//! Runs before the store takes writes; no threads of its own.

use std::fs;
use std::path::PathBuf;

use super::checkpoint::{parse_checkpoint_file_name, read_checkpoint};
use super::counters::{Counters, IdSet, IdState};
use super::error::FreqError;
use super::forget::ForgottenUsers;
use super::log::{LogRecord, SegmentDecodeError, decode_log_segment, fsync_dir, list_segments};
use super::store::{FIRST_SEQ, FreqConfig, RecoveryReport};

/// Deletes checkpoints and segments older than the checkpoint covering
/// `covers_before_seq`. Best effort: a leftover is deleted at the next open.
pub(super) fn delete_covered_files(config: &FreqConfig, covers_before_seq: u64) {
    if let Ok(segments) = list_segments(&config.dir) {
        for (first_seq, path) in segments {
            if first_seq < covers_before_seq
                && let Err(error) = fs::remove_file(&path)
            {
                tracing::warn!(segment = %path.display(), error = %error, "cannot delete covered log segment");
            }
        }
    }
    for (covered, path) in list_checkpoints(config).unwrap_or_default() {
        if covered < covers_before_seq {
            let _ = fs::remove_file(path);
        }
    }
    let _ = fsync_dir(&config.dir);
}

pub(super) fn list_checkpoints(config: &FreqConfig) -> Result<Vec<(u64, PathBuf)>, FreqError> {
    let dir = &config.dir;
    let mut checkpoints = Vec::new();
    let entries = fs::read_dir(dir)
        .map_err(|error| FreqError::storage(format!("list {}", dir.display()), error))?;
    for entry in entries {
        let entry =
            entry.map_err(|error| FreqError::storage(format!("list {}", dir.display()), error))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".ckpt.tmp") {
            let _ = fs::remove_file(entry.path());
        } else if let Some(covered) = parse_checkpoint_file_name(name) {
            checkpoints.push((covered, entry.path()));
        }
    }
    checkpoints.sort();
    Ok(checkpoints)
}

/// Loads the newest checkpoint into the maps; returns the sequence number it
/// covers up to (or the first sequence number when there is none).
pub(super) fn load_newest_checkpoint(
    config: &FreqConfig,
    counters: &Counters,
    ids: &IdSet,
    forgotten: &ForgottenUsers,
    report: &mut RecoveryReport,
) -> Result<u64, FreqError> {
    let Some((covered, path)) = list_checkpoints(config)?.pop() else {
        return Ok(FIRST_SEQ);
    };
    let data = read_checkpoint(&path)?;
    report.applied_stream_seq = data.applied_stream_seq;
    if data.covers_before_seq != covered {
        return Err(FreqError::CorruptCheckpoint {
            path,
            reason: format!(
                "covers sequence {} but is named for {covered}",
                data.covers_before_seq
            ),
        });
    }
    for (key, entry) in data.entries {
        if forgotten.drops_checkpointed(key.user_fingerprint, covered) {
            continue;
        }
        report.checkpoint_events += entry.events();
        counters.restore(key, entry);
    }
    for (id_hash, at_unix_seconds) in data.ids {
        ids.check_and_insert(
            id_hash,
            IdState {
                at_unix_seconds,
                log_seq: 0,
            },
        );
        report.checkpoint_ids += 1;
    }
    report.checkpoint_path = Some(path);
    Ok(covered.max(FIRST_SEQ))
}

/// What replaying a record applies to, and what it leaves out.
pub(super) struct Replay<'a> {
    pub cutoff: i64,
    pub counters: &'a Counters,
    pub ids: &'a IdSet,
    pub forgotten: &'a ForgottenUsers,
}

pub(super) fn apply_replayed(
    record: &LogRecord,
    log_seq: u64,
    replay: &Replay,
    report: &mut RecoveryReport,
) {
    let Replay {
        cutoff,
        counters,
        ids,
        forgotten,
    } = *replay;
    report.replayed_records += 1;
    for impression in &record.impressions {
        report.replayed_impressions += 1;
        if impression.at_unix_seconds <= cutoff
            || forgotten.drops(impression.user_fingerprint, log_seq)
        {
            continue;
        }
        if let Some(id_hash) = impression.impression_id_hash {
            let state = IdState {
                at_unix_seconds: impression.at_unix_seconds,
                log_seq: 0,
            };
            if ids.check_and_insert(id_hash, state).is_some() {
                continue;
            }
        }
        counters.add_impression(
            impression.user_fingerprint,
            &impression.cap_key_hashes,
            impression.at_unix_seconds,
        );
    }
}

pub(super) fn truncate_file(path: &std::path::Path, length: u64) -> Result<(), FreqError> {
    let context = || format!("truncate {}", path.display());
    let file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|error| FreqError::storage(context(), error))?;
    file.set_len(length)
        .map_err(|error| FreqError::storage(context(), error))?;
    file.sync_all()
        .map_err(|error| FreqError::storage(context(), error))
}

/// Replays the segments from `covers_before` on; returns the next sequence
/// number.
pub(super) fn replay_segments(
    config: &FreqConfig,
    covers_before: u64,
    replay: &Replay,
    report: &mut RecoveryReport,
) -> Result<u64, FreqError> {
    let mut next_seq = covers_before;
    for (named_seq, path) in list_segments(&config.dir)? {
        if named_seq < covers_before {
            // Covered by the checkpoint; left behind by a crash after it was written.
            fs::remove_file(&path)
                .map_err(|error| FreqError::storage(format!("delete {}", path.display()), error))?;
            continue;
        }
        let bytes = fs::read(&path)
            .map_err(|error| FreqError::storage(format!("read {}", path.display()), error))?;
        match decode_log_segment(&bytes) {
            Ok(segment) => {
                if segment.first_seq != named_seq {
                    return Err(FreqError::CorruptLog {
                        path,
                        offset: 0,
                        reason: format!(
                            "header sequence {} does not match the file name",
                            segment.first_seq
                        ),
                    });
                }
                for (index, record) in segment.records.iter().enumerate() {
                    apply_replayed(record, segment.first_seq + index as u64, replay, report);
                }
                report.replayed_segments += 1;
                next_seq = next_seq.max(segment.first_seq + segment.records.len() as u64);
                if segment.torn_tail_bytes > 0 {
                    tracing::warn!(
                        segment = %path.display(),
                        offset = segment.valid_bytes,
                        bytes_dropped = segment.torn_tail_bytes,
                        "frequency log has a torn tail; truncating"
                    );
                    truncate_file(&path, segment.valid_bytes)?;
                    report.torn_tail_bytes += segment.torn_tail_bytes;
                }
            }
            Err(SegmentDecodeError::TruncatedHeader { length }) => {
                tracing::warn!(segment = %path.display(), bytes_dropped = length, "frequency log segment with a torn header; deleting");
                fs::remove_file(&path).map_err(|error| {
                    FreqError::storage(format!("delete {}", path.display()), error)
                })?;
                report.torn_tail_bytes += length;
            }
            Err(SegmentDecodeError::Corrupt {
                offset,
                reason,
                records_before,
                first_seq,
            }) => {
                if !config.recover_corrupt_log {
                    return Err(FreqError::CorruptLog {
                        path,
                        offset,
                        reason,
                    });
                }
                tracing::warn!(
                    segment = %path.display(),
                    offset,
                    reason = %reason,
                    bytes_dropped = bytes.len() as u64 - offset,
                    "corrupt frequency log record; recovering by truncating there"
                );
                for (index, record) in records_before.iter().enumerate() {
                    apply_replayed(record, named_seq + index as u64, replay, report);
                }
                if first_seq.is_some() {
                    truncate_file(&path, offset)?;
                    next_seq = next_seq.max(named_seq + records_before.len() as u64);
                } else {
                    fs::remove_file(&path).map_err(|error| {
                        FreqError::storage(format!("delete {}", path.display()), error)
                    })?;
                }
                report.corrupt_bytes_dropped += bytes.len() as u64 - offset;
                if report.corrupt_offset.is_none() {
                    report.corrupt_offset = Some((path, offset));
                }
            }
        }
    }
    Ok(next_seq)
}
