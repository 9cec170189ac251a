//! Targeting plus frequency caps.
