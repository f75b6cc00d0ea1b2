//! `fleetform_zone_status`: the live figures of a zone. They change by the second, which
//! is why they live here and never in a resource's state.

use std::collections::BTreeMap;

use async_trait::async_trait;
use fleetform_api::{Client, ZoneStatus};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{AttributeType, Schema};
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

use crate::diag::client_error;
use crate::resource::ApiDataSource;
use crate::schema::{block, computed, required, schema};
use crate::state::number;

/// Terraform state of a `fleetform_zone_status` read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ZoneStatusState {
    pub zone_id: Value<String>,
    pub id: Value<String>,
    pub status: Value<String>,
    pub machines: Value<BTreeMap<String, Value<i64>>>,
    pub processes_idle: Value<i64>,
    pub processes_active: Value<i64>,
    pub processes_starting: Value<i64>,
    pub processes_desired: Value<i64>,
    pub active_sessions: Value<i64>,
    pub players: Value<i64>,
    pub processes_by_build: Value<BTreeMap<String, Value<i64>>>,
}

impl ZoneStatusState {
    pub fn from_status(status: ZoneStatus) -> Self {
        ZoneStatusState {
            id: Value::Value(status.zone_id.clone()),
            zone_id: Value::Value(status.zone_id),
            status: Value::Value(status.status.to_string()),
            machines: Value::Value(
                status
                    .machines
                    .into_iter()
                    .map(|(machine_status, count)| (machine_status, number(count)))
                    .collect(),
            ),
            processes_idle: number(status.processes_idle),
            processes_active: number(status.processes_active),
            processes_starting: number(status.processes_starting),
            processes_desired: number(status.processes_desired),
            active_sessions: number(status.active_sessions),
            players: number(status.players),
            processes_by_build: Value::Value(
                status
                    .processes_by_build
                    .into_iter()
                    .map(|(build, count)| (build, number(count)))
                    .collect(),
            ),
        }
    }
}

/// The `fleetform_zone_status` data source.
pub struct ZoneStatusDataSource;

#[async_trait]
impl ApiDataSource for ZoneStatusDataSource {
    type State = ZoneStatusState;
    const NAME: &'static str = "zone_status";

    fn schema() -> Schema {
        zone_status_schema()
    }

    async fn read(
        client: &Client,
        config: ZoneStatusState,
        diags: &mut Diagnostics,
    ) -> Option<ZoneStatusState> {
        let Value::Value(zone_id) = &config.zone_id else {
            diags.error_short("`zone_id` must be known", AttributePath::new("zone_id"));
            return None;
        };
        match client.zone_status(zone_id).await {
            Ok(status) => Some(ZoneStatusState {
                // Keep the id as written even if the server answers with another spelling.
                zone_id: config.zone_id.clone(),
                ..ZoneStatusState::from_status(status)
            }),
            Err(error) => {
                client_error(diags, "Could not read zone status", &error);
                None
            }
        }
    }
}

/// Schema of `fleetform_zone_status`.
pub fn zone_status_schema() -> Schema {
    use AttributeType::{Map, Number, String};
    let count = |text: &str| computed(Number, text);
    schema(block(
        "Live figures of a zone: status, machines by status, processes and sessions. Read \
         at every plan; nothing here goes into a resource's state.",
        vec![
            ("zone_id", required(String, "Identifier of the zone.")),
            ("id", computed(String, "Same as `zone_id`.")),
            (
                "status",
                computed(
                    String,
                    "`NEW`, `LAUNCHING`, `AVAILABLE`, `AVAILABLE_COOLDOWN`, `UNAVAILABLE` or \
                     `DELETING`.",
                ),
            ),
            (
                "machines",
                computed(
                    Map(Box::new(Number)),
                    "Machine count by machine status (`ACTIVE` → 2); statuses with no \
                     machine are absent.",
                ),
            ),
            (
                "processes_idle",
                count("Processes that are ready and host no session."),
            ),
            (
                "processes_by_build",
                computed(
                    Map(Box::new(Number)),
                    "Live processes per build id: the progress of a build update (the old \
                     build's count falls to zero as its sessions end).",
                ),
            ),
            (
                "processes_active",
                count("Processes hosting at least one session."),
            ),
            (
                "processes_starting",
                count("Processes started but not yet ready."),
            ),
            (
                "processes_desired",
                count("Processes the scaler currently wants."),
            ),
            ("active_sessions", count("Sessions in progress.")),
            (
                "players",
                count("Sum of `max_players` over active sessions that declared it."),
            ),
        ],
        vec![],
    ))
}
