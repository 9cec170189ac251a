//! Serving state.
