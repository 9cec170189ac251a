//! Domain errors to gRPC status codes: one explicit `From` per error enum,
//! every variant named, so a new variant cannot silently get a wrong code.

use tonic::{Code, Status};

use crate::pack::PackError;
use crate::store::catalog::CatalogError;

impl From<CatalogError> for Status {
    fn from(error: CatalogError) -> Self {
        let code = match &error {
            CatalogError::Pack(pack_error) => pack_error_code(pack_error),
            CatalogError::Index(_) => Code::InvalidArgument,
            CatalogError::Ownership(_) => Code::FailedPrecondition,
            CatalogError::OlderVersion { .. } => Code::FailedPrecondition,
            CatalogError::InvalidPackName(_) => Code::InvalidArgument,
            CatalogError::WrongShard { .. } => Code::FailedPrecondition,
            CatalogError::NoSuchPack(_) => Code::NotFound,
            CatalogError::NoPreviousVersion(_) => Code::FailedPrecondition,
            CatalogError::Damaged { .. } => Code::DataLoss,
            CatalogError::Io { .. } => Code::Unavailable,
        };
        Status::new(code, error.to_string())
    }
}

/// A pushed file that fails verification is the caller's bad input, whatever
/// the damage: the server's own data is untouched.
fn pack_error_code(_error: &PackError) -> Code {
    Code::InvalidArgument
}

impl From<crate::freq::FreqError> for Status {
    fn from(error: crate::freq::FreqError) -> Self {
        use crate::freq::FreqError;
        let code = match &error {
            FreqError::Storage { .. } => Code::Unavailable,
            FreqError::CorruptLog { .. } => Code::DataLoss,
            FreqError::CorruptCheckpoint { .. } => Code::DataLoss,
            FreqError::InvalidConfig(_) => Code::Internal,
            FreqError::Unavailable(_) => Code::Unavailable,
            FreqError::ShutDown => Code::Unavailable,
        };
        Status::new(code, error.to_string())
    }
}

impl From<crate::line_items::LineItemError> for Status {
    fn from(error: crate::line_items::LineItemError) -> Self {
        use crate::line_items::LineItemError;
        let code = match &error {
            LineItemError::EmptyId { .. } => Code::InvalidArgument,
            LineItemError::DuplicateId { .. } => Code::InvalidArgument,
            LineItemError::EmptyVersion => Code::InvalidArgument,
            LineItemError::Io { .. } => Code::Unavailable,
            LineItemError::Corrupt { .. } => Code::DataLoss,
        };
        Status::new(code, error.to_string())
    }
}

impl From<crate::realtime::RealtimeError> for Status {
    fn from(error: crate::realtime::RealtimeError) -> Self {
        use crate::realtime::RealtimeError;
        let code = match &error {
            RealtimeError::UnknownSegment { .. } => Code::InvalidArgument,
            RealtimeError::OverlayFull { .. } => Code::ResourceExhausted,
            RealtimeError::NotLoaded => Code::Unavailable,
            RealtimeError::Storage(_) => Code::Unavailable,
            RealtimeError::Unavailable(_) => Code::Unavailable,
            RealtimeError::TooLarge(_) => Code::InvalidArgument,
        };
        Status::new(code, error.to_string())
    }
}

impl From<crate::fleet::pack_sync::FleetChangeError> for Status {
    fn from(error: crate::fleet::pack_sync::FleetChangeError) -> Self {
        use crate::fleet::pack_sync::FleetChangeError;
        match error {
            FleetChangeError::Catalog(error) => Status::from(error),
            FleetChangeError::LineItems(error) => Status::from(error),
            FleetChangeError::Unavailable(message) => Status::unavailable(message),
            FleetChangeError::Precondition(message) => Status::failed_precondition(message),
        }
    }
}
