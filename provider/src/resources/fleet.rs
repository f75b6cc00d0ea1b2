//! `fleetform_fleet`: how server processes of a build run (DESIGN.md §2).

use async_trait::async_trait;
use fleetform_api::validate;
use fleetform_api::{defaults, Client, ClientError, Fleet, FleetSpec, SessionMode, UpdateMode};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{AttributeType, Schema};
use tf_provider::value::Value;
use tf_provider::AttributePath;

use crate::diag::Problems;
use crate::resource::{ApiResource, Report};
use crate::schema::{block, computed, defaulted, optional, required, schema};
use crate::state::{changes, known, known_optional, known_u32, number, or_default};

/// Terraform state of a `fleetform_fleet`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FleetState {
    pub id: Value<String>,
    pub name: Value<String>,
    pub description: Value<String>,
    pub build_id: Value<String>,
    pub update_mode: Value<String>,
    pub launch_path: Value<String>,
    pub launch_parameters: Value<String>,
    pub process_restart_hours: Value<i64>,
    pub session_mode: Value<String>,
    pub sessions_per_process: Value<i64>,
    pub storage_gb: Value<i64>,
    pub force_destroy: Value<bool>,
}

impl FleetState {
    /// State of a fleet as the server knows it (its live status is left out).
    pub fn from_fleet(fleet: Fleet) -> Self {
        FleetState {
            id: Value::Value(fleet.id),
            name: Value::Value(fleet.name),
            description: fleet.description.into(),
            build_id: Value::Value(fleet.build_id),
            update_mode: Value::Value(fleet.update_mode.to_string()),
            launch_path: Value::Value(fleet.launch_path),
            launch_parameters: fleet.launch_parameters.into(),
            process_restart_hours: number(fleet.process_restart_hours),
            session_mode: Value::Value(fleet.session_mode.to_string()),
            sessions_per_process: number(fleet.sessions_per_process),
            storage_gb: number(fleet.storage_gb),
            force_destroy: Value::Value(fleet.force_destroy),
        }
    }

    /// The body to send, from a fully known planned state.
    pub fn spec(&self) -> Result<FleetSpec, String> {
        Ok(FleetSpec {
            name: known(&self.name, "name")?,
            description: known_optional(&self.description, "description")?,
            build_id: known(&self.build_id, "build_id")?,
            update_mode: known(&self.update_mode, "update_mode")?.parse()?,
            launch_path: known(&self.launch_path, "launch_path")?,
            launch_parameters: known_optional(&self.launch_parameters, "launch_parameters")?,
            process_restart_hours: known_u32(&self.process_restart_hours, "process_restart_hours")?,
            session_mode: known(&self.session_mode, "session_mode")?.parse()?,
            sessions_per_process: known_u32(&self.sessions_per_process, "sessions_per_process")?,
            storage_gb: known_u32(&self.storage_gb, "storage_gb")?,
            force_destroy: known(&self.force_destroy, "force_destroy")?,
        })
    }

    /// The planned state: the configuration with defaults, `id` from `prior`.
    fn plan(config: Self, prior: Option<&Self>) -> Self {
        FleetState {
            id: prior.map_or(Value::Unknown, |prior| prior.id.clone()),
            update_mode: or_default(config.update_mode, UpdateMode::default().to_string()),
            process_restart_hours: or_default(
                config.process_restart_hours,
                defaults::PROCESS_RESTART_HOURS.into(),
            ),
            session_mode: or_default(config.session_mode, SessionMode::default().to_string()),
            sessions_per_process: or_default(
                config.sessions_per_process,
                defaults::SESSIONS_PER_PROCESS.into(),
            ),
            storage_gb: or_default(config.storage_gb, defaults::STORAGE_GB.into()),
            force_destroy: or_default(config.force_destroy, defaults::FORCE_DESTROY),
            ..config
        }
    }
}

/// Plan-time checks of a fleet configuration: the server's rules on the known values.
pub fn validate_fleet(config: &FleetState) -> Problems {
    let mut problems = Problems::default();
    let path = AttributePath::new;
    if let Some(name) = config.name.as_ref_option() {
        problems.rule(path("name"), validate::identifier(name));
    }
    if let Some(build_id) = config.build_id.as_ref_option() {
        problems.rule(path("build_id"), validate::name(build_id));
    }
    if let Some(mode) = config.update_mode.as_ref_option() {
        problems.rule(path("update_mode"), mode.parse::<UpdateMode>().map(drop));
    }
    if let Some(launch_path) = config.launch_path.as_ref_option() {
        problems.rule(path("launch_path"), validate::launch_path(launch_path));
    }
    if let Some(parameters) = config.launch_parameters.as_ref_option() {
        problems.rule(
            path("launch_parameters"),
            validate::launch_parameters(parameters),
        );
    }
    if let Some(hours) = config.process_restart_hours.as_ref_option() {
        problems.rule(
            path("process_restart_hours"),
            validate::process_restart_hours(*hours),
        );
    }
    // An unknown or invalid mode is checked as `parallel`, the mode with the fewest
    // constraints, so only a certain error is reported.
    let session_mode = match &config.session_mode {
        Value::Null => SessionMode::default(),
        Value::Value(text) => {
            let parsed = text.parse::<SessionMode>();
            problems.rule(path("session_mode"), parsed.clone().map(drop));
            parsed.unwrap_or(SessionMode::Parallel)
        }
        Value::Unknown => SessionMode::Parallel,
    };
    if let Some(sessions) = config.sessions_per_process.as_ref_option() {
        problems.rule(
            path("sessions_per_process"),
            validate::sessions_per_process(*sessions, session_mode),
        );
    }
    if let Some(storage_gb) = config.storage_gb.as_ref_option() {
        problems.rule(path("storage_gb"), validate::at_least(*storage_gb, 1));
    }
    problems
}

/// The `fleetform_fleet` resource.
pub struct FleetResource;

#[async_trait]
impl ApiResource for FleetResource {
    type State = FleetState;
    type Remote = Fleet;
    type Spec = FleetSpec;
    const NAME: &'static str = "fleet";
    const NOUN: &'static str = "fleet";

    fn schema() -> Schema {
        fleet_schema()
    }

    fn validate(config: &FleetState) -> Problems {
        validate_fleet(config)
    }

    fn plan(config: FleetState, prior: Option<&FleetState>) -> FleetState {
        FleetState::plan(config, prior)
    }

    fn replaced_by(prior: &FleetState, planned: &FleetState) -> Vec<AttributePath> {
        let mut replace = Vec::new();
        if changes(&prior.name, &planned.name) {
            replace.push(AttributePath::new("name"));
        }
        if changes(&prior.session_mode, &planned.session_mode) {
            replace.push(AttributePath::new("session_mode"));
        }
        replace
    }

    fn id(state: &FleetState) -> &Value<String> {
        &state.id
    }

    fn spec(planned: &FleetState) -> Result<FleetSpec, String> {
        planned.spec()
    }

    fn state(fleet: Fleet, _local: Option<&FleetState>) -> FleetState {
        FleetState::from_fleet(fleet)
    }

    async fn get(client: &Client, id: &str) -> Result<Fleet, ClientError> {
        client.get_fleet(id).await
    }

    async fn create(client: &Client, spec: &FleetSpec) -> Result<Fleet, ClientError> {
        client.create_fleet(spec).await
    }

    async fn update(client: &Client, id: &str, spec: &FleetSpec) -> Result<Fleet, ClientError> {
        client.update_fleet(id, spec).await
    }

    async fn delete(client: &Client, id: &str) -> Result<(), ClientError> {
        client.delete_fleet(id).await
    }

    fn delete_refused(error: &ClientError) -> Option<Report> {
        Some(
            Report::new(
                "Fleet has active sessions",
                format!(
                    "{error}\n\nfleetformd refuses to destroy a fleet while sessions are \
                     active. Wait for them to end, or set `force_destroy = true`, apply, \
                     and destroy again."
                ),
            )
            .on(AttributePath::new("force_destroy")),
        )
    }
}

/// Schema of `fleetform_fleet`.
pub fn fleet_schema() -> Schema {
    use AttributeType::{Bool, Number, String};
    schema(block(
        "A fleet: how the server processes of a build run. Zones place its processes.",
        vec![
            ("id", computed(String, "Identifier of the fleet (`flt-…`).")),
            (
                "name",
                required(
                    String,
                    "Name of the fleet: letters, digits, `-` and `_`. Changing it replaces \
                     the fleet.",
                ),
            ),
            ("description", optional(String, "Free text. Updatable.")),
            (
                "build_id",
                required(
                    String,
                    "The build the fleet runs. Changing it rolls the fleet to the new build \
                     according to `update_mode`.",
                ),
            ),
            (
                "update_mode",
                defaulted(
                    String,
                    "How machines move to a new build: `soft` (default: machines on the old \
                     build take no new sessions and update once idle) or `force` (all \
                     machines now, sessions or not).",
                ),
            ),
            (
                "launch_path",
                required(
                    String,
                    "Executable inside the build, relative to its root. A script (`.sh`, \
                     `.ps1`, `.bat`, `.cmd`) is rejected.",
                ),
            ),
            (
                "launch_parameters",
                optional(
                    String,
                    "Command-line parameters; `{port}`, `{process_id}` and `{sdk_addr}` are \
                     substituted.",
                ),
            ),
            (
                "process_restart_hours",
                defaulted(
                    Number,
                    "After this many hours (0–168) a process takes no new sessions and \
                     restarts once its sessions end. Default `0` (off).",
                ),
            ),
            (
                "session_mode",
                defaulted(
                    String,
                    "`simple` (default: one session per process, which restarts after it) \
                     or `parallel` (up to `sessions_per_process` at once). Changing it \
                     replaces the fleet.",
                ),
            ),
            (
                "sessions_per_process",
                defaulted(
                    Number,
                    "Most sessions a process hosts at once. Default `1`; must be `1` in \
                     `simple` mode.",
                ),
            ),
            (
                "storage_gb",
                defaulted(Number, "Disk per machine in GB. Default `50`."),
            ),
            (
                "force_destroy",
                defaulted(
                    Bool,
                    "Destroy the fleet even while sessions are active. Default `false`: \
                     destroy fails while sessions are active.",
                ),
            ),
        ],
        vec![],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid fleet configuration, changed by the builder methods below.
    fn config() -> FleetState {
        FleetState {
            name: Value::Value("arena".into()),
            build_id: Value::Unknown,
            launch_path: Value::Value("bin/server".into()),
            ..Default::default()
        }
    }

    impl FleetState {
        fn launch_path(mut self, path: &str) -> Self {
            self.launch_path = Value::Value(path.into());
            self
        }
        fn restart_hours(mut self, hours: i64) -> Self {
            self.process_restart_hours = Value::Value(hours);
            self
        }
        fn sessions(mut self, mode: Value<String>, per_process: i64) -> Self {
            self.session_mode = mode;
            self.sessions_per_process = Value::Value(per_process);
            self
        }
    }

    #[test]
    fn validation_paths() {
        let simple = || Value::Value("simple".to_string());
        let parallel = || Value::Value("parallel".to_string());
        let cases: Vec<(&str, FleetState, &[&str])> = vec![
            ("valid", config(), &[]),
            (
                "script launch_path",
                config().launch_path("start.sh"),
                &["launch_path"],
            ),
            (
                "windows script",
                config().launch_path("run.CMD"),
                &["launch_path"],
            ),
            (
                "restart hours 169",
                config().restart_hours(169),
                &["process_restart_hours"],
            ),
            ("restart hours 168", config().restart_hours(168), &[]),
            (
                "sessions_per_process 2 in simple mode",
                config().sessions(simple(), 2),
                &["sessions_per_process"],
            ),
            (
                "sessions_per_process 2 with default mode",
                config().sessions(Value::Null, 2),
                &["sessions_per_process"],
            ),
            ("parallel allows 4", config().sessions(parallel(), 4), &[]),
            (
                "unknown mode checks only certain rules",
                config().sessions(Value::Unknown, 2),
                &[],
            ),
            (
                "unknown mode still rejects 0",
                config().sessions(Value::Unknown, 0),
                &["sessions_per_process"],
            ),
            (
                "bad placeholder",
                FleetState {
                    launch_parameters: Value::Value("--port {prot}".into()),
                    ..config()
                },
                &["launch_parameters"],
            ),
            (
                "name with a space",
                FleetState {
                    name: Value::Value("my fleet".into()),
                    ..config()
                },
                &["name"],
            ),
        ];
        for (case, config, paths) in cases {
            let found: Vec<String> = validate_fleet(&config)
                .describe()
                .into_iter()
                .map(|(path, _)| path)
                .collect();
            assert_eq!(found, *paths, "{case}");
        }
    }

    #[test]
    fn plan_is_stable_against_the_servers_answer() {
        let config = FleetState {
            build_id: Value::Value("bld-1".into()),
            ..config()
        };
        let planned = FleetState::plan(config.clone(), None);
        let spec = FleetState {
            id: Value::Value("x".into()),
            ..planned.clone()
        }
        .spec()
        .unwrap();
        let server = Fleet {
            id: "flt-1".into(),
            name: spec.name.clone(),
            description: spec.description.clone(),
            build_id: spec.build_id.clone(),
            update_mode: spec.update_mode,
            launch_path: spec.launch_path.clone(),
            launch_parameters: spec.launch_parameters.clone(),
            process_restart_hours: spec.process_restart_hours,
            session_mode: spec.session_mode,
            sessions_per_process: spec.sessions_per_process,
            storage_gb: spec.storage_gb,
            force_destroy: spec.force_destroy,
            status: fleetform_api::ResourceStatus::Available,
            created_at: "2024-01-01T00:00:00Z".into(),
        };
        let state = FleetState::from_fleet(server);
        assert_eq!(FleetState::plan(config, Some(&state)), state);
    }
}
