//! [`Ready`]: a value the start-up load provides, shared before it exists.
//!
//! The ports answer health (NOT_SERVING) while the data directory loads, so
//! the services exist before the frequency store has replayed its log. They
//! hold a `Ready` instead, and answer `UNAVAILABLE` until the composition
//! root sets it — once; it never changes after.

use std::sync::{Arc, OnceLock};

pub struct Ready<T>(Arc<OnceLock<T>>);

impl<T> Clone for Ready<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Default for Ready<T> {
    fn default() -> Self {
        Self(Arc::new(OnceLock::new()))
    }
}

impl<T> Ready<T> {
    /// Provides the value; a second call is ignored (the first stays).
    pub fn set(&self, value: T) {
        let _ = self.0.set(value);
    }

    /// The value, once provided.
    pub fn get(&self) -> Option<&T> {
        self.0.get()
    }

    /// The value, or `UNAVAILABLE` saying what is still `loading`.
    pub fn or_unavailable(&self, loading: &str) -> Result<&T, tonic::Status> {
        self.get()
            .ok_or_else(|| tonic::Status::unavailable(format!("{loading}, not serving yet")))
    }
}

impl<T> std::fmt::Debug for Ready<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(if self.get().is_some() {
            "Ready(set)"
        } else {
            "Ready(loading)"
        })
    }
}

/// A collector registered before its owner exists encodes nothing until set.
impl<C: crate::telemetry::Collector> crate::telemetry::Collector for Ready<C> {
    fn encode(&self, encoder: crate::telemetry::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        match self.get() {
            Some(collector) => collector.encode(encoder),
            None => Ok(()),
        }
    }
}
