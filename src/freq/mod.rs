//! Frequency counters.
