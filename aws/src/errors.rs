//! What an EC2 error means for fleetform, decided by its code alone (a pure function, so
//! the table is tested without a network).

/// How fleetform reacts to an EC2 error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The cloud has no capacity for this instance type here (or the account may not run
    /// more of it): try the next machine model. Never retried by the SDK.
    Capacity,
    /// Too many requests: the SDK backs off and retries.
    Throttled,
    /// A server-side or network failure: retried by the SDK, then by the next pass.
    Transient,
    /// The request itself is wrong (a bad AMI, subnet, permission): retrying will not
    /// help until the configuration changes.
    Rejected,
}

/// Codes that mean "no capacity for this model": the next model is tried.
const CAPACITY: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "Unsupported",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
];

/// Throttling codes of EC2 (the SDK's own list agrees on these).
const THROTTLED: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "EC2ThrottledException",
];

/// Server-side codes EC2 documents as transient.
const TRANSIENT: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
];

/// Classifies an EC2 error by its code; `status` (HTTP) decides for unknown codes.
pub fn classify(code: Option<&str>, status: Option<u16>) -> ErrorClass {
    match code {
        Some(code) if CAPACITY.contains(&code) => ErrorClass::Capacity,
        Some(code) if THROTTLED.contains(&code) => ErrorClass::Throttled,
        Some(code) if TRANSIENT.contains(&code) => ErrorClass::Transient,
        _ => match status {
            Some(429) => ErrorClass::Throttled,
            Some(status) if (400..500).contains(&status) => ErrorClass::Rejected,
            // 5xx, or no response at all (timeouts, refused connections).
            _ => ErrorClass::Transient,
        },
    }
}

/// An EC2 call that failed after the SDK's retries.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {class:?} ({}): {message}", code.as_deref().unwrap_or("no error code"))]
pub struct AwsError {
    pub operation: &'static str,
    pub class: ErrorClass,
    pub code: Option<String>,
    pub message: String,
}

impl AwsError {
    pub(crate) fn from_sdk<E>(
        operation: &'static str,
        error: aws_sdk_ec2::error::SdkError<E, aws_smithy_runtime_api::http::Response>,
    ) -> Self
    where
        E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        use aws_sdk_ec2::error::ProvideErrorMetadata;
        let status = error.raw_response().map(|raw| raw.status().as_u16());
        let code = error.code().map(str::to_string);
        let message = match error.message() {
            Some(message) => message.to_string(),
            None => aws_sdk_ec2::error::DisplayErrorContext(&error).to_string(),
        };
        AwsError {
            operation,
            class: classify(code.as_deref(), status),
            code,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        use ErrorClass::*;
        #[rustfmt::skip]
        let cases = [
            (Some("InsufficientInstanceCapacity"), Some(500), Capacity),
            (Some("Unsupported"), Some(400), Capacity),
            (Some("InstanceLimitExceeded"), Some(400), Capacity),
            (Some("RequestLimitExceeded"), Some(503), Throttled),
            (Some("InternalError"), Some(500), Transient),
            (Some("InvalidAMIID.NotFound"), Some(400), Rejected),
            (Some("UnauthorizedOperation"), Some(403), Rejected),
            (Some("SomethingNew"), Some(502), Transient),
            (None, Some(429), Throttled),
            (None, None, Transient),
        ];
        for (code, status, want) in cases {
            assert_eq!(classify(code, status), want, "{code:?} {status:?}");
        }
    }
}
