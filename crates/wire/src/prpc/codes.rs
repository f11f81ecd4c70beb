//! The mapping between gRPC codes and HTTP statuses used by pRPC, and the
//! generic texts that replace server-side error messages.
//!
//! pRPC clients trust `X-Prpc-Grpc-Code`, but some (Swarming's) only look at
//! it when the HTTP status is not 200, so the HTTP status must agree with the
//! code: this table is the contract.

use http::StatusCode;
use tonic::Code;

/// The HTTP status that carries a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    let n = match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::Unknown => 500,
        Code::InvalidArgument => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists => 409,
        Code::PermissionDenied => 403,
        Code::ResourceExhausted => 429,
        Code::FailedPrecondition => 400,
        Code::Aborted => 409,
        Code::OutOfRange => 400,
        Code::Unimplemented => 501,
        Code::Internal => 500,
        Code::Unavailable => 503,
        Code::DataLoss => 500,
        Code::Unauthenticated => 401,
    };
    StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The text sent instead of a handler's own message for server-side (HTTP
/// 5xx) errors, so internal details do not leak to callers.
pub fn generic_message(code: Code) -> &'static str {
    match code {
        Code::DataLoss => "Unrecoverable data loss or data corruption",
        Code::Unknown => "Unknown server error",
        Code::Internal => "Internal server error",
        Code::Unimplemented => "API method not implemented by the server",
        Code::Unavailable => "Service unavailable",
        Code::DeadlineExceeded => "Request deadline exceeded",
        _ => "Server error",
    }
}

/// The gRPC code a pRPC client assumes when a response lacks
/// `X-Prpc-Grpc-Code` (for example an error page from a proxy).
pub fn code_without_header(status: StatusCode) -> Code {
    match status.as_u16() {
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        503 => Code::Unavailable,
        _ => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let want = [
            (0, 200),
            (1, 499),
            (2, 500),
            (3, 400),
            (4, 504),
            (5, 404),
            (6, 409),
            (7, 403),
            (8, 429),
            (9, 400),
            (10, 409),
            (11, 400),
            (12, 501),
            (13, 500),
            (14, 503),
            (15, 500),
            (16, 401),
            // Unknown numbers decode as UNKNOWN.
            (99, 500),
        ];
        for (code, http) in want {
            assert_eq!(
                http_status(Code::from_i32(code)).as_u16(),
                http,
                "code {code}"
            );
        }
    }
}
