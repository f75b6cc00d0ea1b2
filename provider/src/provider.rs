//! The provider block (`endpoint`, `token`): its schema, checks and the client it makes.

use fleetform_api::Client;
use serde::{Deserialize, Serialize};
use tf_provider::schema::{AttributeType, Schema};
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

use crate::schema::{block, optional, schema, sensitive};

/// Where fleetformd listens when neither the configuration nor the environment says.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7400";
/// Environment variable for `endpoint`.
pub const ENDPOINT_ENV: &str = "FLEETFORM_ENDPOINT";
/// Environment variable for `token`.
pub const TOKEN_ENV: &str = "FLEETFORM_TOKEN";

/// The provider block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderConfig {
    pub endpoint: Value<String>,
    pub token: Value<String>,
}

/// The endpoint and token to use: the configuration's, else the environment's, else the
/// defaults. `env` is `std::env::var` outside tests.
pub fn resolve(
    config: &ProviderConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(String, String), (AttributePath, String)> {
    let pick = |value: &Value<String>, name: &'static str, variable: &str| match value {
        Value::Value(text) => Ok(Some(text.clone())),
        Value::Null => Ok(env(variable).filter(|text| !text.is_empty())),
        Value::Unknown => Err((
            AttributePath::new(name),
            format!(
                "`{name}` depends on values known only after apply; the provider needs it \
                 to plan. Set it from a variable or the {variable} environment variable."
            ),
        )),
    };
    let endpoint = pick(&config.endpoint, "endpoint", ENDPOINT_ENV)?
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    check_endpoint(&endpoint).map_err(|why| (AttributePath::new("endpoint"), why))?;
    let token = pick(&config.token, "token", TOKEN_ENV)?.unwrap_or_default();
    Ok((endpoint, token))
}

fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err(format!(
            "{endpoint:?} is not an endpoint: use a URL such as \"{DEFAULT_ENDPOINT}\""
        )),
    }
}

/// Plan-time checks of the provider block.
pub fn validate(config: &ProviderConfig, diags: &mut Diagnostics) {
    if let Value::Value(endpoint) = &config.endpoint {
        if let Err(why) = check_endpoint(endpoint) {
            diags.error("Invalid endpoint", why, AttributePath::new("endpoint"));
        }
    }
}

/// The client the configuration asks for (`None` with the reason in `diags`).
pub fn configure(config: &ProviderConfig, diags: &mut Diagnostics) -> Option<Client> {
    let (endpoint, token) = match resolve(config, |name| std::env::var(name).ok()) {
        Ok(resolved) => resolved,
        Err((path, why)) => {
            diags.error(format!("Invalid provider {path}"), why, path);
            return None;
        }
    };
    match Client::new(&endpoint, &token) {
        Ok(client) => Some(client),
        Err(error) => {
            diags.root_error("Could not build the fleetformd client", error.to_string());
            None
        }
    }
}

/// Schema of the provider block.
pub fn provider_schema() -> Schema {
    schema(block(
        "The fleetform provider talks to one fleetformd over HTTP.",
        vec![
            (
                "endpoint",
                optional(
                    AttributeType::String,
                    "URL of fleetformd. Defaults to the `FLEETFORM_ENDPOINT` environment \
                     variable, else `http://127.0.0.1:7400`.",
                ),
            ),
            (
                "token",
                sensitive(optional(
                    AttributeType::String,
                    "Admin token, sent as `Authorization: Bearer <token>`. Defaults to the \
                     `FLEETFORM_TOKEN` environment variable.",
                )),
            ),
        ],
        vec![],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        }
    }

    #[test]
    fn configuration_then_environment_then_default() {
        let empty = ProviderConfig {
            endpoint: Value::Null,
            token: Value::Null,
        };
        assert_eq!(
            resolve(&empty, env(&[])).unwrap(),
            (DEFAULT_ENDPOINT.to_string(), String::new())
        );
        let from_env = env(&[(ENDPOINT_ENV, "http://10.0.0.1:7400"), (TOKEN_ENV, "t")]);
        assert_eq!(
            resolve(&empty, from_env).unwrap(),
            ("http://10.0.0.1:7400".to_string(), "t".to_string())
        );
        let configured = ProviderConfig {
            endpoint: Value::Value("https://ff.example".into()),
            token: Value::Value("c".into()),
        };
        let from_env = env(&[(ENDPOINT_ENV, "http://10.0.0.1:7400"), (TOKEN_ENV, "t")]);
        assert_eq!(
            resolve(&configured, from_env).unwrap(),
            ("https://ff.example".to_string(), "c".to_string())
        );
    }

    #[test]
    fn bad_or_unknown_endpoint_names_the_attribute() {
        let bad = ProviderConfig {
            endpoint: Value::Value("127.0.0.1:7400".into()),
            token: Value::Null,
        };
        assert_eq!(
            resolve(&bad, env(&[])).unwrap_err().0.to_string(),
            "endpoint"
        );
        let unknown = ProviderConfig {
            endpoint: Value::Null,
            token: Value::Unknown,
        };
        assert_eq!(
            resolve(&unknown, env(&[])).unwrap_err().0.to_string(),
            "token"
        );
    }
}
