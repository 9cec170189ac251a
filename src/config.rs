//! The `segd serve` flags.
