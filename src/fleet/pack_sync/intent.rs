//! What the fleet should serve, as stored in the key-value bucket: one
//! [`Intent`] per pack and shard under `pack.NAME.I-of-N`, the pack files'
//! object names, and the version a key served before its current one (from
//! the bucket's history, for a fleet-wide rollback on a replica that keeps
//! no previous version itself).
//!
//! Owns the encoding only: it never changes what a replica serves.

use std::time::Duration;

use async_nats::jetstream::kv;
use tokio_stream::StreamExt as _;

use crate::shard::Shard;

/// How long reading a key's history may take before the rollback gives up.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the fleet should serve for one pack of one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub version: String,
    /// Dropped fleet-wide; `version` is the one dropped.
    pub dropped: bool,
}

impl Intent {
    pub fn serve(version: String) -> Intent {
        Intent {
            version,
            dropped: false,
        }
    }

    /// `serve VERSION` or `drop VERSION`, one line.
    pub fn encode(&self) -> String {
        let verb = if self.dropped { "drop" } else { "serve" };
        format!("{verb} {}", self.version)
    }

    pub fn decode(value: &[u8]) -> Option<Intent> {
        let text = std::str::from_utf8(value).ok()?;
        let (verb, version) = text.split_once(' ')?;
        let dropped = match verb {
            "serve" => false,
            "drop" => true,
            _ => return None,
        };
        Some(Intent {
            version: version.to_owned(),
            dropped,
        })
    }
}

/// `pack.NAME.I-of-N`: pack names are `[A-Za-z0-9._-]`, all valid in keys.
pub fn intent_key(pack: &str, shard: Shard) -> String {
    format!("pack.{pack}.{}-of-{}", shard.index, shard.count)
}

pub fn pack_of_key(key: &str, shard: Shard) -> Option<&str> {
    key.strip_prefix("pack.")?
        .strip_suffix(&format!(".{}-of-{}", shard.index, shard.count))
}

pub fn object_name(pack: &str, shard: Shard, version: &str) -> String {
    format!("{pack}/shard-{}-of-{}/{version}", shard.index, shard.count)
}

/// The last version the fleet intended to serve under `key` other than
/// `current`, from the bucket's history (its last few revisions); `None`
/// when the history holds no other served version.
pub async fn previous_in_history(
    intents: &kv::Store,
    key: &str,
    current: &str,
) -> Result<Option<String>, String> {
    // A key without entries has a history that never ends: look first.
    match intents.entry(key).await {
        Ok(Some(_)) => {}
        Ok(None) => return Ok(None),
        Err(error) => return Err(format!("read {key}: {error}")),
    }
    let read = async {
        let mut history = intents
            .history(key)
            .await
            .map_err(|error| format!("read the history of {key}: {error}"))?;
        let mut served = Vec::new();
        while let Some(entry) = history.next().await {
            let entry = entry.map_err(|error| format!("read the history of {key}: {error}"))?;
            if entry.operation == kv::Operation::Put
                && let Some(intent) = Intent::decode(&entry.value)
                && !intent.dropped
            {
                served.push(intent.version);
            }
        }
        Ok(previous_of(&served, current))
    };
    tokio::time::timeout(HISTORY_TIMEOUT, read)
        .await
        .map_err(|_| format!("reading the history of {key} took over {HISTORY_TIMEOUT:?}"))?
}

/// The last of `served` (oldest first) that is not `current`.
fn previous_of(served: &[String], current: &str) -> Option<String> {
    served
        .iter()
        .rev()
        .find(|version| version.as_str() != current)
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_and_keys_round_trip() {
        for intent in [
            Intent::serve("v10".into()),
            Intent {
                version: "2026-12-01 a".into(),
                dropped: true,
            },
        ] {
            assert_eq!(Intent::decode(intent.encode().as_bytes()), Some(intent));
        }
        assert_eq!(Intent::decode(b"serve"), None);
        assert_eq!(Intent::decode(b"keep v1"), None);
        let shard = Shard { index: 1, count: 2 };
        let key = intent_key("crm.eu", shard);
        assert_eq!(key, "pack.crm.eu.1-of-2");
        assert_eq!(pack_of_key(&key, shard), Some("crm.eu"));
        assert_eq!(pack_of_key(&key, Shard { index: 0, count: 2 }), None);
        assert_eq!(object_name("crm", shard, "v3"), "crm/shard-1-of-2/v3");
    }

    #[test]
    fn the_previous_version_is_the_last_other_one_served() {
        let served = |versions: &[&str]| -> Vec<String> {
            versions.iter().map(|version| version.to_string()).collect()
        };
        assert_eq!(
            previous_of(&served(&["v1", "v2", "v3"]), "v3").as_deref(),
            Some("v2")
        );
        // Re-pushes of the current version are skipped; a rollback's target counts.
        assert_eq!(
            previous_of(&served(&["v1", "v2", "v1", "v1"]), "v1").as_deref(),
            Some("v2")
        );
        assert_eq!(previous_of(&served(&["v1"]), "v1"), None);
        assert_eq!(previous_of(&[], "v1"), None);
    }
}
