//! gRPC services: one thin file per service.
