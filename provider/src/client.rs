//! The `fleetform_api::Client` that `configure` builds and every resource and data source
//! uses. Terraform configures a provider before it reads, plans with server data or
//! applies; a call before that is reported, never a panic.

use std::sync::{Arc, RwLock};

use fleetform_api::Client;
use tf_provider::Diagnostics;

/// Shared slot for the configured client, handed to each resource at construction.
#[derive(Debug, Clone, Default)]
pub struct SharedClient(Arc<RwLock<Option<Client>>>);

impl SharedClient {
    /// Stores the client built by `configure`.
    pub fn set(&self, client: Client) {
        *self.0.write().unwrap_or_else(|poison| poison.into_inner()) = Some(client);
    }

    /// The configured client, or an error diagnostic when `configure` has not run.
    pub fn get(&self, diags: &mut Diagnostics) -> Option<Client> {
        let client = self
            .0
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        if client.is_none() {
            diags.root_error(
                "Provider not configured",
                "The fleetform provider was used before it was configured, or its \
                 configuration failed; see the earlier error about the provider block.",
            );
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unconfigured_use_is_a_clear_error() {
        let shared = SharedClient::default();
        let mut diags = Diagnostics::default();
        assert!(shared.get(&mut diags).is_none());
        assert_eq!(diags.errors[0].summary, "Provider not configured");

        shared.set(Client::new("http://127.0.0.1:1", "t").unwrap());
        let mut diags = Diagnostics::default();
        assert!(shared.get(&mut diags).is_some());
        assert!(diags.errors.is_empty());
    }
}
