//! `fleetform_bare_metal_machine`: a machine in the bare-metal pool of a location
//! (DESIGN.md §2).
//!
//! The operator runs the machine and its agent; this resource registers it with fleetformd,
//! which hands back the agent's credential (`agent_token`, sensitive). Which zone uses the
//! machine now and when its agent last synced are live figures, left out of the state.

use std::collections::BTreeMap;

use async_trait::async_trait;
use fleetform_api::validate;
use fleetform_api::{BareMetalMachine, BareMetalMachineSpec, Client, ClientError};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{AttributeType, Schema};
use tf_provider::value::Value;
use tf_provider::AttributePath;

use crate::diag::Problems;
use crate::resource::{ApiResource, Report};
use crate::schema::{block, computed, defaulted, optional, required, schema, sensitive};
use crate::state::{changes, known, known_optional_u32, optional_number, or_default};

/// Labels as Terraform holds them: an element may be unknown (or null) in a configuration.
pub type Labels = BTreeMap<String, Value<String>>;

/// Terraform state of a `fleetform_bare_metal_machine`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BareMetalMachineState {
    pub id: Value<String>,
    pub name: Value<String>,
    pub location: Value<String>,
    pub address: Value<String>,
    pub cores: Value<i64>,
    pub memory_gb: Value<i64>,
    pub labels: Value<Labels>,
    pub agent_token: Value<String>,
    pub created_at: Value<String>,
}

impl BareMetalMachineState {
    /// State of a machine as the server knows it. The live figures (`machine_id`,
    /// `zone_id`, `last_heartbeat_at`) are left out: they change without any change of
    /// configuration and would make every plan show a difference.
    pub fn from_machine(machine: BareMetalMachine) -> Self {
        BareMetalMachineState {
            id: Value::Value(machine.id),
            name: Value::Value(machine.name),
            location: Value::Value(machine.location),
            address: Value::Value(machine.address),
            cores: optional_number(machine.cores),
            memory_gb: optional_number(machine.memory_gb),
            labels: Value::Value(
                machine
                    .labels
                    .into_iter()
                    .map(|(key, value)| (key, Value::Value(value)))
                    .collect(),
            ),
            agent_token: Value::Value(machine.agent_token),
            created_at: Value::Value(machine.created_at),
        }
    }

    /// The body to send, from a fully known planned state.
    pub fn spec(&self) -> Result<BareMetalMachineSpec, String> {
        let labels = match &self.labels {
            Value::Value(labels) => labels
                .iter()
                .map(|(key, value)| Ok((key.clone(), known(value, &format!("labels[{key:?}]"))?)))
                .collect::<Result<_, String>>()?,
            Value::Null => BTreeMap::new(),
            Value::Unknown => return Err("`labels` is still unknown at apply".into()),
        };
        Ok(BareMetalMachineSpec {
            name: known(&self.name, "name")?,
            location: known(&self.location, "location")?,
            address: known(&self.address, "address")?,
            cores: known_optional_u32(&self.cores, "cores")?,
            memory_gb: known_optional_u32(&self.memory_gb, "memory_gb")?,
            labels,
        })
    }

    /// The planned state: the configuration, with `labels` planned as an empty map when it
    /// is left out (the server knows no difference between none and an empty map, so the
    /// state never holds null: a plan after create or import is clean either way), and
    /// `id`, `created_at` and `agent_token` from `prior` (unknown on create). The agent's
    /// token never changes while the machine exists.
    fn plan(config: Self, prior: Option<&Self>) -> Self {
        let from_prior = |pick: fn(&Self) -> &Value<String>| {
            prior.map_or(Value::Unknown, |prior| pick(prior).clone())
        };
        BareMetalMachineState {
            id: from_prior(|prior| &prior.id),
            created_at: from_prior(|prior| &prior.created_at),
            agent_token: from_prior(|prior| &prior.agent_token),
            labels: or_default(config.labels, Labels::new()),
            ..config
        }
    }

    /// The state from the server's answer, with the agent token the plan or prior state
    /// holds (known once the machine exists) so an answer that left it out can't break
    /// the promise.
    fn from_answer(machine: BareMetalMachine, local: Option<&Self>) -> Self {
        let mut state = Self::from_machine(machine);
        if let Some(Value::Value(token)) = local.map(|local| &local.agent_token) {
            state.agent_token = Value::Value(token.clone());
        }
        state
    }
}

/// Plan-time checks of a machine's configuration: the server's rules on the known values.
pub fn validate_bare_metal_machine(config: &BareMetalMachineState) -> Problems {
    let mut problems = Problems::default();
    let path = AttributePath::new;
    if let Some(name) = config.name.as_ref_option() {
        problems.rule(path("name"), validate::identifier(name));
    }
    if let Some(location) = config.location.as_ref_option() {
        problems.rule(path("location"), validate::identifier(location));
    }
    if let Some(address) = config.address.as_ref_option() {
        problems.rule(path("address"), validate::address(address));
    }
    if let Some(cores) = config.cores.as_ref_option() {
        problems.rule(path("cores"), validate::at_least(*cores, 1));
    }
    if let Some(memory_gb) = config.memory_gb.as_ref_option() {
        problems.rule(path("memory_gb"), validate::at_least(*memory_gb, 1));
    }
    if let Some(labels) = config.labels.as_ref_option() {
        let mut known_labels = BTreeMap::new();
        for (key, value) in labels {
            match value {
                Value::Value(value) => {
                    known_labels.insert(key.clone(), value.clone());
                }
                Value::Null => problems.rule(
                    path("labels").key(key.clone()),
                    Err("a label's value must not be null".into()),
                ),
                Value::Unknown => {}
            }
        }
        // The label rule lives only inside the whole-body validator, so the labels are
        // checked in a body whose other fields are valid placeholders; only the label
        // errors (`labels.<key>`, mapped to `labels["<key>"]`) are kept.
        let labels_only = BareMetalMachineSpec {
            name: "labels".into(),
            location: "labels".into(),
            address: "labels".into(),
            cores: None,
            memory_gb: None,
            labels: known_labels,
        };
        problems.field_errors(
            validate::validate_bare_metal_spec(&labels_only)
                .into_iter()
                .filter(|error| error.field.starts_with("labels"))
                .collect(),
        );
    }
    problems
}

/// The `fleetform_bare_metal_machine` resource.
pub struct BareMetalMachineResource;

#[async_trait]
impl ApiResource for BareMetalMachineResource {
    type State = BareMetalMachineState;
    type Remote = BareMetalMachine;
    type Spec = BareMetalMachineSpec;
    const NAME: &'static str = "bare_metal_machine";
    const NOUN: &'static str = "bare-metal machine";

    fn schema() -> Schema {
        bare_metal_machine_schema()
    }

    fn validate(config: &BareMetalMachineState) -> Problems {
        validate_bare_metal_machine(config)
    }

    fn plan(
        config: BareMetalMachineState,
        prior: Option<&BareMetalMachineState>,
    ) -> BareMetalMachineState {
        BareMetalMachineState::plan(config, prior)
    }

    fn replaced_by(
        prior: &BareMetalMachineState,
        planned: &BareMetalMachineState,
    ) -> Vec<AttributePath> {
        // A machine at another site is another machine.
        if changes(&prior.location, &planned.location) {
            vec![AttributePath::new("location")]
        } else {
            Vec::new()
        }
    }

    fn id(state: &BareMetalMachineState) -> &Value<String> {
        &state.id
    }

    fn spec(planned: &BareMetalMachineState) -> Result<BareMetalMachineSpec, String> {
        planned.spec()
    }

    fn state(
        machine: BareMetalMachine,
        local: Option<&BareMetalMachineState>,
    ) -> BareMetalMachineState {
        BareMetalMachineState::from_answer(machine, local)
    }

    async fn get(client: &Client, id: &str) -> Result<BareMetalMachine, ClientError> {
        client.get_bare_metal_machine(id).await
    }

    async fn create(
        client: &Client,
        spec: &BareMetalMachineSpec,
    ) -> Result<BareMetalMachine, ClientError> {
        client.create_bare_metal_machine(spec).await
    }

    async fn update(
        client: &Client,
        id: &str,
        spec: &BareMetalMachineSpec,
    ) -> Result<BareMetalMachine, ClientError> {
        client.update_bare_metal_machine(id, spec).await
    }

    async fn delete(client: &Client, id: &str) -> Result<(), ClientError> {
        client.delete_bare_metal_machine(id).await
    }

    fn delete_refused(error: &ClientError) -> Option<Report> {
        Some(Report::new(
            "Bare-metal machine hosts active sessions",
            format!(
                "{error}\n\nfleetformd refuses to remove a machine from the pool while \
                 it hosts active sessions. Wait for them to end, or first lower \
                 `bare_metal_machines` of the zone that uses it (or destroy that \
                 zone), then destroy the machine. A zone that takes machines from \
                 this pool should `depends_on` them, so Terraform destroys the zone \
                 first."
            ),
        ))
    }
}

/// Schema of `fleetform_bare_metal_machine`.
pub fn bare_metal_machine_schema() -> Schema {
    use AttributeType::{Map, Number, String};
    schema(block(
        "A machine in the bare-metal pool of a location. Zones take machines from the pool \
         with a `bare_metal` data center; the machine's agent connects with `agent_token`.",
        vec![
            (
                "id",
                computed(String, "Identifier of the machine (`bm-…`)."),
            ),
            (
                "name",
                required(
                    String,
                    "Name of the machine, unique in fleetformd: letters, digits, `-` and `_`. \
                     Updatable.",
                ),
            ),
            (
                "location",
                required(
                    String,
                    "The bare-metal location (site) whose pool the machine joins: a location \
                     of fleetformd with the `bare_metal` driver. Changing it replaces the \
                     machine.",
                ),
            ),
            (
                "address",
                required(
                    String,
                    "Where players reach the machine's game ports: a host name or an IP \
                     address, without scheme or port. Updatable.",
                ),
            ),
            (
                "cores",
                optional(Number, "CPU cores of the machine (at least 1). Updatable."),
            ),
            (
                "memory_gb",
                optional(
                    Number,
                    "Memory of the machine in GB (at least 1). Updatable.",
                ),
            ),
            (
                "labels",
                defaulted(
                    Map(Box::new(String)),
                    "Free-form labels (keys 1–63 bytes, values up to 255 bytes). Updatable. \
                     Default: none (an empty map).",
                ),
            ),
            (
                "agent_token",
                sensitive(computed(
                    String,
                    "The credential the machine's agent runs with \
                     (`fleetform-agent --token`). It never changes while the machine is \
                     registered; destroying the machine revokes it.",
                )),
            ),
            (
                "created_at",
                computed(String, "When the machine was registered (RFC 3339, UTC)."),
            ),
        ],
        vec![],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid machine configuration, changed by the builder methods below.
    fn config() -> BareMetalMachineState {
        BareMetalMachineState {
            name: Value::Value("fra-bm-01".into()),
            location: Value::Value("fra-metal".into()),
            address: Value::Value("203.0.113.10".into()),
            ..Default::default()
        }
    }

    impl BareMetalMachineState {
        fn with(mut self, name: &str, value: Value<String>) -> Self {
            match name {
                "name" => self.name = value,
                "location" => self.location = value,
                "address" => self.address = value,
                other => panic!("no string attribute {other}"),
            }
            self
        }
        fn sized(mut self, cores: Value<i64>, memory_gb: Value<i64>) -> Self {
            self.cores = cores;
            self.memory_gb = memory_gb;
            self
        }
        fn label(mut self, key: &str, value: Value<String>) -> Self {
            let mut labels = self.labels.as_option().unwrap_or_default();
            labels.insert(key.into(), value);
            self.labels = Value::Value(labels);
            self
        }
    }

    /// The server's answer to a spec, as fleetformd would give it.
    fn answer(spec: BareMetalMachineSpec) -> BareMetalMachine {
        BareMetalMachine {
            id: "bm-1".into(),
            name: spec.name,
            location: spec.location,
            address: spec.address,
            cores: spec.cores,
            memory_gb: spec.memory_gb,
            labels: spec.labels,
            agent_token: "agt-secret".into(),
            created_at: "2024-01-01T00:00:00Z".into(),
            machine_id: Some("mch-7".into()),
            zone_id: Some("zone-3".into()),
            last_heartbeat_at: Some("2024-01-01T00:00:05Z".into()),
        }
    }

    /// Create, then plan the same configuration again against the state: nothing changes.
    fn second_plan_is_clean(config: BareMetalMachineState) {
        let planned = BareMetalMachineState::plan(config.clone(), None);
        assert!(planned.id.is_unknown() && planned.created_at.is_unknown());
        assert!(planned.agent_token.is_unknown());
        let spec = BareMetalMachineState {
            id: Value::Value("placeholder".into()),
            agent_token: Value::Value("placeholder".into()),
            created_at: Value::Value("placeholder".into()),
            ..planned.clone()
        }
        .spec()
        .unwrap();
        let state = BareMetalMachineState::from_machine(answer(spec));
        assert_eq!(
            BareMetalMachineState {
                id: Value::Unknown,
                agent_token: Value::Unknown,
                created_at: Value::Unknown,
                ..state.clone()
            },
            planned,
            "apply returns what the plan promised"
        );
        assert_eq!(BareMetalMachineState::plan(config, Some(&state)), state);
    }

    #[test]
    fn plans_stay_clean() {
        let cases: Vec<(&str, BareMetalMachineState)> = vec![
            ("only required attributes", config()),
            ("explicit empty labels", {
                let mut config = config();
                config.labels = Value::Value(Labels::new());
                config
            }),
            (
                "every attribute",
                config()
                    .sized(Value::Value(32), Value::Value(128))
                    .label("rack", Value::Value("r12".into()))
                    .label("team", Value::Value("ops".into())),
            ),
        ];
        for (case, config) in cases {
            println!("case: {case}");
            second_plan_is_clean(config);
        }
    }

    #[test]
    fn plan_fills_labels_and_keeps_computed() {
        let planned = BareMetalMachineState::plan(config(), None);
        assert_eq!(planned.labels, Value::Value(Labels::new()));
        assert_eq!(
            planned.cores,
            Value::Null,
            "optional numbers have no default"
        );
        assert_eq!(planned.memory_gb, Value::Null);

        let unknown_labels = BareMetalMachineState {
            labels: Value::Unknown,
            ..config()
        };
        assert!(BareMetalMachineState::plan(unknown_labels, None)
            .labels
            .is_unknown());
    }

    #[test]
    fn import_reads_everything_but_live_figures() {
        let state = BareMetalMachineState::from_machine(answer(
            config()
                .sized(Value::Value(8), Value::Null)
                .label("rack", Value::Value("r1".into()))
                .spec()
                .unwrap(),
        ));
        assert_eq!(state.id, Value::Value("bm-1".into()));
        assert_eq!(state.agent_token, Value::Value("agt-secret".into()));
        assert_eq!(state.cores, Value::Value(8));
        assert_eq!(state.memory_gb, Value::Null);
        // The imported state plans clean against the same configuration.
        let config = config()
            .sized(Value::Value(8), Value::Null)
            .label("rack", Value::Value("r1".into()));
        assert_eq!(BareMetalMachineState::plan(config, Some(&state)), state);
        // And a configuration that differs shows the difference (drift or a change).
        let moved = config_with_address("198.51.100.1");
        assert_ne!(
            BareMetalMachineState::plan(moved, Some(&state)).address,
            state.address
        );
    }

    fn config_with_address(address: &str) -> BareMetalMachineState {
        config()
            .with("address", Value::Value(address.into()))
            .sized(Value::Value(8), Value::Null)
            .label("rack", Value::Value("r1".into()))
    }

    #[test]
    fn update_keeps_the_agent_token() {
        let prior = BareMetalMachineState::from_machine(answer(config().spec().unwrap()));
        let planned = BareMetalMachineState::plan(config_with_address("10.0.0.2"), Some(&prior));
        assert_eq!(planned.agent_token, prior.agent_token);
        let mut answered = answer(planned.spec().unwrap());
        answered.agent_token = String::new();
        let state = BareMetalMachineState::from_answer(answered, Some(&planned));
        assert_eq!(state.agent_token, Value::Value("agt-secret".into()));
        assert_eq!(state.address, Value::Value("10.0.0.2".into()));
    }

    #[test]
    fn only_location_forces_replacement() {
        let prior = BareMetalMachineState::from_machine(answer(config().spec().unwrap()));
        let replaced = |config: BareMetalMachineState| {
            let planned = BareMetalMachineState::plan(config, Some(&prior));
            changes(&prior.location, &planned.location)
        };
        assert!(replaced(
            config().with("location", Value::Value("ams-metal".into()))
        ));
        assert!(replaced(config().with("location", Value::Unknown)));
        assert!(!replaced(
            config()
                .with("name", Value::Value("renamed".into()))
                .with("address", Value::Value("bm-01.example.com".into()))
                .sized(Value::Value(4), Value::Value(16))
                .label("rack", Value::Value("r2".into()))
        ));
    }

    #[test]
    fn validation_paths() {
        let cases: Vec<(&str, BareMetalMachineState, &[&str])> = vec![
            ("valid", config(), &[]),
            (
                "host name address",
                config().with("address", Value::Value("bm-01.fra.example.com".into())),
                &[],
            ),
            (
                "name with a space",
                config().with("name", Value::Value("bm 01".into())),
                &["name"],
            ),
            (
                "location with a slash",
                config().with("location", Value::Value("fra/metal".into())),
                &["location"],
            ),
            (
                "address with a scheme",
                config().with("address", Value::Value("http://203.0.113.10".into())),
                &["address"],
            ),
            (
                "address with a port",
                config().with("address", Value::Value("203.0.113.10:7777".into())),
                &["address"],
            ),
            (
                "zero cores and memory",
                config().sized(Value::Value(0), Value::Value(0)),
                &["cores", "memory_gb"],
            ),
            (
                "cores beyond u32",
                config().sized(Value::Value(i64::from(u32::MAX) + 1), Value::Null),
                &["cores"],
            ),
            (
                "one core",
                config().sized(Value::Value(1), Value::Value(1)),
                &[],
            ),
            (
                "empty label key",
                config().label("", Value::Value("x".into())),
                &["labels[\"\"]"],
            ),
            (
                "label value too long",
                config()
                    .label("ok", Value::Value("fine".into()))
                    .label("rack", Value::Value("x".repeat(256))),
                &["labels[\"rack\"]"],
            ),
            (
                "null label value",
                config().label("rack", Value::Null),
                &["labels[\"rack\"]"],
            ),
            (
                "unknown values are skipped",
                config()
                    .with("name", Value::Unknown)
                    .with("address", Value::Unknown)
                    .sized(Value::Unknown, Value::Unknown)
                    .label("rack", Value::Unknown),
                &[],
            ),
        ];
        for (case, config, paths) in cases {
            let found: Vec<String> = validate_bare_metal_machine(&config)
                .describe()
                .into_iter()
                .map(|(path, _)| path)
                .collect();
            assert_eq!(found, *paths, "{case}");
        }
    }

    #[test]
    fn label_problems_have_typed_key_steps() {
        use tf_provider::AttributePathStep::*;
        let problems = validate_bare_metal_machine(&config().label("a.b", Value::Null));
        assert_eq!(
            problems.0[0].path.steps,
            vec![Attribute("labels".into()), Key("a.b".into())]
        );
    }

    #[test]
    fn agent_token_is_sensitive_and_computed() {
        let schema = bare_metal_machine_schema();
        let token = &schema.block.attributes["agent_token"];
        assert!(token.sensitive);
        assert!(matches!(
            token.constraint,
            tf_provider::schema::AttributeConstraint::Computed
        ));
        let sensitive: Vec<&str> = schema
            .block
            .attributes
            .iter()
            .filter(|(_, attribute)| attribute.sensitive)
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(sensitive, ["agent_token"]);
    }
}
