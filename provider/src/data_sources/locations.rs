//! `fleetform_locations`: the locations the backend offers (its `[[location]]` tables), so a
//! configuration can pick or check a data center's `location` and `machine_type` against
//! what the server runs instead of hard-coding it.

use std::collections::HashMap;

use async_trait::async_trait;
use fleetform_api::{Client, Location};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{AttributeType, Schema};
use tf_provider::value::Value;
use tf_provider::Diagnostics;

use crate::diag::client_error;
use crate::resource::ApiDataSource;
use crate::schema::{block, computed, schema};

/// The data source's `id`. There is one list per server, and Terraform needs an id for
/// every data source, so it is a constant.
pub const LOCATIONS_ID: &str = "locations";

/// Terraform state of a `fleetform_locations` read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LocationsState {
    pub id: Value<String>,
    pub locations: Value<Vec<LocationState>>,
    pub names: Value<Vec<Value<String>>>,
}

/// One element of `locations`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LocationState {
    pub name: Value<String>,
    pub driver: Value<String>,
    pub machine_types: Value<Vec<Value<String>>>,
}

impl LocationsState {
    /// The state for the server's answer, ordered by name: the server sends them sorted
    /// today, but sorting here keeps `names[0]` and the plan stable whatever it sends.
    pub fn from_locations(mut locations: Vec<Location>) -> Self {
        locations.sort_by(|a, b| a.name.cmp(&b.name));
        LocationsState {
            id: Value::Value(LOCATIONS_ID.to_string()),
            names: Value::Value(
                locations
                    .iter()
                    .map(|location| Value::Value(location.name.clone()))
                    .collect(),
            ),
            locations: Value::Value(
                locations
                    .into_iter()
                    .map(|location| LocationState {
                        name: Value::Value(location.name),
                        driver: Value::Value(location.driver),
                        machine_types: Value::Value(
                            location
                                .machine_types
                                .into_iter()
                                .map(|machine_type| Value::Value(machine_type.to_string()))
                                .collect(),
                        ),
                    })
                    .collect(),
            ),
        }
    }
}

/// The `fleetform_locations` data source.
pub struct LocationsDataSource;

#[async_trait]
impl ApiDataSource for LocationsDataSource {
    type State = LocationsState;
    const NAME: &'static str = "locations";

    fn schema() -> Schema {
        locations_schema()
    }

    async fn read(
        client: &Client,
        _config: LocationsState,
        diags: &mut Diagnostics,
    ) -> Option<LocationsState> {
        match client.locations().await {
            Ok(locations) => Some(LocationsState::from_locations(locations)),
            Err(error) => {
                client_error(diags, "Could not read locations", &error);
                None
            }
        }
    }
}

/// Schema of `fleetform_locations`.
pub fn locations_schema() -> Schema {
    use AttributeType::{List, Object, String};
    let strings = || List(Box::new(String));
    // A computed list of objects (what SDKv2 makes of a computed list of resources): the
    // elements have no arguments, so nested attribute descriptions would add nothing the
    // description of `locations` does not say.
    let location = Object(HashMap::from([
        ("name".to_string(), String),
        ("driver".to_string(), String),
        ("machine_types".to_string(), strings()),
    ]));
    schema(block(
        "The locations this fleetformd offers (its `[[location]]` tables): where a zone's \
         data centers can run, with the driver and machine types of each.",
        vec![
            ("id", computed(String, "Always `locations`.")),
            (
                "locations",
                computed(
                    List(Box::new(location)),
                    "Every location, ordered by name: `name` (what a `data_center`'s \
                     `location` refers to), `driver` (`local`, `sim`, `aws` or \
                     `bare_metal`) and `machine_types` (the `machine_type` a data center \
                     there must have: `[\"vm\"]` or `[\"bare_metal\"]`).",
                ),
            ),
            (
                "names",
                computed(strings(), "The names of `locations`, in the same order."),
            ),
        ],
        vec![],
    ))
}

#[cfg(test)]
mod tests {
    use fleetform_api::MachineType;

    use super::*;

    fn location(name: &str, driver: &str, machine_type: MachineType) -> Location {
        Location {
            name: name.into(),
            driver: driver.into(),
            machine_types: vec![machine_type],
        }
    }

    fn strings(items: &[&str]) -> Value<Vec<Value<String>>> {
        Value::Value(items.iter().map(|s| Value::Value(s.to_string())).collect())
    }

    #[test]
    fn state_lists_locations_by_name_with_their_wire_spellings() {
        let state = LocationsState::from_locations(vec![
            location("local", "local", MachineType::Vm),
            location("fra-metal", "bare_metal", MachineType::BareMetal),
        ]);
        assert_eq!(state.id, Value::Value("locations".into()));
        assert_eq!(state.names, strings(&["fra-metal", "local"]));
        let Value::Value(locations) = &state.locations else {
            panic!("locations unset: {state:?}");
        };
        assert_eq!(
            locations,
            &vec![
                LocationState {
                    name: Value::Value("fra-metal".into()),
                    driver: Value::Value("bare_metal".into()),
                    machine_types: strings(&["bare_metal"]),
                },
                LocationState {
                    name: Value::Value("local".into()),
                    driver: Value::Value("local".into()),
                    machine_types: strings(&["vm"]),
                },
            ]
        );
    }

    #[test]
    fn no_location_is_an_empty_list_not_null() {
        let state = LocationsState::from_locations(vec![]);
        assert_eq!(state.names, Value::Value(vec![]));
        assert_eq!(state.locations, Value::Value(vec![]));
    }
}
