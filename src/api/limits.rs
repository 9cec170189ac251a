//! Per-request limits and the validation that enforces them. Messages name the
//! field and index at fault, e.g. `requests[3].user_id: must not be empty`.

use tonic::Status;

use crate::config::ServeConfig;

#[derive(Debug, Clone)]
pub struct RequestLimits {
    pub max_segment_ids: usize,
    pub max_batch_lookups: usize,
    pub max_candidates: usize,
    pub max_refs_per_candidate: usize,
    pub max_caps_per_candidate: usize,
    pub max_impressions: usize,
    pub max_cap_keys: usize,
    pub max_cap_key_bytes: usize,
    pub max_user_id_bytes: usize,
    pub freq_retention_seconds: i64,
}

impl RequestLimits {
    pub fn from_config(config: &ServeConfig) -> Self {
        Self {
            max_segment_ids: config.max_segment_ids,
            max_batch_lookups: config.max_batch_lookups,
            max_candidates: config.max_candidates,
            max_refs_per_candidate: config.max_refs_per_candidate,
            max_caps_per_candidate: config.max_caps_per_candidate,
            max_impressions: config.max_impressions,
            max_cap_keys: config.max_cap_keys,
            max_cap_key_bytes: config.max_cap_key_bytes,
            max_user_id_bytes: config.max_user_id_bytes,
            freq_retention_seconds: config.freq_retention_seconds(),
        }
    }

    pub fn check_user_id(&self, field: &str, user_id: &str) -> Result<(), Status> {
        if user_id.is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        if user_id.len() > self.max_user_id_bytes {
            return Err(invalid(
                field,
                &format!(
                    "{} bytes, more than the limit of {}",
                    user_id.len(),
                    self.max_user_id_bytes
                ),
            ));
        }
        Ok(())
    }

    pub fn check_count(&self, field: &str, count: usize, limit: usize) -> Result<(), Status> {
        if count > limit {
            return Err(invalid(
                field,
                &format!("{count} entries, more than the limit of {limit}"),
            ));
        }
        Ok(())
    }
}

/// `INVALID_ARGUMENT` naming the field.
pub fn invalid(field: &str, problem: &str) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}
