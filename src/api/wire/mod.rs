//! `Decide` on the wire, server side: the request decoded in one pass into
//! flat arrays and one text buffer (no allocation per candidate), the
//! response encoded with the ids read from the request. The query port's
//! server trait is generated a second time by build.rs with these two types
//! in place of prost's (`generated`); every other message, and every client,
//! keeps the ordinary `crate::proto` types, and the protocol is unchanged.
//!
//! This module owns decoding and encoding only: validation is
//! `api::limits`, deciding is `crate::decide`.

mod decide_request;
mod decide_response;
mod reader;
#[cfg(test)]
mod tests;

pub use decide_request::WireDecideRequest;
pub use decide_response::WireDecideResponse;

/// The services of `segd.v1` over the wire types (build.rs, second pass).
pub mod generated {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/wire/segd.v1.rs"));
}
