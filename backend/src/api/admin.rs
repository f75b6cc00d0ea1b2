//! Admin routes used by the provider: builds, fleets, zones, locations, live figures.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use fleetform_api::validate::{validate_build_spec, validate_fleet_spec, validate_zone_spec};
use fleetform_api::*;

use super::extract::{Id, JsonBody, QueryMap};
use super::AppState;
use crate::store::{MachineFilter, MachineRecord, ProcessFilter, ProcessRecord, ProcessState};
use crate::time::{new_id, now_ms, rfc3339};
use crate::{Error, Result};

fn first_error(errors: Vec<validate::FieldError>) -> Result<()> {
    match errors.into_iter().next() {
        Some(error) => Err(error.into()),
        None => Ok(()),
    }
}

pub(super) fn immutable(field: &str, what: &str) -> Error {
    Error::invalid(
        field,
        format!("cannot be changed on an existing {what}; create a new one instead"),
    )
}

// -- builds -----------------------------------------------------------------------------------

pub async fn create_build(
    State(state): State<AppState>,
    JsonBody(spec): JsonBody<BuildSpec>,
) -> Result<(StatusCode, Json<Build>)> {
    first_error(validate_build_spec(&spec))?;
    let build = Build {
        id: new_id("bld"),
        name: spec.name,
        version: spec.version,
        operating_system: spec.operating_system,
        source: spec.source,
        sha256: spec.sha256,
        created_at: rfc3339(now_ms()),
    };
    state.store.insert_build(&build).await?;
    Ok((StatusCode::CREATED, Json(build)))
}

async fn load_build(state: &AppState, id: &str) -> Result<Build> {
    state
        .store
        .get_build(id)
        .await?
        .ok_or_else(|| Error::not_found("build", id))
}

pub async fn get_build(State(state): State<AppState>, Id(id): Id) -> Result<Json<Build>> {
    Ok(Json(load_build(&state, &id).await?))
}

pub async fn update_build(
    State(state): State<AppState>,
    Id(id): Id,
    JsonBody(spec): JsonBody<BuildSpec>,
) -> Result<Json<Build>> {
    first_error(validate_build_spec(&spec))?;
    let mut build = load_build(&state, &id).await?;
    if spec.operating_system != build.operating_system {
        return Err(immutable("operating_system", "build"));
    }
    if spec.source != build.source {
        return Err(immutable("source", "build"));
    }
    if spec.sha256 != build.sha256 {
        return Err(immutable("sha256", "build"));
    }
    build.name = spec.name;
    build.version = spec.version;
    state.store.update_build(&build).await?;
    Ok(Json(build))
}

pub async fn delete_build(State(state): State<AppState>, Id(id): Id) -> Result<StatusCode> {
    if state.store.delete_build(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::not_found("build", id))
    }
}

// -- fleets -----------------------------------------------------------------------------------

async fn check_build_exists(state: &AppState, build_id: &str) -> Result<()> {
    if state.store.get_build(build_id).await?.is_none() {
        return Err(Error::invalid(
            "build_id",
            format!("build {build_id:?} does not exist"),
        ));
    }
    Ok(())
}

/// A fleet's status is that of its best zone: a fleet is available when any zone is;
/// but a fleet whose current build crash-loops is `UNAVAILABLE` whatever its zones say
/// (the store reads it so, see `crate::crash_loop`).
async fn with_status(state: &AppState, mut fleet: Fleet) -> Result<Fleet> {
    if fleet.status == ResourceStatus::Unavailable {
        return Ok(fleet);
    }
    let zones = state.store.list_zones().await?;
    let statuses: Vec<ResourceStatus> = zones
        .iter()
        .filter(|z| z.zone.spec.fleet_id == fleet.id)
        .map(|z| z.zone.status)
        .collect();
    fleet.status = [
        ResourceStatus::Available,
        ResourceStatus::AvailableCooldown,
        ResourceStatus::Launching,
        ResourceStatus::Unavailable,
        ResourceStatus::Deleting,
    ]
    .into_iter()
    .find(|status| statuses.contains(status))
    .unwrap_or(ResourceStatus::New);
    Ok(fleet)
}

pub async fn create_fleet(
    State(state): State<AppState>,
    JsonBody(spec): JsonBody<FleetSpec>,
) -> Result<(StatusCode, Json<Fleet>)> {
    first_error(validate_fleet_spec(&spec))?;
    check_build_exists(&state, &spec.build_id).await?;
    let fleet = Fleet {
        id: new_id("flt"),
        name: spec.name,
        description: spec.description,
        build_id: spec.build_id,
        update_mode: spec.update_mode,
        launch_path: spec.launch_path,
        launch_parameters: spec.launch_parameters,
        process_restart_hours: spec.process_restart_hours,
        session_mode: spec.session_mode,
        sessions_per_process: spec.sessions_per_process,
        storage_gb: spec.storage_gb,
        force_destroy: spec.force_destroy,
        status: ResourceStatus::New,
        created_at: rfc3339(now_ms()),
    };
    state.store.insert_fleet(&fleet).await?;
    Ok((StatusCode::CREATED, Json(fleet)))
}

/// A fleet by id or name, or a 404.
pub async fn load_fleet(state: &AppState, id_or_name: &str) -> Result<Fleet> {
    state
        .store
        .get_fleet(id_or_name)
        .await?
        .ok_or_else(|| Error::not_found("fleet", id_or_name))
}

pub async fn get_fleet(State(state): State<AppState>, Id(id): Id) -> Result<Json<Fleet>> {
    let fleet = load_fleet(&state, &id).await?;
    Ok(Json(with_status(&state, fleet).await?))
}

pub async fn update_fleet(
    State(state): State<AppState>,
    Id(id): Id,
    JsonBody(spec): JsonBody<FleetSpec>,
) -> Result<Json<Fleet>> {
    first_error(validate_fleet_spec(&spec))?;
    let mut fleet = load_fleet(&state, &id).await?;
    if spec.name != fleet.name {
        return Err(immutable("name", "fleet"));
    }
    if spec.session_mode != fleet.session_mode {
        return Err(immutable("session_mode", "fleet"));
    }
    check_build_exists(&state, &spec.build_id).await?;
    fleet.description = spec.description;
    fleet.build_id = spec.build_id;
    fleet.update_mode = spec.update_mode;
    fleet.launch_path = spec.launch_path;
    fleet.launch_parameters = spec.launch_parameters;
    fleet.process_restart_hours = spec.process_restart_hours;
    fleet.sessions_per_process = spec.sessions_per_process;
    fleet.storage_gb = spec.storage_gb;
    fleet.force_destroy = spec.force_destroy;
    state.store.update_fleet(&fleet).await?;
    // Read back: the update may have lifted a crash-loop verdict.
    let fleet = load_fleet(&state, &fleet.id).await?;
    Ok(Json(with_status(&state, fleet).await?))
}

pub async fn delete_fleet(State(state): State<AppState>, Id(id): Id) -> Result<StatusCode> {
    let fleet = load_fleet(&state, &id).await?;
    state.store.delete_fleet(&fleet.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn machine_view(machine: MachineRecord) -> Machine {
    Machine {
        id: machine.id,
        fleet_id: machine.fleet_id,
        zone_id: machine.zone_id,
        data_center: machine.data_center,
        location: machine.location,
        instance_type: machine.instance_type,
        processes_per_machine: machine.processes_per_machine,
        status: machine.status,
        build_id: machine.build_id,
        address: machine.address,
        driver_ref: machine.driver_ref,
        created_at: rfc3339(machine.created_at_ms),
        last_heartbeat_at: machine.last_heartbeat_ms.map(rfc3339),
        terminated_at: machine.terminated_at_ms.map(rfc3339),
        termination_reason: machine.termination_reason,
        bare_metal_id: machine.bare_metal_id,
    }
}

/// The status a process shows: what its agent reports, refined by its sessions.
pub fn process_status(process: &ProcessRecord, mode: SessionMode) -> ProcessStatus {
    use fleetform_api::agent::AgentProcessState as Agent;
    match process.state {
        ProcessState::Live(Agent::Starting) => ProcessStatus::Starting,
        ProcessState::Live(Agent::Stopping) => ProcessStatus::Draining,
        ProcessState::Live(Agent::Ready) if process.active_sessions > 0 => ProcessStatus::Active,
        // A simple-mode process that hosted its one session restarts: it takes no more.
        ProcessState::Live(Agent::Ready) if process.spent(mode) => ProcessStatus::Draining,
        ProcessState::Live(Agent::Ready) => ProcessStatus::Ready,
        ProcessState::Exited => ProcessStatus::Exited,
        ProcessState::Crashed => ProcessStatus::Crashed,
    }
}

/// The `limit` of a list query: 1 to 10,000, 1,000 when not given.
pub(super) fn list_limit(value: &str) -> Result<u32> {
    value
        .parse::<u32>()
        .ok()
        .filter(|limit| (1..=10_000).contains(limit))
        .ok_or_else(|| Error::invalid("limit", "must be an integer from 1 to 10000"))
}

/// `GET /v1/fleets/{id}/machines?id=&address=&status=&build=&data_center=&zone=&limit=&cursor=`:
/// the fleet's machines in id order, every filter given must match, a page at a time.
pub async fn fleet_machines(
    State(state): State<AppState>,
    Id(id): Id,
    QueryMap(query): QueryMap,
) -> Result<Json<MachineList>> {
    let fleet = load_fleet(&state, &id).await?;
    let mut shown: Option<MachineStatus> = None;
    let mut filter = MachineFilter {
        limit: 1000,
        ..MachineFilter::default()
    };
    for (key, value) in query {
        match key.as_str() {
            "status" => {
                shown = Some(
                    value
                        .parse::<MachineStatus>()
                        .map_err(|message| Error::invalid("status", message))?,
                )
            }
            "id" => filter.id = Some(value),
            "address" => filter.address = Some(value),
            "build" => filter.build_id = Some(value),
            "data_center" => filter.data_center = Some(value),
            "zone" => filter.zone_id = Some(value),
            "limit" => filter.limit = list_limit(&value)?,
            "cursor" => filter.cursor = Some(value),
            other => {
                return Err(Error::BadRequest {
                    message: format!(
                        "unknown filter {other:?}; filters: id, address, status, build, data_center, zone, limit, cursor"
                    ),
                    field: Some(other.to_string()),
                })
            }
        }
    }
    // WAITING_UPDATE is shown, not stored: it is an ACTIVE machine still running an old
    // build's process.
    filter.status = shown.map(|status| match status {
        MachineStatus::WaitingUpdate => MachineStatus::Active,
        other => other,
    });
    let page = state.store.fleet_machines(&fleet.id, &filter).await?;
    let waiting = state
        .store
        .machines_on_other_builds(&fleet.id, &fleet.build_id)
        .await?;
    Ok(Json(MachineList {
        machines: page
            .items
            .into_iter()
            .map(|mut m| {
                m.status = shown_status(&m, &waiting);
                m
            })
            .filter(|m| shown.is_none_or(|status| m.status == status))
            .map(machine_view)
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Machines that still run a live process of another build than the fleet's current one:
/// during a soft update those processes finish their sessions, take no new one, and are
/// replaced once idle.
pub fn waiting_update<'a>(
    build_id: &str,
    processes: impl IntoIterator<Item = &'a ProcessRecord>,
) -> std::collections::BTreeSet<&'a str> {
    processes
        .into_iter()
        .filter(|p| p.state.is_live() && p.build_id != build_id)
        .map(|p| p.machine_id.as_str())
        .collect()
}

/// The status a machine shows: `WAITING_UPDATE` while an `ACTIVE` machine waits for its
/// old build's processes to finish (see [`waiting_update`]), else its stored status.
pub fn shown_status<S: std::borrow::Borrow<str> + Ord>(
    machine: &MachineRecord,
    waiting: &std::collections::BTreeSet<S>,
) -> MachineStatus {
    if machine.status == MachineStatus::Active && waiting.contains(machine.id.as_str()) {
        MachineStatus::WaitingUpdate
    } else {
        machine.status
    }
}

/// `POST /v1/machines/{id}/revoke`: takes a machine out of service at once. Its sessions
/// end LOST (the answer says how many, and so does an event); it drains, is stopped, and
/// the zone's plan replaces it.
pub async fn revoke_machine(
    State(state): State<AppState>,
    Id(id): Id,
) -> Result<Json<MachineOperation>> {
    let reason = "machine revoked by an operator";
    let sessions_lost = state.store.revoke_machine(&id, reason, now_ms()).await?;
    operation_done(&state, &id, sessions_lost, "MACHINE_REVOKED", |lost| {
        format!("machine {id} revoked by an operator: {lost} sessions LOST; it is replaced")
    })
    .await
}

/// `POST /v1/machines/{id}/reboot`: restarts every game-server process of a machine in
/// service. Its sessions end LOST at once (counted in the answer and an event); its
/// processes take no new session and its agent replaces them with fresh ones. The machine
/// itself stays: the same address, the same instance or pool machine.
pub async fn reboot_machine(
    State(state): State<AppState>,
    Id(id): Id,
) -> Result<Json<MachineOperation>> {
    let reason = "machine rebooted by an operator";
    let sessions_lost = state.store.reboot_machine(&id, reason, now_ms()).await?;
    operation_done(&state, &id, sessions_lost, "MACHINE_REBOOTED", |lost| {
        format!("machine {id} rebooted by an operator: {lost} sessions LOST; its processes restart")
    })
    .await
}

/// The answer and event of an operation on machine `id` that ended `sessions_lost`
/// sessions, or why it could not run (`None`: unknown, or not in service).
async fn operation_done(
    state: &AppState,
    id: &str,
    sessions_lost: Option<u32>,
    code: &'static str,
    message: impl FnOnce(u32) -> String,
) -> Result<Json<MachineOperation>> {
    let machine = state.store.get_machine(id).await?;
    let (Some(sessions_lost), Some(machine)) = (sessions_lost, machine.clone()) else {
        return Err(match machine {
            None => Error::not_found("machine", id),
            Some(machine) => Error::conflict(
                "machine_not_in_service",
                format!(
                    "machine {id} is not in service ({})",
                    machine.status.as_str()
                ),
            ),
        });
    };
    state
        .store
        .insert_event(
            &crate::store::EventRecord::new(
                EventLevel::Warning,
                EventProducer::Machine,
                code,
                message(sessions_lost),
            )
            .fleet(&machine.fleet_id)
            .zone(&machine.zone_id)
            .machine(&machine.id),
        )
        .await?;
    Ok(Json(MachineOperation {
        machine: machine_view(machine),
        sessions_lost,
    }))
}

/// `GET /v1/fleets/{id}/processes?live=&machine=&limit=&cursor=`: the fleet's processes
/// in id order (`live=true`: only those running now, not history), a page at a time.
pub async fn fleet_processes(
    State(state): State<AppState>,
    Id(id): Id,
    QueryMap(query): QueryMap,
) -> Result<Json<ProcessList>> {
    let fleet = load_fleet(&state, &id).await?;
    let mut filter = ProcessFilter {
        limit: 1000,
        ..ProcessFilter::default()
    };
    for (key, value) in query {
        match key.as_str() {
            "live" => {
                filter.live_only = value
                    .parse::<bool>()
                    .map_err(|_| Error::invalid("live", "must be true or false"))?
            }
            "machine" => filter.machine_id = Some(value),
            "limit" => filter.limit = list_limit(&value)?,
            "cursor" => filter.cursor = Some(value),
            other => {
                return Err(Error::BadRequest {
                    message: format!(
                        "unknown filter {other:?}; filters: live, machine, limit, cursor"
                    ),
                    field: Some(other.to_string()),
                })
            }
        }
    }
    let page = state.store.fleet_processes(&fleet.id, &filter).await?;
    Ok(Json(ProcessList {
        processes: page
            .items
            .into_iter()
            .map(|p| Process {
                status: process_status(&p, fleet.session_mode),
                id: p.id,
                machine_id: p.machine_id,
                zone_id: p.zone_id,
                build_id: p.build_id,
                port: p.port,
                pid: p.pid,
                active_sessions: p.active_sessions,
                started_at: rfc3339(p.started_at_ms),
            })
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

// -- zones ------------------------------------------------------------------------------------

/// Checks what a zone refers to: its fleet and its data centers' locations.
async fn check_zone_refs(state: &AppState, spec: &ZoneSpec) -> Result<()> {
    if state.store.get_fleet(&spec.fleet_id).await?.is_none() {
        return Err(Error::invalid(
            "fleet_id",
            format!("fleet {:?} does not exist", spec.fleet_id),
        ));
    }
    for (index, dc) in spec.data_centers.iter().enumerate() {
        if !state.locations.contains_key(&dc.location) {
            let offered: Vec<&str> = state.locations.keys().map(String::as_str).collect();
            return Err(Error::invalid(
                format!("data_centers[{index}].location"),
                format!(
                    "location {:?} is not offered by this server (offered: {})",
                    dc.location,
                    offered.join(", ")
                ),
            ));
        }
        let offers = location_machine_type(&state.locations[&dc.location]);
        if dc.machine_type != offers {
            return Err(Error::invalid(
                format!("data_centers[{index}].machine_type"),
                format!(
                    "location {:?} offers {} machines, not {}",
                    dc.location,
                    offers.as_str(),
                    dc.machine_type.as_str()
                ),
            ));
        }
    }
    Ok(())
}

pub async fn create_zone(
    State(state): State<AppState>,
    JsonBody(spec): JsonBody<ZoneSpec>,
) -> Result<(StatusCode, Json<Zone>)> {
    first_error(validate_zone_spec(&spec))?;
    check_zone_refs(&state, &spec).await?;
    // The fleet may be named; the zone stores its id.
    let fleet = load_fleet(&state, &spec.fleet_id).await?;
    let mut spec = spec;
    spec.fleet_id = fleet.id;
    let zone = Zone {
        id: new_id("zone"),
        spec: spec.into(),
        status: ResourceStatus::New,
        created_at: rfc3339(now_ms()),
    };
    state.store.insert_zone(&zone).await?;
    Ok((StatusCode::CREATED, Json(zone)))
}

async fn load_zone(state: &AppState, id: &str) -> Result<Zone> {
    state
        .store
        .get_zone(id)
        .await?
        .map(|record| record.zone)
        .ok_or_else(|| Error::not_found("zone", id))
}

pub async fn get_zone(State(state): State<AppState>, Id(id): Id) -> Result<Json<Zone>> {
    Ok(Json(load_zone(&state, &id).await?))
}

pub async fn update_zone(
    State(state): State<AppState>,
    Id(id): Id,
    JsonBody(spec): JsonBody<ZoneSpec>,
) -> Result<Json<Zone>> {
    first_error(validate_zone_spec(&spec))?;
    let record = state
        .store
        .get_zone(&id)
        .await?
        .ok_or_else(|| Error::not_found("zone", &id))?;
    let mut zone = record.zone;
    if record.deleting {
        return Err(Error::conflict(
            "zone_deleting",
            format!("zone {id} is being deleted"),
        ));
    }
    if spec.fleet_id != zone.spec.fleet_id {
        return Err(immutable("fleet_id", "zone"));
    }
    if spec.name != zone.spec.name {
        return Err(immutable("name", "zone"));
    }
    check_zone_refs(&state, &spec).await?;
    zone.spec = spec.into();
    state.store.update_zone(&zone).await?;
    Ok(Json(zone))
}

pub async fn delete_zone(State(state): State<AppState>, Id(id): Id) -> Result<StatusCode> {
    let zone = load_zone(&state, &id).await?;
    let force = state
        .store
        .get_fleet(&zone.spec.fleet_id)
        .await?
        .is_some_and(|fleet| fleet.force_destroy);
    state.store.begin_zone_deletion(&zone.id, force).await?;
    Ok(StatusCode::ACCEPTED)
}

pub async fn zone_status(State(state): State<AppState>, Id(id): Id) -> Result<Json<ZoneStatus>> {
    let zone = load_zone(&state, &id).await?;
    let fleet = load_fleet(&state, &zone.spec.fleet_id).await?;
    let observed = state.store.zone_observation(&zone.id).await?;
    let sessions = state.store.zone_active_sessions(&zone.id).await?;
    let waiting = waiting_update(&fleet.build_id, &observed.processes);
    let mut machines: BTreeMap<String, u32> = BTreeMap::new();
    for machine in &observed.machines {
        *machines
            .entry(shown_status(machine, &waiting).to_string())
            .or_default() += 1;
    }
    let mut status = ZoneStatus {
        zone_id: zone.id.clone(),
        status: zone.status,
        machines,
        processes_idle: 0,
        processes_active: 0,
        processes_starting: 0,
        processes_desired: 0,
        active_sessions: sessions.len() as u32,
        players: sessions.iter().filter_map(|s| s.max_players).sum(),
        processes_by_build: BTreeMap::new(),
    };
    for process in &observed.processes {
        *status
            .processes_by_build
            .entry(process.build_id.clone())
            .or_default() += 1;
        match process_status(process, fleet.session_mode) {
            ProcessStatus::Ready => status.processes_idle += 1,
            ProcessStatus::Active => status.processes_active += 1,
            ProcessStatus::Starting => status.processes_starting += 1,
            _ => {}
        }
    }
    // What the reconciler last decided: the targets of the machines it keeps.
    status.processes_desired = observed
        .machines
        .iter()
        .filter(|m| {
            !matches!(
                m.status,
                MachineStatus::Terminating | MachineStatus::Terminated | MachineStatus::Unhealthy
            )
        })
        .map(|m| m.target_processes.min(m.processes_per_machine))
        .sum();
    Ok(Json(status))
}

/// The kind of machine a location offers: its bare-metal pool, or VMs for every other
/// driver.
pub fn location_machine_type(location: &crate::machines::Location) -> MachineType {
    if location.driver.kind() == "bare_metal" {
        MachineType::BareMetal
    } else {
        MachineType::Vm
    }
}

pub async fn locations(State(state): State<AppState>) -> Json<Vec<Location>> {
    Json(
        state
            .locations
            .values()
            .map(|location| Location {
                name: location.name.clone(),
                driver: location.driver.kind().to_string(),
                machine_types: vec![location_machine_type(location)],
            })
            .collect(),
    )
}
