//! `Decide` and `Lookup` on the wire, server side: the `Decide` request
//! decoded in one pass into flat arrays and one text buffer (no allocation
//! per candidate), its response encoded with the ids read from the request;
//! the unary `Lookup` request decoded with its ids inline (no allocation).
//! The query port's server trait is generated a second time by build.rs
//! with these types in place of prost's (`generated`); every other message,
//! and every client, keeps the ordinary `crate::proto` types, and the
//! protocol is unchanged.
//!
//! This module owns decoding and encoding only: validation is
//! `api::limits`, deciding is `crate::decide`.

mod decide_request;
mod decide_response;
mod lookup_request;
mod reader;
#[cfg(test)]
mod tests;

pub use decide_request::WireDecideRequest;
pub use decide_response::WireDecideResponse;
pub use lookup_request::WireLookupRequest;

/// The services of `segd.v1` over the wire types (build.rs, second pass).
pub mod generated {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/wire/segd.v1.rs"));
}
