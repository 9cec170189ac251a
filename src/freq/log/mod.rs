//! The write-ahead log of the frequency store: [`format`] is the segment
//! format on disk (encoder, checked decoder, file names), [`writer`] the
//! group-commit writer that appends to it.

pub mod format;
pub mod writer;

pub use format::*;
#[cfg(any(test, feature = "test-hooks"))]
pub use writer::InjectedFault;
pub(crate) use writer::LogWriter;
