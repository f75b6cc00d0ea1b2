//! The library's error type and how each variant reaches an HTTP client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fleetform_api::{ErrorBody, ErrorDetail};

/// Everything that can go wrong in fleetformd's library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request names a field whose value is wrong.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The request body is not the JSON the route takes.
    #[error("{message}")]
    BadRequest {
        message: String,
        field: Option<String>,
    },
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    /// The request is valid but contradicts the current state (a name taken, a build in use).
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    /// No ready process can take the session now.
    #[error("no server process is free in zone {zone:?}; retry later")]
    NoCapacity { zone: String, retry_after_secs: u64 },
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("store: {0}")]
    Store(#[from] crate::store::db::DbError),
    /// This replica no longer holds the zone's lease (another took it over): the write
    /// of its reconciler is refused. See `leases.rs`.
    #[error("zone {zone}: this replica no longer holds its lease")]
    LeaseLost { zone: String },
    /// Another replica holds what this request needs for a moment (a zone's lease row is
    /// locked by its transaction): the client should come back shortly.
    #[error("{message}; retry in {retry_after_secs} s")]
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },
    /// The store's write queue is full: the client should come back shortly.
    #[error("fleetformd is overloaded; retry in {retry_after_secs} s")]
    Overloaded { retry_after_secs: u64 },
    #[error("machine driver: {0}")]
    Driver(String),
    /// The cloud has no capacity for this machine model now; the next model is tried.
    #[error("no capacity for instance type {instance_type}: {reason}")]
    InsufficientCapacity {
        instance_type: String,
        reason: String,
    },
    /// The cloud refused to launch this machine model as configured (a bad image, subnet
    /// or permission); the next model is tried, and retrying it waits.
    #[error("launch of instance type {instance_type} refused: {reason}")]
    LaunchRejected {
        instance_type: String,
        reason: String,
    },
    #[error("internal: {0}")]
    Internal(String),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound {
            what,
            id: id.into(),
        }
    }

    /// Shorthand for [`Error::Conflict`] without a field.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Error::Conflict {
            code,
            message: message.into(),
            field: None,
        }
    }

    fn status_code_field(&self) -> (StatusCode, &'static str, Option<String>) {
        match self {
            Error::Invalid { field, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                Some(field.clone()),
            ),
            Error::BadRequest { field, .. } => {
                (StatusCode::BAD_REQUEST, "bad_request", field.clone())
            }
            Error::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found", None),
            Error::Conflict { code, field, .. } => (StatusCode::CONFLICT, code, field.clone()),
            Error::NoCapacity { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no_capacity", None),
            Error::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            Error::Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, "overloaded", None),
            Error::LeaseLost { .. } => (StatusCode::SERVICE_UNAVAILABLE, "lease_lost", None),
            Error::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            Error::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None)
            }
            Error::Store(_)
            | Error::Driver(_)
            | Error::InsufficientCapacity { .. }
            | Error::LaunchRejected { .. }
            | Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Store(db) = &self {
            if db.is_closed() || db.is_transient() {
                // The database is away (restarting, failing over): a moment's outage.
                tracing::error!(error = %self, "request failed: the database connection is gone");
                return Error::Unavailable {
                    message: "the database is unavailable".into(),
                    retry_after_secs: 1,
                }
                .into_response();
            }
        }
        let (status, code, field) = self.status_code_field();
        let message = if status == axum::http::StatusCode::INTERNAL_SERVER_ERROR {
            // Internal details go to the log, not to the client.
            tracing::error!(error = %self, "request failed");
            "internal error; see fleetformd's log".to_string()
        } else {
            self.to_string()
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message,
                field,
            },
        };
        let lease_lost = matches!(self, Error::LeaseLost { .. });
        let mut response = (status, axum::Json(body)).into_response();
        if lease_lost {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(1),
            );
        }
        if let Error::NoCapacity {
            retry_after_secs, ..
        }
        | Error::Overloaded { retry_after_secs }
        | Error::Unavailable {
            retry_after_secs, ..
        } = self
        {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry_after_secs),
            );
        }
        response
    }
}

impl From<rusqlite::Error> for Error {
    fn from(error: rusqlite::Error) -> Self {
        Error::Store(error.into())
    }
}

impl From<postgres::Error> for Error {
    fn from(error: postgres::Error) -> Self {
        Error::Store(error.into())
    }
}

impl From<fleetform_api::validate::FieldError> for Error {
    fn from(error: fleetform_api::validate::FieldError) -> Self {
        Error::Invalid {
            field: error.field,
            message: error.message,
        }
    }
}
