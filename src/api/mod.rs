//! gRPC services, one thin file each: validate the request, do one `load()` of
//! the serving state, call a domain function, map the result. No business
//! logic lives here. [`status`] holds the one mapping from domain errors to
//! `tonic::Status`; [`auth`] the admin bearer-token check; [`wire`] the
//! server's own decoding of `Decide`.

pub mod admin;
pub mod auth;
pub mod limits;
pub mod outcomes;
pub mod push;
pub mod realtime;
pub mod record_sink;
pub mod segments;
pub mod status;
pub mod wire;

pub use admin::AdminService;
pub use limits::RequestLimits;
pub use segments::SegmentsService;
