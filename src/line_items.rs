//! Registered line items: candidate definitions pushed once through
//! `Admin/PutLineItems` and named by id in `Decide`, so a high-rate ad server
//! sends a user and a list of ids instead of kilobytes of targeting per call.
//!
//! The set is one immutable value behind an `ArcSwap` (replaced whole, like a
//! pack) and persisted as a protobuf file written atomically in the data
//! directory, so a restart serves what was last acknowledged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ahash::AHashMap;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use prost::Message;

use crate::proto::{Candidate, PutLineItemsRequest};

const FILE_NAME: &str = "line-items.pb";

/// One version of the registered line items.
#[derive(Debug, Default)]
pub struct LineItemSet {
    pub version: String,
    by_id: AHashMap<String, Candidate>,
}

impl LineItemSet {
    pub fn get(&self, id: &str) -> Option<&Candidate> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LineItemError {
    #[error("line_items[{index}].id: must not be empty")]
    EmptyId { index: usize },
    #[error("line_items[{index}].id: {id:?} is listed twice")]
    DuplicateId { index: usize, id: String },
    #[error("version: must not be empty")]
    EmptyVersion,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a line item file: {reason}")]
    Corrupt { path: String, reason: String },
}

pub struct LineItemRegistry {
    current: ArcSwap<LineItemSet>,
    path: PathBuf,
    change_lock: Mutex<()>,
}

/// What a put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    pub version: String,
    pub line_items: u32,
    pub unchanged: bool,
}

impl LineItemRegistry {
    /// Loads the persisted set from `data_dir`, if any.
    pub fn open(data_dir: &Path) -> Result<Self, LineItemError> {
        let path = data_dir.join(FILE_NAME);
        let set = match std::fs::read(&path) {
            Ok(bytes) => {
                let request = PutLineItemsRequest::decode(bytes.as_slice()).map_err(|error| {
                    LineItemError::Corrupt {
                        path: path.display().to_string(),
                        reason: error.to_string(),
                    }
                })?;
                index(request)?
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => LineItemSet::default(),
            Err(source) => {
                return Err(LineItemError::Io {
                    context: format!("read {}", path.display()),
                    source,
                });
            }
        };
        Ok(Self {
            current: ArcSwap::from_pointee(set),
            path,
            change_lock: Mutex::new(()),
        })
    }

    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<LineItemSet>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<LineItemSet> {
        self.current.load_full()
    }

    /// The checks of [`LineItemRegistry::put`] without registering: a fleet
    /// shares only a set every replica will take.
    pub fn check(request: &PutLineItemsRequest) -> Result<(), LineItemError> {
        index(request.clone()).map(|_| ())
    }

    /// Validates (the caller checks each candidate against the request limits),
    /// persists atomically, then swaps in. Blocking: call off the runtime.
    pub fn put(&self, request: PutLineItemsRequest) -> Result<PutOutcome, LineItemError> {
        let _change = self.change_lock.lock();
        let current = self.current.load_full();
        if request.version == current.version {
            return Ok(PutOutcome {
                version: current.version.clone(),
                line_items: current.len() as u32,
                unchanged: true,
            });
        }
        let bytes = request.encode_to_vec();
        let set = index(request)?;
        crate::pack::write_pack_file_atomic(&bytes, &self.path).map_err(|source| {
            LineItemError::Io {
                context: format!("write {}", self.path.display()),
                source,
            }
        })?;
        let outcome = PutOutcome {
            version: set.version.clone(),
            line_items: set.len() as u32,
            unchanged: false,
        };
        self.current.store(Arc::new(set));
        Ok(outcome)
    }
}

fn index(request: PutLineItemsRequest) -> Result<LineItemSet, LineItemError> {
    if request.version.is_empty() {
        return Err(LineItemError::EmptyVersion);
    }
    let mut by_id = AHashMap::with_capacity(request.line_items.len());
    for (index, line_item) in request.line_items.into_iter().enumerate() {
        if line_item.id.is_empty() {
            return Err(LineItemError::EmptyId { index });
        }
        if by_id.contains_key(&line_item.id) {
            return Err(LineItemError::DuplicateId {
                index,
                id: line_item.id,
            });
        }
        by_id.insert(line_item.id.clone(), line_item);
    }
    Ok(LineItemSet {
        version: request.version,
        by_id,
    })
}
