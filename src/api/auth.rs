//! The admin bearer-token check, run on every admin call. The token is
//! compared in constant time and never logged.

use tonic::{Request, Status};

/// A tonic interceptor accepting `authorization: Bearer <token>` when a token
/// is configured, everything when none is (loopback only; see `server`).
#[derive(Clone)]
pub struct AdminAuth {
    expected_header: Option<Vec<u8>>,
}

impl AdminAuth {
    pub fn new(token: Option<&str>) -> Self {
        Self {
            expected_header: token.map(|token| format!("Bearer {token}").into_bytes()),
        }
    }

    pub fn check<T>(&self, request: Request<T>) -> Result<Request<T>, Status> {
        let Some(expected) = &self.expected_header else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(presented, expected) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("missing or wrong admin token"))
        }
    }
}

/// Compares without an early exit on the first differing byte, so timing does
/// not reveal how much of a guess was right. The length is not secret.
pub fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_identical() {
        assert!(constant_time_eq(b"Bearer s3cret", b"Bearer s3cret"));
        assert!(!constant_time_eq(b"Bearer s3cret", b"Bearer s3creT"));
        assert!(!constant_time_eq(b"Bearer s3cret", b"Bearer s3cre"));
        assert!(!constant_time_eq(b"", b"Bearer s3cret"));
    }
}
