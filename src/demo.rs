//! The demo pack.
