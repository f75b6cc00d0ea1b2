//! Wire types of fleetformd's HTTP API (`/v1`) and a typed client for them.
//!
//! This crate is the API boundary between the provider, the agent and the backend: every
//! request and response body crosses the wire as one of these types. Request bodies reject
//! unknown fields (`deny_unknown_fields`) so a misspelt attribute is an error naming the
//! field, never silently ignored; response bodies accept unknown fields so an older client
//! keeps working against a newer server.

#[macro_use]
mod macros {
    /// Declares a string-valued wire enum with `as_str`, `Display`, `FromStr` and `ALL`.
    macro_rules! wire_enum {
        ($(#[$meta:meta])* $name:ident $(default $default:ident)? { $($variant:ident => $text:literal),+ $(,)? }) => {
            $(#[$meta])*
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
            pub enum $name {
                $(#[serde(rename = $text)] $variant),+
            }

            impl $name {
                /// Every value, in declaration order.
                pub const ALL: &'static [$name] = &[$($name::$variant),+];

                /// The value as it is written on the wire and in `.tf` files.
                pub fn as_str(self) -> &'static str {
                    match self { $($name::$variant => $text),+ }
                }
            }

            $(
                impl Default for $name {
                    fn default() -> Self {
                        $name::$default
                    }
                }
            )?

            impl std::fmt::Display for $name {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str(self.as_str())
                }
            }

            impl std::str::FromStr for $name {
                type Err = String;
                fn from_str(text: &str) -> Result<Self, String> {
                    match text {
                        $($text => Ok($name::$variant),)+
                        other => Err(format!(
                            "unknown value {other:?}, expected one of {}",
                            [$($text),+].join(", ")
                        )),
                    }
                }
            }
        };
    }
}

pub mod agent;
pub mod client;
pub mod model;
pub mod sdk;
pub mod validate;

pub use client::{Client, ClientError};
pub use model::*;

/// The error body every non-2xx response carries: `{ "error": { "code", "message", "field"? } }`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, for a person (`message`) and a program (`code`, `field`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_field`, `not_found`, `no_capacity`.
    pub code: String,
    pub message: String,
    /// The JSON path of the offending field in the request body, when one is to blame
    /// (`data_centers[1].name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
