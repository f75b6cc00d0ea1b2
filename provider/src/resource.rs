//! The generic resource layer: what a resource type is to the provider (its state, schema,
//! plan rules and the four API calls behind it), written once for the CRUD/import shape
//! every fleetform resource shares. Each resource module implements [`ApiResource`] with
//! plain functions (validation, planning and the state-from-answer conversion are pure);
//! `core.rs` turns any implementation into what the protocol adapters call.

use std::fmt::Debug;

use async_trait::async_trait;
use fleetform_api::{Client, ClientError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value as Json;
use tf_provider::schema::Schema;
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

use crate::diag::Problems;
pub use crate::timeouts::Operation;

/// What a state, configuration or plan of one type is made of.
pub trait StateShape:
    Serialize + DeserializeOwned + Clone + PartialEq + Default + Debug + Send + Sync + 'static
{
}

impl<T> StateShape for T where
    T: Serialize + DeserializeOwned + Clone + PartialEq + Default + Debug + Send + Sync + 'static
{
}

/// An error to report: summary, detail and the attribute it is about (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub summary: String,
    pub detail: String,
    pub path: Option<AttributePath>,
}

impl Report {
    pub fn new(summary: impl Into<String>, detail: impl Into<String>) -> Self {
        Report {
            summary: summary.into(),
            detail: detail.into(),
            path: None,
        }
    }

    pub fn on(mut self, path: AttributePath) -> Self {
        self.path = Some(path);
        self
    }

    pub fn add_to(self, diags: &mut Diagnostics) {
        match self.path {
            Some(path) => diags.error(self.summary, self.detail, path),
            None => diags.root_error(self.summary, self.detail),
        }
    }
}

/// One resource type backed by one fleetformd collection.
///
/// The shared behaviour (in `core.rs`): read forgets a resource the server no longer has
/// (404), so the next plan creates it again; delete of a missing one succeeds; an update
/// whose body equals the prior one's sends nothing; a failed update or delete keeps the
/// prior state; a create whose `settle` fails keeps the new state with the error, so
/// Terraform taints it instead of losing it.
#[async_trait]
pub trait ApiResource: Send + Sync + 'static {
    /// The Terraform state, and the configuration and plan in the same shape.
    type State: StateShape;
    /// What fleetformd answers about one.
    type Remote: Send + 'static;
    /// The body of create and update.
    type Spec: PartialEq + Send + Sync + 'static;

    /// Type name without the provider's prefix (`build` for `fleetform_build`).
    const NAME: &'static str;
    /// The resource in messages ("bare-metal machine").
    const NOUN: &'static str;
    /// Version of the state's layout; [`ApiResource::upgrade`] brings older ones here.
    const VERSION: i64 = 0;

    fn schema() -> Schema;

    /// Plan-time checks of a configuration (no I/O; unknown values are skipped).
    fn validate(config: &Self::State) -> Problems;

    /// The planned state from the configuration and, on update, the prior state.
    fn plan(config: Self::State, prior: Option<&Self::State>) -> Self::State;

    /// The attributes whose planned change replaces the resource.
    fn replaced_by(prior: &Self::State, planned: &Self::State) -> Vec<AttributePath>;

    /// Where a problem the server reports on `path` (numbering blocks as the API does) is
    /// in the configuration `config`, with its message. The default: where it says.
    fn locate(
        _config: &Self::State,
        path: AttributePath,
        message: String,
    ) -> (AttributePath, String) {
        (path, message)
    }

    /// The server's identifier.
    fn id(state: &Self::State) -> &Value<String>;

    /// The body to send, from a fully known plan (an error is a provider bug).
    fn spec(planned: &Self::State) -> Result<Self::Spec, String>;

    /// The state from the server's answer. `local` is what the provider alone keeps (the
    /// prior state on read, the plan on apply; `None` on import).
    fn state(remote: Self::Remote, local: Option<&Self::State>) -> Self::State;

    async fn get(client: &Client, id: &str) -> Result<Self::Remote, ClientError>;
    async fn create(client: &Client, spec: &Self::Spec) -> Result<Self::Remote, ClientError>;
    async fn update(
        client: &Client,
        id: &str,
        spec: &Self::Spec,
    ) -> Result<Self::Remote, ClientError>;
    async fn delete(client: &Client, id: &str) -> Result<(), ClientError>;

    /// What to say when the server refuses a delete with 409 (`None`: the generic error).
    fn delete_refused(_error: &ClientError) -> Option<Report> {
        None
    }

    /// Waits, after a successful call, until the change has taken effect (a zone's
    /// capacity, a zone's removal). The default waits for nothing.
    async fn settle(
        _client: &Client,
        _operation: Operation,
        _id: &str,
        _state: &Self::State,
    ) -> Result<(), Report> {
        Ok(())
    }

    /// A state stored at `version` (as Terraform keeps it, JSON) in this version's layout.
    /// The default accepts only the current version.
    fn upgrade(version: i64, state: Json) -> Result<Json, String> {
        if version == Self::VERSION {
            Ok(state)
        } else {
            Err(format!(
                "the state of this {} is at schema version {version}, this provider knows \
                 version {} and none before it",
                Self::NOUN,
                Self::VERSION
            ))
        }
    }
}

/// One data source: a read of fleetformd from a configuration.
#[async_trait]
pub trait ApiDataSource: Send + Sync + 'static {
    type State: StateShape;

    /// Type name without the provider's prefix.
    const NAME: &'static str;

    fn schema() -> Schema;

    /// Plan-time checks of a configuration. The default accepts any.
    fn validate(_config: &Self::State) -> Problems {
        Problems::default()
    }

    /// The state read for `config`; `None` with an error in `diags` when it cannot be.
    async fn read(
        client: &Client,
        config: Self::State,
        diags: &mut Diagnostics,
    ) -> Option<Self::State>;
}
