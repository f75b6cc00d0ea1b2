//! The provider core: the registry of resource types and data sources, the provider
//! block, and every operation Terraform asks for, in terms that belong to neither plugin
//! protocol (values as msgpack or JSON bytes, `tf_provider` diagnostics and attribute
//! paths). The two adapters (`protocol/v5.rs`, `protocol/v6.rs`) only translate messages.
//!
//! Each [`ApiResource`] becomes a [`DynResource`] through [`Typed`]: the one place that
//! decodes values, decides create/update/delete from which side is null, and holds the
//! behaviour all resources share (see the trait's doc).

use std::collections::BTreeMap;
use std::marker::PhantomData;

use async_trait::async_trait;
use fleetform_api::Client;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tf_provider::schema::Schema;
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

use crate::client::SharedClient;
use crate::diag::{client_error, or_report};
use crate::provider::{self, ProviderConfig};
use crate::resource::{ApiDataSource, ApiResource, Operation};

/// msgpack of a null value.
const NULL: [u8; 1] = [0xc0];

/// A value as Terraform sends it: msgpack, or JSON where msgpack is empty. The default is
/// null (never an empty value, which Terraform reads as no value at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dynamic {
    pub msgpack: Vec<u8>,
    pub json: Vec<u8>,
}

impl Default for Dynamic {
    fn default() -> Self {
        Dynamic::null()
    }
}

impl Dynamic {
    /// The msgpack encoding of `value`.
    pub fn encode<T: Serialize>(value: &T) -> Result<Dynamic, String> {
        rmp_serde::to_vec_named(value)
            .map(Dynamic::msgpack)
            .map_err(|error| format!("cannot encode the value: {error}"))
    }

    pub fn msgpack(bytes: Vec<u8>) -> Dynamic {
        Dynamic {
            msgpack: bytes,
            json: Vec::new(),
        }
    }

    pub fn null() -> Dynamic {
        Dynamic::msgpack(NULL.to_vec())
    }

    pub fn is_null(&self) -> bool {
        if self.msgpack.is_empty() {
            self.json.is_empty() || self.json.trim_ascii() == b"null"
        } else {
            self.msgpack == NULL
        }
    }

    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, String> {
        let decoded = if self.msgpack.is_empty() {
            serde_json::from_slice(&self.json).map_err(|error| error.to_string())
        } else {
            rmp_serde::from_slice(&self.msgpack).map_err(|error| error.to_string())
        };
        decoded.map_err(|error| format!("cannot decode the value Terraform sent: {error}"))
    }
}

/// What an operation produced, with its diagnostics.
#[derive(Debug, Default)]
pub struct Outcome<T> {
    pub value: T,
    pub diags: Diagnostics,
}

impl<T> Outcome<T> {
    fn new(value: T, diags: Diagnostics) -> Self {
        Outcome { value, diags }
    }
}

/// A planned change.
#[derive(Debug, Default)]
pub struct Planned {
    pub state: Dynamic,
    pub requires_replace: Vec<AttributePath>,
}

/// One resource type, its values encoded.
#[async_trait]
pub trait DynResource: Send + Sync {
    fn schema(&self) -> Schema;
    fn validate(&self, config: &Dynamic) -> Diagnostics;
    /// The state in this version's layout, from JSON stored at `version`.
    fn upgrade(&self, version: i64, json: &[u8]) -> Outcome<Dynamic>;
    /// The current state; null when the server no longer has it.
    async fn read(&self, client: &SharedClient, state: &Dynamic) -> Outcome<Dynamic>;
    fn plan(&self, prior: &Dynamic, proposed: &Dynamic, config: &Dynamic) -> Outcome<Planned>;
    async fn apply(
        &self,
        client: &SharedClient,
        prior: &Dynamic,
        planned: &Dynamic,
    ) -> Outcome<Dynamic>;
    /// The state of an existing object; null when it cannot be imported.
    async fn import(&self, client: &SharedClient, id: &str) -> Outcome<Dynamic>;
}

/// One data source, its values encoded.
#[async_trait]
pub trait DynDataSource: Send + Sync {
    fn schema(&self) -> Schema;
    fn validate(&self, config: &Dynamic) -> Diagnostics;
    async fn read(&self, client: &SharedClient, config: &Dynamic) -> Outcome<Dynamic>;
}

/// An [`ApiResource`] or [`ApiDataSource`] as a [`DynResource`] or [`DynDataSource`].
pub struct Typed<R>(PhantomData<fn() -> R>);

impl<R> Default for Typed<R> {
    fn default() -> Self {
        Typed(PhantomData)
    }
}

fn decode<T: DeserializeOwned>(value: &Dynamic, diags: &mut Diagnostics) -> Option<T> {
    match value.decode() {
        Ok(value) => Some(value),
        Err(message) => {
            diags.root_error("Provider error: unreadable value", message);
            None
        }
    }
}

fn encode<T: Serialize>(value: &T, diags: &mut Diagnostics) -> Dynamic {
    match Dynamic::encode(value) {
        Ok(value) => value,
        Err(message) => {
            diags.root_error("Provider error: unwritable value", message);
            Dynamic::null()
        }
    }
}

impl<R: ApiResource> Typed<R> {
    fn id(diags: &mut Diagnostics, state: &R::State) -> Option<String> {
        or_report(diags, crate::state::known(R::id(state), "id"))
    }

    async fn create(client: &Client, diags: &mut Diagnostics, planned: R::State) -> Dynamic {
        let Some(spec) = or_report(diags, R::spec(&planned)) else {
            return Dynamic::null();
        };
        let state = match R::create(client, &spec).await {
            Ok(remote) => R::state(remote, Some(&planned)),
            Err(error) => {
                client_error(diags, &format!("Could not create {}", R::NOUN), &error);
                return Dynamic::null();
            }
        };
        // Created: whatever the wait says, the state is kept (tainted on error).
        if let Value::Value(id) = R::id(&state) {
            if let Err(report) = R::settle(client, Operation::Create, id, &state).await {
                report.add_to(diags);
            }
        }
        let encoded = encode(&state, diags);
        if encoded.is_null() {
            // Not recordable (a provider bug): say which object exists, so it can be
            // imported or removed, rather than losing it silently.
            diags.root_error(
                format!("Provider error: a created {} is not in the state", R::NOUN),
                format!(
                    "fleetformd created {} {:?}, but its state could not be written. Import \
                     it (`terraform import`) or delete it.",
                    R::NOUN,
                    R::id(&state)
                ),
            );
        }
        encoded
    }

    async fn update(
        client: &Client,
        diags: &mut Diagnostics,
        prior: R::State,
        planned: R::State,
    ) -> Option<R::State> {
        let spec = or_report(diags, R::spec(&planned))?;
        let id = Self::id(diags, &prior)?;
        // A change of what the provider alone keeps: nothing to send, nothing to wait for.
        if R::spec(&prior).as_ref() == Ok(&spec) {
            return Some(planned);
        }
        let state = match R::update(client, &id, &spec).await {
            Ok(remote) => R::state(remote, Some(&planned)),
            Err(error) => {
                client_error(diags, &format!("Could not update {}", R::NOUN), &error);
                return None;
            }
        };
        if let Err(report) = R::settle(client, Operation::Update, &id, &state).await {
            report.add_to(diags);
        }
        Some(state)
    }

    /// The server's complaints about a body, on the blocks of the plan they are about.
    fn located(planned: &R::State, diags: Diagnostics) -> Diagnostics {
        let Diagnostics { errors, warnings } = diags;
        let locate = |diag: tf_provider::Diagnostic| {
            let (attribute, detail) = R::locate(planned, diag.attribute, diag.detail.into_owned());
            tf_provider::Diagnostic {
                attribute,
                detail: detail.into(),
                ..diag
            }
        };
        Diagnostics {
            errors: errors.into_iter().map(locate).collect(),
            warnings: warnings.into_iter().map(locate).collect(),
        }
    }

    /// `true` when the resource is gone.
    async fn delete(client: &Client, diags: &mut Diagnostics, prior: &R::State) -> bool {
        let Some(id) = Self::id(diags, prior) else {
            return false;
        };
        match R::delete(client, &id).await {
            Ok(()) => {}
            Err(error) if error.is_not_found() => return true,
            Err(error) => {
                let refused = (error.status().map(|status| status.as_u16()) == Some(409))
                    .then(|| R::delete_refused(&error))
                    .flatten();
                match refused {
                    Some(report) => report.add_to(diags),
                    None => client_error(diags, &format!("Could not delete {}", R::NOUN), &error),
                }
                return false;
            }
        }
        match R::settle(client, Operation::Delete, &id, prior).await {
            Ok(()) => true,
            Err(report) => {
                report.add_to(diags);
                false
            }
        }
    }
}

#[async_trait]
impl<R: ApiResource> DynResource for Typed<R> {
    fn schema(&self) -> Schema {
        let mut schema = R::schema();
        schema.version = R::VERSION;
        schema
    }

    fn validate(&self, config: &Dynamic) -> Diagnostics {
        let mut diags = Diagnostics::default();
        if let Some(config) = decode::<R::State>(config, &mut diags) {
            R::validate(&config).report(&mut diags);
        }
        diags
    }

    fn upgrade(&self, version: i64, json: &[u8]) -> Outcome<Dynamic> {
        let mut diags = Diagnostics::default();
        let upgraded = serde_json::from_slice(json)
            .map_err(|error| format!("the stored state is not JSON: {error}"))
            .and_then(|stored| R::upgrade(version, stored))
            .and_then(|state| {
                serde_json::from_value::<R::State>(state)
                    .map_err(|error| format!("the stored state does not fit: {error}"))
            });
        match upgraded {
            Ok(state) => {
                let value = encode(&state, &mut diags);
                Outcome::new(value, diags)
            }
            Err(why) => {
                diags.root_error(format!("Cannot upgrade the state of a {}", R::NOUN), why);
                Outcome::new(Dynamic::null(), diags)
            }
        }
    }

    async fn read(&self, client: &SharedClient, state: &Dynamic) -> Outcome<Dynamic> {
        let mut diags = Diagnostics::default();
        let Some(prior) = decode::<R::State>(state, &mut diags) else {
            return Outcome::new(state.clone(), diags);
        };
        let Some(client) = client.get(&mut diags) else {
            return Outcome::new(state.clone(), diags);
        };
        let Value::Value(id) = R::id(&prior) else {
            // Never created (a state without an id): nothing to read.
            return Outcome::new(Dynamic::null(), diags);
        };
        let value = match R::get(&client, id).await {
            Ok(remote) => encode(&R::state(remote, Some(&prior)), &mut diags),
            // Removed outside Terraform: forget it, so the next plan creates it again.
            Err(error) if error.is_not_found() => Dynamic::null(),
            Err(error) => {
                client_error(&mut diags, &format!("Could not read {}", R::NOUN), &error);
                state.clone()
            }
        };
        Outcome::new(value, diags)
    }

    fn plan(&self, prior: &Dynamic, proposed: &Dynamic, config: &Dynamic) -> Outcome<Planned> {
        let mut diags = Diagnostics::default();
        if proposed.is_null() {
            // Destroy: the plan is null.
            return Outcome::new(
                Planned {
                    state: Dynamic::null(),
                    requires_replace: Vec::new(),
                },
                diags,
            );
        }
        let Some(config) = decode::<R::State>(config, &mut diags) else {
            return Outcome::new(Planned::default(), diags);
        };
        let planned = if prior.is_null() {
            Planned {
                state: encode(&R::plan(config, None), &mut diags),
                requires_replace: Vec::new(),
            }
        } else {
            let Some(prior) = decode::<R::State>(prior, &mut diags) else {
                return Outcome::new(Planned::default(), diags);
            };
            let planned = R::plan(config, Some(&prior));
            Planned {
                requires_replace: R::replaced_by(&prior, &planned),
                state: encode(&planned, &mut diags),
            }
        };
        Outcome::new(planned, diags)
    }

    async fn apply(
        &self,
        client: &SharedClient,
        prior: &Dynamic,
        planned: &Dynamic,
    ) -> Outcome<Dynamic> {
        let mut diags = Diagnostics::default();
        let Some(client) = client.get(&mut diags) else {
            return Outcome::new(prior.clone(), diags);
        };
        if planned.is_null() {
            let Some(prior_state) = decode::<R::State>(prior, &mut diags) else {
                return Outcome::new(prior.clone(), diags);
            };
            let gone = Self::delete(&client, &mut diags, &prior_state).await;
            let value = if gone { Dynamic::null() } else { prior.clone() };
            return Outcome::new(value, diags);
        }
        let Some(planned) = decode::<R::State>(planned, &mut diags) else {
            return Outcome::new(prior.clone(), diags);
        };
        let config = planned.clone();
        let value = if prior.is_null() {
            Self::create(&client, &mut diags, planned).await
        } else {
            let Some(prior_state) = decode::<R::State>(prior, &mut diags) else {
                return Outcome::new(prior.clone(), diags);
            };
            match Self::update(&client, &mut diags, prior_state, planned).await {
                Some(state) => encode(&state, &mut diags),
                // Not updated: the prior state stays what Terraform knows.
                None => prior.clone(),
            }
        };
        Outcome::new(value, Self::located(&config, diags))
    }

    async fn import(&self, client: &SharedClient, id: &str) -> Outcome<Dynamic> {
        let mut diags = Diagnostics::default();
        let Some(client) = client.get(&mut diags) else {
            return Outcome::new(Dynamic::null(), diags);
        };
        let value = match R::get(&client, id).await {
            Ok(remote) => encode(&R::state(remote, None), &mut diags),
            Err(error) => {
                client_error(
                    &mut diags,
                    &format!("Could not import {} {id:?}", R::NOUN),
                    &error,
                );
                Dynamic::null()
            }
        };
        Outcome::new(value, diags)
    }
}

#[async_trait]
impl<D: ApiDataSource> DynDataSource for Typed<D> {
    fn schema(&self) -> Schema {
        D::schema()
    }

    fn validate(&self, config: &Dynamic) -> Diagnostics {
        let mut diags = Diagnostics::default();
        if let Some(config) = decode::<D::State>(config, &mut diags) {
            D::validate(&config).report(&mut diags);
        }
        diags
    }

    async fn read(&self, client: &SharedClient, config: &Dynamic) -> Outcome<Dynamic> {
        let mut diags = Diagnostics::default();
        let Some(config) = decode::<D::State>(config, &mut diags) else {
            return Outcome::new(Dynamic::null(), diags);
        };
        let Some(client) = client.get(&mut diags) else {
            return Outcome::new(Dynamic::null(), diags);
        };
        let value = match D::read(&client, config, &mut diags).await {
            Some(state) => encode(&state, &mut diags),
            None => Dynamic::null(),
        };
        Outcome::new(value, diags)
    }
}

/// The registry: every resource type and data source by full type name.
pub struct Registry {
    pub resources: BTreeMap<String, Box<dyn DynResource>>,
    pub data_sources: BTreeMap<String, Box<dyn DynDataSource>>,
}

impl Registry {
    fn new() -> Self {
        Registry {
            resources: BTreeMap::new(),
            data_sources: BTreeMap::new(),
        }
    }

    fn resource<R: ApiResource>(mut self) -> Self {
        let name = format!("{}_{}", crate::PROVIDER_NAME, R::NAME);
        self.resources.insert(name, Box::new(Typed::<R>::default()));
        self
    }

    fn data_source<D: ApiDataSource>(mut self) -> Self {
        let name = format!("{}_{}", crate::PROVIDER_NAME, D::NAME);
        self.data_sources
            .insert(name, Box::new(Typed::<D>::default()));
        self
    }

    /// Everything the provider offers.
    pub fn all() -> Self {
        use crate::data_sources::{fleet::FleetDataSource, locations, zone_status};
        use crate::resources::{bare_metal_machine, build, fleet, zone};
        Registry::new()
            .resource::<build::BuildResource>()
            .resource::<fleet::FleetResource>()
            .resource::<zone::ZoneResource>()
            .resource::<bare_metal_machine::BareMetalMachineResource>()
            .data_source::<zone_status::ZoneStatusDataSource>()
            .data_source::<locations::LocationsDataSource>()
            .data_source::<FleetDataSource>()
    }
}

/// The provider as both adapters serve it.
pub struct Core {
    pub registry: Registry,
    client: SharedClient,
}

impl Default for Core {
    fn default() -> Self {
        Core::new()
    }
}

fn unknown_type(kind: &str, name: &str) -> Diagnostics {
    let mut diags = Diagnostics::default();
    diags.root_error(
        format!("Unknown {kind}"),
        format!("This provider has no {kind} {name:?}."),
    );
    diags
}

impl Core {
    pub fn new() -> Self {
        Core {
            registry: Registry::all(),
            client: SharedClient::default(),
        }
    }

    pub fn provider_schema(&self) -> Schema {
        provider::provider_schema()
    }

    pub fn validate_provider(&self, config: &Dynamic) -> Diagnostics {
        let mut diags = Diagnostics::default();
        if let Some(config) = decode::<ProviderConfig>(config, &mut diags) {
            provider::validate(&config, &mut diags);
        }
        diags
    }

    pub fn configure(&self, config: &Dynamic) -> Diagnostics {
        let mut diags = Diagnostics::default();
        if let Some(config) = decode::<ProviderConfig>(config, &mut diags) {
            if let Some(client) = provider::configure(&config, &mut diags) {
                self.client.set(client);
            }
        }
        diags
    }

    fn resource(&self, name: &str) -> Result<&dyn DynResource, Diagnostics> {
        self.registry
            .resources
            .get(name)
            .map(|resource| resource.as_ref())
            .ok_or_else(|| unknown_type("resource type", name))
    }

    fn data_source(&self, name: &str) -> Result<&dyn DynDataSource, Diagnostics> {
        self.registry
            .data_sources
            .get(name)
            .map(|data| data.as_ref())
            .ok_or_else(|| unknown_type("data source", name))
    }

    pub fn validate_resource(&self, name: &str, config: &Dynamic) -> Diagnostics {
        match self.resource(name) {
            Ok(resource) => resource.validate(config),
            Err(diags) => diags,
        }
    }

    pub fn validate_data_source(&self, name: &str, config: &Dynamic) -> Diagnostics {
        match self.data_source(name) {
            Ok(data) => data.validate(config),
            Err(diags) => diags,
        }
    }

    pub fn upgrade(&self, name: &str, version: i64, json: &[u8]) -> Outcome<Dynamic> {
        match self.resource(name) {
            Ok(resource) => resource.upgrade(version, json),
            Err(diags) => Outcome::new(Dynamic::null(), diags),
        }
    }

    pub async fn read(&self, name: &str, state: &Dynamic) -> Outcome<Dynamic> {
        match self.resource(name) {
            Ok(resource) => resource.read(&self.client, state).await,
            Err(diags) => Outcome::new(state.clone(), diags),
        }
    }

    pub fn plan(
        &self,
        name: &str,
        prior: &Dynamic,
        proposed: &Dynamic,
        config: &Dynamic,
    ) -> Outcome<Planned> {
        match self.resource(name) {
            Ok(resource) => resource.plan(prior, proposed, config),
            Err(diags) => Outcome::new(Planned::default(), diags),
        }
    }

    pub async fn apply(&self, name: &str, prior: &Dynamic, planned: &Dynamic) -> Outcome<Dynamic> {
        match self.resource(name) {
            Ok(resource) => resource.apply(&self.client, prior, planned).await,
            Err(diags) => Outcome::new(prior.clone(), diags),
        }
    }

    pub async fn import(&self, name: &str, id: &str) -> Outcome<Dynamic> {
        match self.resource(name) {
            Ok(resource) => resource.import(&self.client, id).await,
            Err(diags) => Outcome::new(Dynamic::null(), diags),
        }
    }

    pub async fn read_data_source(&self, name: &str, config: &Dynamic) -> Outcome<Dynamic> {
        match self.data_source(name) {
            Ok(data) => data.read(&self.client, config).await,
            Err(diags) => Outcome::new(Dynamic::null(), diags),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::build::BuildState;

    /// A core configured against a closed loopback port: every call to fleetformd fails
    /// (connection refused), which is what these tests need.
    fn unreachable() -> Core {
        let core = Core::new();
        let config = Dynamic::encode(&ProviderConfig {
            endpoint: Value::Value("http://127.0.0.1:1".into()),
            token: Value::Value("t".into()),
        })
        .unwrap();
        assert!(core.configure(&config).errors.is_empty());
        core
    }

    fn build(id: Value<String>) -> Dynamic {
        Dynamic::encode(&BuildState {
            id,
            name: Value::Value("b".into()),
            version: Value::Null,
            operating_system: Value::Value("linux".into()),
            source: Value::Value("file:///opt/b".into()),
            sha256: Value::Null,
            created_at: Value::Value("2026-01-01T00:00:00Z".into()),
        })
        .unwrap()
    }

    const BUILD: &str = "fleetform_build";

    /// What Terraform keeps when a call fails: an update or a delete keeps the prior state
    /// (returning null would make Terraform forget an object that still exists), a create
    /// records nothing, a read keeps the state it had. Each with an error.
    #[tokio::test]
    async fn a_failed_call_keeps_what_exists() {
        let core = unreachable();
        let prior = build(Value::Value("bld-1".into()));
        let changed = {
            let mut state: BuildState = prior.decode().unwrap();
            state.name = Value::Value("renamed".into());
            Dynamic::encode(&state).unwrap()
        };
        let update = core.apply(BUILD, &prior, &changed).await;
        assert_eq!(update.value, prior, "a failed update keeps the prior state");
        assert!(!update.diags.errors.is_empty());

        let delete = core.apply(BUILD, &prior, &Dynamic::null()).await;
        assert_eq!(delete.value, prior, "a failed delete keeps the prior state");
        assert!(!delete.diags.errors.is_empty());

        let create = core.apply(BUILD, &Dynamic::null(), &changed).await;
        assert!(create.value.is_null(), "a failed create records nothing");
        assert!(!create.diags.errors.is_empty());

        let read = core.read(BUILD, &prior).await;
        assert_eq!(read.value, prior, "a failed read keeps the state");
        assert!(!read.diags.errors.is_empty());
    }

    /// Plans are decided by which side is null: create (no prior), destroy (no proposal),
    /// update (both), with the resource's replacement rules.
    #[test]
    fn plans_follow_which_side_is_null() {
        let core = Core::new();
        let config = build(Value::Null);
        let create = core.plan(BUILD, &Dynamic::null(), &config, &config);
        let planned: BuildState = create.value.state.decode().unwrap();
        assert!(planned.id.is_unknown() && create.value.requires_replace.is_empty());

        let prior = build(Value::Value("bld-1".into()));
        let destroy = core.plan(BUILD, &prior, &Dynamic::null(), &Dynamic::null());
        assert!(destroy.value.state.is_null());

        let moved = {
            let mut state: BuildState = config.decode().unwrap();
            state.source = Value::Value("file:///opt/elsewhere".into());
            Dynamic::encode(&state).unwrap()
        };
        let update = core.plan(BUILD, &prior, &moved, &moved);
        let replace: Vec<String> = update
            .value
            .requires_replace
            .iter()
            .map(|path| path.to_string())
            .collect();
        assert_eq!(replace, ["source"]);

        let unknown = core.plan("fleetform_nothing", &prior, &moved, &moved);
        assert!(!unknown.diags.errors.is_empty());
        assert!(
            unknown.value.state.is_null(),
            "an error path sends null, never empty"
        );
    }

    /// An unreadable value is an error, never a panic.
    #[test]
    fn garbage_is_an_error() {
        let core = Core::new();
        let garbage = Dynamic::msgpack(vec![0x93, 0x01]);
        assert!(!core.validate_resource(BUILD, &garbage).errors.is_empty());
        let plan = core.plan(BUILD, &Dynamic::null(), &garbage, &garbage);
        assert!(!plan.diags.errors.is_empty());
        let upgrade = core.upgrade(BUILD, 0, b"not json");
        assert!(!upgrade.diags.errors.is_empty() && upgrade.value.is_null());
    }
}
