//! What one request came to, for every target: a success with the serving
//! generation when the reply carries one, or a failure with a short code
//! (gRPC status name or `redis:...`) for the error table.

/// What a successful request reported.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// Serving generation, for replies that carry one.
    pub generation: Option<u64>,
}

/// A failed request: `code` groups it in the report, `message` explains the first one.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: String,
    pub message: String,
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Failure {
        Failure {
            code: format!("{:?}", status.code()),
            message: status.message().to_owned(),
        }
    }
}

pub fn bad_reply(message: String) -> Failure {
    Failure {
        code: "BadReply".to_owned(),
        message,
    }
}
