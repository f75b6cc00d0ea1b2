//! Request extractors whose rejections are our JSON errors naming the field.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::Error;

/// Largest request body fleetformd reads.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A JSON body, parsed with the path of the first bad field.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    Error::PayloadTooLarge {
                        limit: MAX_BODY_BYTES,
                    }
                } else {
                    Error::BadRequest {
                        message: format!("could not read the request body: {rejection}"),
                        field: None,
                    }
                }
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The one path parameter of a route (an id or a name); a malformed one (say, invalid
/// UTF-8 after percent-decoding) is our JSON 400, not axum's plain-text one.
#[derive(Debug)]
pub struct Id(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| Error::BadRequest {
                message: format!("malformed path: {rejection}"),
                field: None,
            })?;
        Ok(Id(id))
    }
}

/// Query parameters as a map, with a JSON 400 when the query string is malformed.
#[derive(Debug)]
pub struct QueryMap(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(map) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| Error::BadRequest {
                message: format!("malformed query string: {rejection}"),
                field: None,
            })?;
        Ok(QueryMap(map))
    }
}

/// Parses `bytes` as `T`; errors name the field (`data_centers[0].priority`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::BadRequest {
            message: "the request body is empty; this route takes a JSON object".into(),
            field: None,
        });
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = inner.to_string();
        // serde_path_to_error's path already ends with an unknown field's name, but stops at
        // the object that misses a field.
        let path = if path == "." || path == "?" {
            String::new()
        } else {
            path
        };
        let field = match quoted_field(&message, "missing field `") {
            Some(name) if path.is_empty() => Some(name),
            Some(name) => Some(format!("{path}.{name}")),
            None if path.is_empty() => quoted_field(&message, "unknown field `"),
            None => Some(path),
        };
        let message = match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                format!("the request body is not valid JSON: {message}")
            }
            _ => message,
        };
        Error::BadRequest { message, field }
    })
}

fn quoted_field(message: &str, prefix: &str) -> Option<String> {
    let start = message.find(prefix)? + prefix.len();
    let end = message[start..].find('`')?;
    Some(message[start..start + end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetform_api::{FleetSpec, ZoneSpec};

    fn field_of<T: DeserializeOwned + std::fmt::Debug>(json: &str) -> Option<String> {
        match parse_json::<T>(json.as_bytes()) {
            Err(Error::BadRequest { field, .. }) => field,
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            field_of::<FleetSpec>(r#"{"name":"f","build_id":"b","launch_path":"x","bogus":1}"#),
            Some("bogus".into())
        );
        assert_eq!(
            field_of::<FleetSpec>(r#"{"name":"f","build_id":"b"}"#),
            Some("launch_path".into())
        );
        assert_eq!(
            field_of::<FleetSpec>(
                r#"{"name":"f","build_id":"b","launch_path":"x","storage_gb":"big"}"#
            ),
            Some("storage_gb".into())
        );
        assert_eq!(
            field_of::<ZoneSpec>(
                r#"{"fleet_id":"f","name":"z","initial_server_processes":1,"data_centers":[{"name":"a","location":"local","priority":-1}]}"#
            ),
            Some("data_centers[0].priority".into())
        );
        assert_eq!(
            field_of::<ZoneSpec>(
                r#"{"fleet_id":"f","name":"z","initial_server_processes":1,"data_centers":[{"name":"a","location":"local","colour":1}]}"#
            ),
            Some("data_centers[0].colour".into())
        );
        assert_eq!(field_of::<FleetSpec>("{not json"), None);
        assert_eq!(field_of::<FleetSpec>(""), None);
    }
}
