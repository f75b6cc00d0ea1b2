//! `fleetform_fleet`: a fleet looked up by `id` or `name` (DESIGN.md §2), for a
//! configuration that uses a fleet another one manages (its id for a zone, its build for
//! a check).

use async_trait::async_trait;
use fleetform_api::{Client, Fleet};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{AttributeType, Schema};
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

use crate::diag::{client_error, Problems};
use crate::resource::ApiDataSource;
use crate::resources::fleet::FleetState;
use crate::schema::{block, computed, defaulted, schema};

/// Terraform state of a `fleetform_fleet` read: the fleet's attributes and its status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FleetDataState {
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
    pub status: Value<String>,
}

impl FleetDataState {
    pub fn from_fleet(fleet: Fleet) -> Self {
        let status = Value::Value(fleet.status.to_string());
        let FleetState {
            id,
            name,
            description,
            build_id,
            update_mode,
            launch_path,
            launch_parameters,
            process_restart_hours,
            session_mode,
            sessions_per_process,
            storage_gb,
            force_destroy,
        } = FleetState::from_fleet(fleet);
        FleetDataState {
            id,
            name,
            description,
            build_id,
            update_mode,
            launch_path,
            launch_parameters,
            process_restart_hours,
            session_mode,
            sessions_per_process,
            storage_gb,
            force_destroy,
            status,
        }
    }
}

/// Which fleet a configuration names: exactly one of `id` and `name`, known.
pub fn lookup(config: &FleetDataState) -> Result<String, (AttributePath, String)> {
    match (&config.id, &config.name) {
        (Value::Value(id), Value::Null) => Ok(id.clone()),
        (Value::Null, Value::Value(name)) => Ok(name.clone()),
        (Value::Value(_), Value::Value(_)) => Err((
            AttributePath::new("name"),
            "set `id` or `name`, not both".into(),
        )),
        (Value::Unknown, _) => Err((
            AttributePath::new("id"),
            "`id` must be known when the data source is read".into(),
        )),
        (_, Value::Unknown) => Err((
            AttributePath::new("name"),
            "`name` must be known when the data source is read".into(),
        )),
        (Value::Null, Value::Null) => Err((
            AttributePath::new("id"),
            "set `id` or `name`: which fleet to read".into(),
        )),
    }
}

/// The `fleetform_fleet` data source.
pub struct FleetDataSource;

#[async_trait]
impl ApiDataSource for FleetDataSource {
    type State = FleetDataState;
    const NAME: &'static str = "fleet";

    fn schema() -> Schema {
        fleet_data_schema()
    }

    fn validate(config: &FleetDataState) -> Problems {
        let mut problems = Problems::default();
        // Unknown values are fine at validation (they are known by the read).
        let unknown = config.id.is_unknown() || config.name.is_unknown();
        if let (false, Err((path, message))) = (unknown, lookup(config)) {
            problems.rule(path, Err(message));
        }
        problems
    }

    async fn read(
        client: &Client,
        config: FleetDataState,
        diags: &mut Diagnostics,
    ) -> Option<FleetDataState> {
        let wanted = match lookup(&config) {
            Ok(wanted) => wanted,
            Err((path, message)) => {
                diags.error_short(message, path);
                return None;
            }
        };
        match client.get_fleet(&wanted).await {
            Ok(fleet) => Some(FleetDataState::from_fleet(fleet)),
            Err(error) => {
                client_error(diags, "Could not read fleet", &error);
                None
            }
        }
    }
}

/// Schema of `fleetform_fleet` (the data source).
pub fn fleet_data_schema() -> Schema {
    use AttributeType::{Bool, Number, String};
    schema(block(
        "A fleet, looked up by `id` or `name` (set one): its settings as the server holds \
         them, and its status.",
        vec![
            (
                "id",
                defaulted(
                    String,
                    "Identifier of the fleet (`flt-…`): set it, or `name`.",
                ),
            ),
            (
                "name",
                defaulted(String, "Name of the fleet: set it, or `id`."),
            ),
            ("description", computed(String, "Free text.")),
            ("build_id", computed(String, "The build the fleet runs.")),
            ("update_mode", computed(String, "`soft` or `force`.")),
            (
                "launch_path",
                computed(String, "Executable inside the build, relative to its root."),
            ),
            (
                "launch_parameters",
                computed(String, "Command-line parameters."),
            ),
            (
                "process_restart_hours",
                computed(
                    Number,
                    "Hours after which a process takes no new sessions (0: off).",
                ),
            ),
            ("session_mode", computed(String, "`simple` or `parallel`.")),
            (
                "sessions_per_process",
                computed(Number, "Sessions a process hosts at once (parallel mode)."),
            ),
            ("storage_gb", computed(Number, "Disk per machine, in GB.")),
            (
                "force_destroy",
                computed(Bool, "Whether destroying the fleet ends its sessions."),
            ),
            (
                "status",
                computed(
                    String,
                    "`NEW`, `LAUNCHING`, `AVAILABLE`, `AVAILABLE_COOLDOWN`, `UNAVAILABLE` or \
                     `DELETING`.",
                ),
            ),
        ],
        vec![],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(id: Value<String>, name: Value<String>) -> FleetDataState {
        FleetDataState {
            id,
            name,
            ..FleetDataState::default()
        }
    }

    #[test]
    fn exactly_one_of_id_and_name_names_the_fleet() {
        let v = |s: &str| Value::Value(s.to_string());
        let cases = [
            (v("flt-1"), Value::Null, Ok("flt-1")),
            (Value::Null, v("arena"), Ok("arena")),
            (v("flt-1"), v("arena"), Err("name")),
            (Value::Null, Value::Null, Err("id")),
            (Value::Unknown, Value::Null, Err("id")),
            (Value::Null, Value::Unknown, Err("name")),
        ];
        for (id, name, want) in cases {
            let got = lookup(&config(id.clone(), name.clone()));
            match (want, got) {
                (Ok(want), Ok(got)) => assert_eq!(got, want),
                (Err(attribute), Err((path, _))) => {
                    assert_eq!(path, AttributePath::new(attribute), "{id:?} {name:?}")
                }
                (want, got) => panic!("{id:?} {name:?}: want {want:?}, got {got:?}"),
            }
        }
    }
}
