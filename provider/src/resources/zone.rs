//! `fleetform_zone`: a region of data centers with one scaling policy (DESIGN.md §2).
//!
//! Create and update wait (unless `wait_for_capacity = false`) until the zone's warm
//! capacity is up; destroy waits until the zone is gone. The zone's live figures stay out
//! of the state: they belong to the `fleetform_zone_status` data source.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use fleetform_api::validate;
use fleetform_api::{defaults, ClientError};
use fleetform_api::{
    BufferRule, Client, DataCenterSpec, MachineModel, MachineType, PlacementStrategy,
    ResourceStatus, ScalingMode, Zone, ZoneSpec, ZoneStatus,
};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tf_provider::schema::{AttributeType, NestedBlock, Schema};
use tf_provider::value::Value;
use tf_provider::AttributePath;

use crate::diag::Problems;
use crate::resource::{ApiResource, Operation, Report};
use crate::schema::{block, computed, defaulted, optional, required, schema};
use crate::state::{
    changes, known, known_optional_u32, known_u32, number, optional_number, or_default,
    plan_blocks, to_u32,
};
use crate::timeouts::{self, timeout, TimeoutsState};

/// How often create, update and destroy ask the server whether the zone got there.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Terraform state of a `fleetform_zone`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ZoneState {
    pub id: Value<String>,
    pub fleet_id: Value<String>,
    pub name: Value<String>,
    pub scaling_mode: Value<String>,
    pub initial_server_processes: Value<i64>,
    pub buffer_rule: Value<Vec<BufferRuleState>>,
    pub free_slots_min: Value<i64>,
    pub free_slots_max: Value<i64>,
    pub cooldown_minutes: Value<i64>,
    pub placement_strategy: Value<String>,
    /// Provider-side only: kept in state, never sent.
    pub wait_for_capacity: Value<bool>,
    /// A set to Terraform; in name order here.
    pub data_center: Value<Vec<DataCenterState>>,
    /// Provider-side only: kept in state, never sent.
    pub timeouts: Value<Vec<TimeoutsState>>,
}

/// One `buffer_rule` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BufferRuleState {
    pub min_active_sessions: Value<i64>,
    pub available_servers: Value<i64>,
    pub available_percent: Value<i64>,
    pub available_predicted: Value<i64>,
}

/// One `data_center` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataCenterState {
    pub name: Value<String>,
    pub location: Value<String>,
    pub priority: Value<i64>,
    pub machine_type: Value<String>,
    pub max_server_processes: Value<i64>,
    pub bare_metal_machines: Value<i64>,
    pub machine_model: Value<Vec<MachineModelState>>,
}

/// One `machine_model` block of a data center.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MachineModelState {
    pub instance_type: Value<String>,
    pub processes_per_machine: Value<i64>,
}

/// A version-0 state (`data_center` and `buffer_rule` lists, in the configuration's
/// order) in version 1's layout (both sets), in the order the provider keeps them: data
/// centers by name, rules by threshold. The values are the same.
pub fn upgrade_from_0(mut state: Json) -> Json {
    let key = |item: &Json, field: &str| item.get(field).cloned().unwrap_or(Json::Null);
    if let Some(Json::Array(dcs)) = state.get_mut("data_center") {
        dcs.sort_by_key(|dc| key(dc, "name").as_str().map(str::to_string));
    }
    if let Some(Json::Array(rules)) = state.get_mut("buffer_rule") {
        rules.sort_by_key(|rule| key(rule, "min_active_sessions").as_i64().unwrap_or(0));
    }
    state
}

/// Sorts data centers by name, the order the provider keeps them in (Terraform holds them
/// as a set, in an order of its own).
fn by_name(dcs: &mut [DataCenterState]) {
    dcs.sort_by(|a, b| a.name.as_ref_option().cmp(&b.name.as_ref_option()));
}

/// Sorts buffer rules by threshold (a null one is the default, 0), the order the server
/// keeps them in; Terraform holds them as a set, in an order of its own.
fn by_threshold(rules: &mut [BufferRuleState]) {
    rules.sort_by_key(|rule| match rule.min_active_sessions {
        Value::Value(threshold) => threshold,
        Value::Null => i64::from(defaults::MIN_ACTIVE_SESSIONS),
        Value::Unknown => i64::MAX,
    });
}

/// Where a problem found on the zone's blocks by position (as the API and the validators
/// number them) is in Terraform's terms: on the set of blocks (a set has no positions),
/// the message naming the data center by its name and the rule by its threshold. The
/// positions count in the order the provider keeps the blocks (data centers by name, rules
/// by threshold), which is the order of the body it sends.
fn locate(config: &ZoneState, path: AttributePath, message: String) -> (AttributePath, String) {
    use tf_provider::AttributePathStep::{Attribute, Index, Key};
    let steps = path.steps.clone();
    match steps.as_slice() {
        [Attribute(block), Index(index), rest @ ..] if block == "data_center" => {
            let mut dcs = config
                .data_center
                .as_ref_option()
                .cloned()
                .unwrap_or_default();
            by_name(&mut dcs);
            let name = usize::try_from(*index)
                .ok()
                .and_then(|index| dcs.get(index))
                .and_then(|dc| dc.name.as_ref_option().cloned());
            let Some(name) = name else {
                return (AttributePath::new("data_center"), message);
            };
            let inner: Vec<String> = rest
                .iter()
                .map(|step| match step {
                    Attribute(attribute) => format!(".{attribute}"),
                    Key(key) => format!("[{key:?}]"),
                    Index(index) => format!("[{index}]"),
                })
                .collect();
            let inner = inner.concat();
            let message = match inner.strip_prefix('.') {
                Some(inner) => format!("data center {name:?}, `{inner}`: {message}"),
                None => format!("data center {name:?}: {message}"),
            };
            (AttributePath::new("data_center"), message)
        }
        [Attribute(block), Index(index), rest @ ..] if block == "buffer_rule" => {
            let mut rules = config
                .buffer_rule
                .as_ref_option()
                .cloned()
                .unwrap_or_default();
            by_threshold(&mut rules);
            let rule = usize::try_from(*index)
                .ok()
                .and_then(|index| rules.get(index));
            let threshold = match rule.map(|rule| &rule.min_active_sessions) {
                Some(Value::Value(threshold)) => Some(*threshold),
                Some(Value::Unknown) => None,
                Some(Value::Null) | None => Some(i64::from(defaults::MIN_ACTIVE_SESSIONS)),
            };
            let rule = match threshold {
                Some(threshold) => format!("the rule from {threshold} active sessions"),
                None => "the rule whose `min_active_sessions` is not known yet".to_string(),
            };
            let threshold = threshold.map_or("?".to_string(), |threshold| threshold.to_string());
            let attribute = match rest.first() {
                Some(Attribute(attribute)) => attribute.to_string(),
                _ => String::new(),
            };
            // The order rules in a set's terms: sorted, a threshold not above the previous
            // is a second rule from it; a first above 0 is no rule from 0.
            let message = match attribute.as_str() {
                "min_active_sessions" if message.starts_with("must be greater than") => {
                    format!("two rules start from {threshold} active sessions; each threshold is used once")
                }
                "min_active_sessions" if message.starts_with("the first buffer rule") => {
                    format!("no rule starts from 0 active sessions (the lowest starts from {threshold}); one must")
                }
                "" => format!("{rule}: {message}"),
                _ => format!("{rule}, `{attribute}`: {message}"),
            };
            (AttributePath::new("buffer_rule"), message)
        }
        _ => (path, message),
    }
}

impl ZoneState {
    /// State of a zone as the server knows it, with the provider-only attributes
    /// (`wait_for_capacity`, `timeouts`) given by the caller. The live status is left out.
    pub fn from_zone(
        zone: Zone,
        wait_for_capacity: Value<bool>,
        timeouts: Value<Vec<TimeoutsState>>,
    ) -> Self {
        let spec = zone.spec;
        ZoneState {
            id: Value::Value(zone.id),
            fleet_id: Value::Value(spec.fleet_id),
            name: Value::Value(spec.name),
            scaling_mode: Value::Value(spec.scaling_mode.to_string()),
            initial_server_processes: number(spec.initial_server_processes),
            buffer_rule: Value::Value(
                spec.buffer_rules
                    .into_iter()
                    .map(|rule| BufferRuleState {
                        min_active_sessions: number(rule.min_active_sessions),
                        available_servers: optional_number(rule.available_servers),
                        available_percent: optional_number(rule.available_percent),
                        available_predicted: optional_number(rule.available_predicted),
                    })
                    .collect(),
            ),
            free_slots_min: optional_number(spec.free_slots_min),
            free_slots_max: optional_number(spec.free_slots_max),
            cooldown_minutes: number(spec.cooldown_minutes),
            placement_strategy: Value::Value(spec.placement_strategy.to_string()),
            wait_for_capacity,
            data_center: Value::Value(
                spec.data_centers
                    .into_iter()
                    .map(|dc| DataCenterState {
                        name: Value::Value(dc.name),
                        location: Value::Value(dc.location),
                        priority: number(dc.priority),
                        machine_type: Value::Value(dc.machine_type.to_string()),
                        max_server_processes: optional_number(dc.max_server_processes),
                        bare_metal_machines: optional_number(dc.bare_metal_machines),
                        machine_model: Value::Value(
                            dc.machine_models
                                .into_iter()
                                .map(|model| MachineModelState {
                                    instance_type: Value::Value(model.instance_type),
                                    processes_per_machine: number(model.processes_per_machine),
                                })
                                .collect(),
                        ),
                    })
                    .collect(),
            ),
            timeouts,
        }
    }

    /// The body to send, from a fully known planned state.
    pub fn spec(&self) -> Result<ZoneSpec, String> {
        let mut rules = known(&self.buffer_rule, "buffer_rule")?;
        by_threshold(&mut rules);
        let mut dcs = known(&self.data_center, "data_center")?;
        by_name(&mut dcs);
        Ok(ZoneSpec {
            fleet_id: known(&self.fleet_id, "fleet_id")?,
            name: known(&self.name, "name")?,
            scaling_mode: known(&self.scaling_mode, "scaling_mode")?.parse()?,
            initial_server_processes: known_u32(
                &self.initial_server_processes,
                "initial_server_processes",
            )?,
            buffer_rules: rules
                .iter()
                .map(|rule| {
                    Ok(BufferRule {
                        min_active_sessions: known_u32(
                            &rule.min_active_sessions,
                            "buffer_rule.min_active_sessions",
                        )?,
                        available_servers: known_optional_u32(
                            &rule.available_servers,
                            "buffer_rule.available_servers",
                        )?,
                        available_percent: known_optional_u32(
                            &rule.available_percent,
                            "buffer_rule.available_percent",
                        )?,
                        available_predicted: known_optional_u32(
                            &rule.available_predicted,
                            "buffer_rule.available_predicted",
                        )?,
                    })
                })
                .collect::<Result<_, String>>()?,
            free_slots_min: known_optional_u32(&self.free_slots_min, "free_slots_min")?,
            free_slots_max: known_optional_u32(&self.free_slots_max, "free_slots_max")?,
            cooldown_minutes: known_u32(&self.cooldown_minutes, "cooldown_minutes")?,
            placement_strategy: known(&self.placement_strategy, "placement_strategy")?.parse()?,
            data_centers: dcs
                .iter()
                .map(|dc| {
                    Ok(DataCenterSpec {
                        name: known(&dc.name, "data_center.name")?,
                        location: known(&dc.location, "data_center.location")?,
                        priority: known_u32(&dc.priority, "data_center.priority")?,
                        machine_type: known(&dc.machine_type, "data_center.machine_type")?
                            .parse()?,
                        machine_models: known(&dc.machine_model, "data_center.machine_model")?
                            .iter()
                            .map(|model| {
                                Ok(MachineModel {
                                    instance_type: known(
                                        &model.instance_type,
                                        "machine_model.instance_type",
                                    )?,
                                    processes_per_machine: known_u32(
                                        &model.processes_per_machine,
                                        "machine_model.processes_per_machine",
                                    )?,
                                })
                            })
                            .collect::<Result<_, String>>()?,
                        max_server_processes: known_optional_u32(
                            &dc.max_server_processes,
                            "data_center.max_server_processes",
                        )?,
                        bare_metal_machines: known_optional_u32(
                            &dc.bare_metal_machines,
                            "data_center.bare_metal_machines",
                        )?,
                    })
                })
                .collect::<Result<_, String>>()?,
        })
    }

    /// The planned state: the configuration with defaults (nested blocks too), `id` from
    /// `prior`.
    fn plan(config: Self, prior: Option<&Self>) -> Self {
        ZoneState {
            id: prior.map_or(Value::Unknown, |prior| prior.id.clone()),
            scaling_mode: or_default(config.scaling_mode, ScalingMode::default().to_string()),
            buffer_rule: plan_blocks(config.buffer_rule, |rule| BufferRuleState {
                min_active_sessions: or_default(
                    rule.min_active_sessions,
                    defaults::MIN_ACTIVE_SESSIONS.into(),
                ),
                ..rule
            }),
            cooldown_minutes: or_default(
                config.cooldown_minutes,
                defaults::COOLDOWN_MINUTES.into(),
            ),
            placement_strategy: or_default(
                config.placement_strategy,
                PlacementStrategy::default().to_string(),
            ),
            wait_for_capacity: or_default(config.wait_for_capacity, true),
            data_center: plan_blocks(config.data_center, |dc| DataCenterState {
                priority: or_default(dc.priority, defaults::PRIORITY.into()),
                machine_type: or_default(dc.machine_type, MachineType::default().to_string()),
                machine_model: plan_blocks(dc.machine_model, |model| model),
                ..dc
            }),
            timeouts: plan_blocks(config.timeouts, |timeouts| timeouts),
            ..config
        }
    }

    fn waits(&self) -> bool {
        !matches!(self.wait_for_capacity, Value::Value(false))
    }
}

// ---------------------------------------------------------------------------------------------
// Plan-time validation

/// Plan-time checks of a zone configuration: the server's rules (`fleetform_api::validate`)
/// on the values known at plan. A value that is unknown, or that a rule depends on and is
/// unknown, is skipped: the server still checks it at apply.
pub fn validate_zone(config: &ZoneState) -> Problems {
    let mut problems = Problems::default();
    let path = AttributePath::new;
    if let Some(fleet_id) = config.fleet_id.as_ref_option() {
        problems.rule(path("fleet_id"), validate::name(fleet_id));
    }
    if let Some(name) = config.name.as_ref_option() {
        problems.rule(path("name"), validate::identifier(name));
    }
    // An unknown or invalid mode is checked as `fixed`, which needs no buffer rule, so only
    // a certain error is reported.
    let scaling_mode = match &config.scaling_mode {
        Value::Null => ScalingMode::default(),
        Value::Value(text) => {
            let parsed = text.parse::<ScalingMode>();
            problems.rule(path("scaling_mode"), parsed.clone().map(drop));
            parsed.unwrap_or(ScalingMode::Fixed)
        }
        Value::Unknown => ScalingMode::Fixed,
    };
    if let Some(initial) = config.initial_server_processes.as_ref_option() {
        problems.rule(
            path("initial_server_processes"),
            validate::at_least(*initial, 1),
        );
    }
    let free_min = whole(
        &config.free_slots_min,
        path("free_slots_min"),
        &mut problems,
    );
    let free_max = whole(
        &config.free_slots_max,
        path("free_slots_max"),
        &mut problems,
    );
    if let (Some(Some(min)), Some(Some(max))) = (free_min, free_max) {
        // Same rule and words as `validate_zone_spec`, which has no function of its own
        // for it.
        if min > max {
            problems.rule(
                path("free_slots_max"),
                Err(format!(
                    "must be at least free_slots_min ({min}), got {max}"
                )),
            );
        }
    }
    whole(
        &config.cooldown_minutes,
        path("cooldown_minutes"),
        &mut problems,
    );
    if let Some(strategy) = config.placement_strategy.as_ref_option() {
        problems.rule(
            path("placement_strategy"),
            strategy.parse::<PlacementStrategy>().map(drop),
        );
    }
    validate_buffer_rules(&config.buffer_rule, scaling_mode, &mut problems);
    validate_data_centers(&config.data_center, &mut problems);
    timeouts::validate(&config.timeouts, &mut problems);
    problems
}

/// A configured number as the API's `u32`: `Some(Some(n))` when known and in range,
/// `Some(None)` when null, `None` when unknown or out of range (which is reported).
fn whole(value: &Value<i64>, path: AttributePath, problems: &mut Problems) -> Option<Option<u32>> {
    match value {
        Value::Null => Some(None),
        Value::Unknown => None,
        Value::Value(number) => match to_u32(*number, "") {
            Ok(number) => Some(Some(number)),
            Err(_) => {
                problems.rule(path, validate::at_least(*number, 0));
                None
            }
        },
    }
}

/// A buffer-rule amount as plan-time validation sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Amount {
    Null,
    Unknown,
    /// Set; a value out of range (already reported) stands in as a valid one.
    Set(u32),
}

impl Amount {
    fn of(value: &Value<i64>, path: AttributePath, valid: u32, problems: &mut Problems) -> Self {
        match whole(value, path, problems) {
            Some(None) => Amount::Null,
            Some(Some(number)) => Amount::Set(number),
            None if value.is_unknown() => Amount::Unknown,
            None => Amount::Set(valid),
        }
    }
}

/// The buffer rules, checked by the server's own `validate::buffer_rules` on stand-ins for
/// the values not known yet, keeping only the errors the known values make certain:
/// - amounts (exactly one of three): an unknown amount stands in as null when another is
///   set (it may turn out null), or as a valid value when none is (it may turn out set);
///   so two set amounts are an error even while the third is unknown;
/// - order (the first at 0, then strictly increasing): a threshold is compared only when
///   it and the previous one are known, whatever else in the rules is unknown.
fn validate_buffer_rules(
    rules: &Value<Vec<BufferRuleState>>,
    mode: ScalingMode,
    problems: &mut Problems,
) {
    let Some(rules) = rules.as_ref_option() else {
        return;
    };
    // A set: checked in the server's order, by threshold (an unknown one last). Sorted, a
    // threshold not above the previous one is a duplicate, certain between known ones;
    // the first's (it must be 0) is uncertain while another threshold is unknown.
    let mut rules = rules.clone();
    by_threshold(&mut rules);
    let order_known = rules
        .iter()
        .all(|rule| !rule.min_active_sessions.is_unknown());
    let mut stand_ins = Vec::with_capacity(rules.len());
    let mut uncertain = BTreeSet::new();
    let mut previous_known = true;
    for (index, rule) in rules.iter().enumerate() {
        let at = |name: &'static str| {
            AttributePath::new("buffer_rule")
                .index(index as i64)
                .attribute(name)
        };
        // Null is the planned default, 0.
        let threshold = whole(
            &rule.min_active_sessions,
            at("min_active_sessions"),
            problems,
        );
        if threshold.is_none() || !previous_known || (index == 0 && !order_known) {
            uncertain.insert(format!("buffer_rules[{index}].min_active_sessions"));
        }
        previous_known = threshold.is_some();

        // Each amount with the value that stands in for it when it must be set: any
        // number of servers is valid, a percentage is 1–1000.
        let mut amounts = [
            (&rule.available_servers, "available_servers", 0),
            (&rule.available_percent, "available_percent", 1),
            (&rule.available_predicted, "available_predicted", 0),
        ]
        .map(|(value, name, valid)| (Amount::of(value, at(name), valid, problems), valid));
        let any_set = amounts
            .iter()
            .any(|(amount, _)| matches!(amount, Amount::Set(_)));
        if !any_set {
            if let Some((first, valid)) = amounts
                .iter_mut()
                .find(|(amount, _)| *amount == Amount::Unknown)
            {
                *first = Amount::Set(*valid);
            }
        }
        let [servers, percent, predicted] = amounts.map(|(amount, _)| match amount {
            Amount::Set(number) => Some(number),
            Amount::Null | Amount::Unknown => None,
        });
        stand_ins.push(BufferRule {
            min_active_sessions: threshold.flatten().unwrap_or(0),
            available_servers: servers,
            available_percent: percent,
            available_predicted: predicted,
        });
    }
    problems.field_errors(
        validate::buffer_rules(&stand_ins, mode)
            .into_iter()
            .filter(|error| !uncertain.contains(&error.field))
            .collect(),
    );
}

fn validate_data_centers(dcs: &Value<Vec<DataCenterState>>, problems: &mut Problems) {
    let Some(dcs) = dcs.as_ref_option() else {
        return;
    };
    // A set: numbered in the provider's order, by name (as `locate` reads the numbers).
    let mut dcs = dcs.clone();
    by_name(&mut dcs);
    if dcs.is_empty() {
        // Same rule and words as `validate_zone_spec`.
        problems.rule(
            AttributePath::new("data_center"),
            Err("at least one data center is required".into()),
        );
    }
    let mut seen = BTreeSet::new();
    for (index, dc) in dcs.iter().enumerate() {
        let at = |name: &'static str| {
            AttributePath::new("data_center")
                .index(index as i64)
                .attribute(name)
        };
        if let Some(name) = dc.name.as_ref_option() {
            problems.rule(at("name"), validate::identifier(name));
            if !seen.insert(name.as_str()) {
                // Same rule and words as `validate_zone_spec`.
                problems.rule(
                    at("name"),
                    Err(format!(
                        "data center names must be unique; {name:?} appears twice"
                    )),
                );
            }
        }
        if let Some(location) = dc.location.as_ref_option() {
            problems.rule(at("location"), validate::name(location));
        }
        whole(&dc.priority, at("priority"), problems);
        let machine_type = match &dc.machine_type {
            Value::Null => Some(MachineType::default()),
            Value::Value(text) => {
                let parsed = text.parse::<MachineType>();
                problems.rule(at("machine_type"), parsed.clone().map(drop));
                parsed.ok()
            }
            Value::Unknown => None,
        };
        let max = whole(
            &dc.max_server_processes,
            at("max_server_processes"),
            problems,
        );
        let bare_metal = whole(&dc.bare_metal_machines, at("bare_metal_machines"), problems);
        // Unknown leaves of a model get valid stand-ins: no rule relates them to anything
        // else, so the stand-ins can't hide or cause an error.
        let models: Option<Vec<MachineModel>> = dc.machine_model.as_ref_option().map(|models| {
            models
                .iter()
                .enumerate()
                .map(|(model_index, model)| MachineModel {
                    instance_type: model
                        .instance_type
                        .as_ref_option()
                        .cloned()
                        .unwrap_or_else(|| "unknown".into()),
                    processes_per_machine: whole(
                        &model.processes_per_machine,
                        AttributePath::new("data_center")
                            .index(index as i64)
                            .attribute("machine_model")
                            .index(model_index as i64)
                            .attribute("processes_per_machine"),
                        problems,
                    )
                    .flatten()
                    .unwrap_or(1),
                })
                .collect()
        });
        let (Some(machine_type), Some(models)) = (machine_type, models) else {
            continue;
        };
        // An unknown maximum or pool count stands in as the value valid for this machine
        // type, for the same reason.
        let is_vm = machine_type == MachineType::Vm;
        let shape = DataCenterSpec {
            name: String::new(),
            location: String::new(),
            priority: 0,
            machine_type,
            machine_models: models,
            max_server_processes: max.unwrap_or(is_vm.then_some(1)),
            bare_metal_machines: bare_metal.unwrap_or((!is_vm).then_some(1)),
        };
        problems.field_errors(validate::data_center_shape(
            &shape,
            &format!("data_centers[{index}]"),
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Waiting

/// One look at an operation in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Done,
    /// Not yet; what was seen, for the timeout's message.
    Waiting(String),
    /// It can't get there any more.
    Failed(String),
}

/// Asks `look` every [`POLL_INTERVAL`] until it answers `Done`, it fails, or `limit` has
/// passed; a slow answer counts against the limit too.
pub async fn poll_until<F, Fut>(limit: Duration, mut look: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Progress>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = "no answer yet".to_string();
    loop {
        match tokio::time::timeout_at(deadline, look()).await {
            Ok(Progress::Done) => return Ok(()),
            Ok(Progress::Failed(why)) => return Err(why),
            Ok(Progress::Waiting(seen)) => last = seen,
            Err(_) => {}
        }
        if tokio::time::Instant::now() + POLL_INTERVAL > deadline {
            return Err(format!(
                "not done after {}; last seen: {last}",
                describe_duration(limit)
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn describe_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0 => format!("{}ms", duration.as_millis()),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Whether a zone's warm capacity is up. `AVAILABLE_COOLDOWN` counts: the zone is healthy
/// and deliberately scaled to zero until a placement wakes it, so waiting for `AVAILABLE`
/// would only run into the timeout.
pub fn capacity_ready(status: &ZoneStatus) -> Progress {
    match status.status {
        ResourceStatus::Available | ResourceStatus::AvailableCooldown => Progress::Done,
        ResourceStatus::Deleting => Progress::Failed("the zone is being deleted".into()),
        other => Progress::Waiting(format!(
            "status {other}, {} of {} processes ready, {} starting",
            status.processes_idle + status.processes_active,
            status.processes_desired,
            status.processes_starting
        )),
    }
}

async fn wait_for_capacity(client: &Client, id: &str, limit: Duration) -> Result<(), String> {
    poll_until(limit, || async {
        match client.zone_status(id).await {
            Ok(status) => capacity_ready(&status),
            Err(error) if error.is_not_found() => {
                Progress::Failed("the zone disappeared while waiting".into())
            }
            Err(error) => Progress::Waiting(error.to_string()),
        }
    })
    .await
}

async fn wait_until_gone(client: &Client, id: &str, limit: Duration) -> Result<(), String> {
    poll_until(limit, || async {
        match client.get_zone(id).await {
            Ok(zone) => Progress::Waiting(format!("status {}", zone.status)),
            Err(error) if error.is_not_found() => Progress::Done,
            Err(error) => Progress::Waiting(error.to_string()),
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Resource

/// The `fleetform_zone` resource.
pub struct ZoneResource;

#[async_trait]
impl ApiResource for ZoneResource {
    type State = ZoneState;
    type Remote = Zone;
    type Spec = ZoneSpec;
    const NAME: &'static str = "zone";
    const NOUN: &'static str = "zone";
    /// 1: `data_center` and `buffer_rule` are sets (0: lists).
    const VERSION: i64 = 1;

    fn schema() -> Schema {
        zone_schema()
    }

    fn validate(config: &ZoneState) -> Problems {
        validate_zone(config).located(|path, message| locate(config, path, message))
    }

    fn locate(config: &ZoneState, path: AttributePath, message: String) -> (AttributePath, String) {
        locate(config, path, message)
    }

    fn plan(config: ZoneState, prior: Option<&ZoneState>) -> ZoneState {
        ZoneState::plan(config, prior)
    }

    fn replaced_by(prior: &ZoneState, planned: &ZoneState) -> Vec<AttributePath> {
        let mut replace = Vec::new();
        if changes(&prior.fleet_id, &planned.fleet_id) {
            replace.push(AttributePath::new("fleet_id"));
        }
        if changes(&prior.name, &planned.name) {
            replace.push(AttributePath::new("name"));
        }
        replace
    }

    fn id(state: &ZoneState) -> &Value<String> {
        &state.id
    }

    fn spec(planned: &ZoneState) -> Result<ZoneSpec, String> {
        planned.spec()
    }

    /// The provider-only attributes come from `local`; an import gets their defaults.
    fn state(zone: Zone, local: Option<&ZoneState>) -> ZoneState {
        match local {
            Some(local) => ZoneState::from_zone(
                zone,
                or_default(local.wait_for_capacity, true),
                plan_blocks(local.timeouts.clone(), |timeouts| timeouts),
            ),
            None => ZoneState::from_zone(zone, Value::Value(true), Value::Value(Vec::new())),
        }
    }

    fn upgrade(version: i64, state: Json) -> Result<Json, String> {
        match version {
            1 => Ok(state),
            0 => Ok(upgrade_from_0(state)),
            other => Err(format!(
                "the state of this zone is at schema version {other}; this provider knows \
                 versions 0 and 1: use a provider at least as new as the one that wrote it"
            )),
        }
    }

    async fn get(client: &Client, id: &str) -> Result<Zone, ClientError> {
        client.get_zone(id).await
    }

    async fn create(client: &Client, spec: &ZoneSpec) -> Result<Zone, ClientError> {
        client.create_zone(spec).await
    }

    async fn update(client: &Client, id: &str, spec: &ZoneSpec) -> Result<Zone, ClientError> {
        client.update_zone(id, spec).await
    }

    async fn delete(client: &Client, id: &str) -> Result<(), ClientError> {
        client.delete_zone(id).await
    }

    /// Create and update wait for the warm capacity (unless `wait_for_capacity = false`),
    /// delete until the zone is gone, each within its `timeouts` entry.
    async fn settle(
        client: &Client,
        operation: Operation,
        id: &str,
        state: &ZoneState,
    ) -> Result<(), Report> {
        let limit = timeout(&state.timeouts, operation);
        match operation {
            Operation::Create | Operation::Update if !state.waits() => Ok(()),
            // Returned with the state, a create's error makes Terraform keep the zone as
            // tainted, so the next apply replaces it instead of losing track of it.
            Operation::Create => wait_for_capacity(client, id, limit).await.map_err(|why| {
                let processes = state.initial_server_processes.as_ref_option().copied();
                Report::new(
                    "Zone capacity not ready",
                    format!(
                        "Zone {id} was created, but its {} initial server processes are \
                         {why}.\n\nThe zone is tainted and the next apply replaces it. Raise \
                         `timeouts.create`, or set `wait_for_capacity = false` to skip the \
                         wait; the `fleetform_zone_status` data source shows the live figures.",
                        processes.unwrap_or_default()
                    ),
                )
            }),
            Operation::Update => wait_for_capacity(client, id, limit).await.map_err(|why| {
                Report::new(
                    "Zone capacity not ready",
                    format!(
                        "Zone {id} was updated, but its capacity is {why}.\n\nRaise \
                         `timeouts.update`, or set `wait_for_capacity = false` to skip the wait."
                    ),
                )
            }),
            Operation::Delete => wait_until_gone(client, id, limit).await.map_err(|why| {
                Report::new(
                    "Zone not deleted in time",
                    format!(
                        "Zone {id} is being deleted, but it is {why}.\n\nRaise `timeouts.delete`."
                    ),
                )
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Schema

/// Schema of `fleetform_zone`.
pub fn zone_schema() -> Schema {
    use AttributeType::{Bool, Number, String};
    let buffer_rule = block(
        "A buffer rule: from `min_active_sessions` active sessions on, keep this much idle \
         capacity for new sessions. One block is a single rule; several are segment rules, \
         the one in force being the one with the highest threshold the active sessions \
         reached. The rules are a set: their order in the configuration does not matter, \
         and a plan shows the one rule added, removed or changed. At least one is required \
         when `scaling_mode` is `auto`; one has `min_active_sessions = 0`.",
        vec![
            (
                "min_active_sessions",
                defaulted(
                    Number,
                    "Active sessions from which the rule applies. One rule starts at `0` \
                     (default); no two rules share a threshold.",
                ),
            ),
            (
                "available_servers",
                optional(
                    Number,
                    "Idle server processes to keep (free session slots in `parallel` \
                     session mode). Exactly one of `available_servers`, \
                     `available_percent` and `available_predicted` is set.",
                ),
            ),
            (
                "available_percent",
                optional(
                    Number,
                    "Idle capacity to keep, as a percentage (1–1000) of the active \
                     sessions, rounded up.",
                ),
            ),
            (
                "available_predicted",
                optional(
                    Number,
                    "Predictive buffer: hold idle capacity for the session requests \
                     forecast while a new machine boots (from the last minutes' arrivals and \
                     the same time the day before), less the slots that sessions ending \
                     meanwhile free in time, plus this many servers as a safety margin.",
                ),
            ),
        ],
        vec![],
    );
    let machine_model = block(
        "A machine model the data center may buy, in rank order: the first is bought \
         first, the next when the cloud has no capacity. A `vm` data center ranks 1 to 10.",
        vec![
            (
                "instance_type",
                required(String, "Instance type (an EC2 type, `local`, `sim`, …)."),
            ),
            (
                "processes_per_machine",
                required(
                    Number,
                    "Most server processes a machine of this model runs.",
                ),
            ),
        ],
        vec![],
    );
    let data_center = block(
        "A data center of the zone; at least one is required. The data centers are a set, \
         each known by its unique `name`: their order in the configuration does not matter, \
         and a plan shows the one data center added, removed or changed.",
        vec![
            (
                "name",
                required(
                    String,
                    "Name of the data center, unique within the zone: letters, digits, `-` \
                     and `_`.",
                ),
            ),
            (
                "location",
                required(
                    String,
                    "A location the backend offers: an AWS region, `local`, `sim` or a \
                     bare-metal site.",
                ),
            ),
            (
                "priority",
                defaulted(
                    Number,
                    "Lower is preferred; ties are broken by player latency. Default `0`.",
                ),
            ),
            (
                "machine_type",
                defaulted(String, "`vm` (default) or `bare_metal`."),
            ),
            (
                "max_server_processes",
                optional(
                    Number,
                    "Most server processes of a `vm` data center (rounded up to whole \
                     machines). Required for `vm`.",
                ),
            ),
            (
                "bare_metal_machines",
                optional(
                    Number,
                    "Machines a `bare_metal` data center takes from the pool at its \
                     location. Required for `bare_metal`.",
                ),
            ),
        ],
        vec![("machine_model", NestedBlock::List(machine_model))],
    );
    schema(block(
        "A zone: a region of data centers running a fleet's server processes under one \
         scaling policy.",
        vec![
            ("id", computed(String, "Identifier of the zone (`zone-…`).")),
            (
                "fleet_id",
                required(
                    String,
                    "The fleet whose processes the zone runs. Changing it replaces the zone.",
                ),
            ),
            (
                "name",
                required(
                    String,
                    "Name of the zone, used by placement requests: letters, digits, `-` and \
                     `_`. Changing it replaces the zone.",
                ),
            ),
            (
                "scaling_mode",
                defaulted(
                    String,
                    "`auto` (default: follow the buffer rules) or `fixed` (run the sum of \
                     the data centers' maximums, for debugging and QA).",
                ),
            ),
            (
                "initial_server_processes",
                required(
                    Number,
                    "Warm-up count after creation and the minimum in `auto` mode; at least 1.",
                ),
            ),
            (
                "free_slots_min",
                optional(
                    Number,
                    "Fewest free process slots kept on running VMs: room to start a process \
                     in seconds instead of booting a machine. At most `free_slots_max`.",
                ),
            ),
            (
                "free_slots_max",
                optional(
                    Number,
                    "Most free process slots kept on running VMs; at least \
                     `free_slots_min`. When whole machines can't satisfy both bounds, the \
                     minimum wins.",
                ),
            ),
            (
                "cooldown_minutes",
                defaulted(
                    Number,
                    "After this many minutes without active sessions VM capacity scales to \
                     zero (`AVAILABLE_COOLDOWN`) until a placement wakes it. Default `0` (off).",
                ),
            ),
            (
                "placement_strategy",
                defaulted(
                    String,
                    "`pack` (default: fill busy machines first so idle ones can scale in) or \
                     `spread`.",
                ),
            ),
            (
                "wait_for_capacity",
                defaulted(
                    Bool,
                    "Create and update wait until the initial server processes are ready, \
                     within `timeouts`. Default `true`. Kept in the state only; not sent to \
                     fleetformd.",
                ),
            ),
        ],
        vec![
            ("buffer_rule", NestedBlock::Set(buffer_rule)),
            ("data_center", NestedBlock::Set(data_center)),
            ("timeouts", timeouts::timeouts_block()),
        ],
    ))
}

#[cfg(test)]
mod tests;
