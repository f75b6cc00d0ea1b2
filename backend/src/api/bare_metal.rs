//! The bare-metal pool's admin routes: `/v1/bare-metal-machines[/{id}]`.
//!
//! A pool machine is registered with the location it stands in and gets its own agent
//! token; zones take machines from the pool of a location (see `crate::zones`). Removing a
//! machine revokes its token; one that hosts active sessions cannot be removed (409).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use fleetform_api::validate::validate_bare_metal_spec;
use fleetform_api::{BareMetalMachine, BareMetalMachineList, BareMetalMachineSpec, MachineType};

use super::admin::{immutable, location_machine_type};
use super::extract::{Id, JsonBody, QueryMap};
use super::AppState;
use crate::time::{new_id, now_ms, rfc3339};
use crate::zones::new_agent_token;
use crate::{Error, Result};

fn check(spec: &BareMetalMachineSpec, state: &AppState) -> Result<()> {
    if let Some(error) = validate_bare_metal_spec(spec).into_iter().next() {
        return Err(error.into());
    }
    let pools: Vec<&str> = state
        .locations
        .values()
        .filter(|location| location_machine_type(location) == MachineType::BareMetal)
        .map(|location| location.name.as_str())
        .collect();
    if !pools.contains(&spec.location.as_str()) {
        return Err(Error::invalid(
            "location",
            format!(
                "location {:?} is not a bare-metal location of this server (bare-metal locations: {})",
                spec.location,
                if pools.is_empty() {
                    "none; add a [[location]] with driver = \"bare_metal\" to the server's config".to_string()
                } else {
                    pools.join(", ")
                }
            ),
        ));
    }
    Ok(())
}

async fn load(state: &AppState, id: &str) -> Result<BareMetalMachine> {
    state
        .store
        .get_bare_metal(id)
        .await?
        .ok_or_else(|| Error::not_found("bare-metal machine", id))
}

pub async fn create(
    State(state): State<AppState>,
    JsonBody(spec): JsonBody<BareMetalMachineSpec>,
) -> Result<(StatusCode, Json<BareMetalMachine>)> {
    check(&spec, &state)?;
    let (agent_token, hash) = new_agent_token();
    let machine = BareMetalMachine {
        id: new_id("bm"),
        name: spec.name,
        location: spec.location,
        address: spec.address,
        cores: spec.cores,
        memory_gb: spec.memory_gb,
        labels: spec.labels,
        agent_token,
        created_at: rfc3339(now_ms()),
        machine_id: None,
        zone_id: None,
        last_heartbeat_at: None,
    };
    state.store.insert_bare_metal(&machine, &hash).await?;
    // A zone may be waiting for a machine at this location.
    Ok((StatusCode::CREATED, Json(machine)))
}

pub async fn get(State(state): State<AppState>, Id(id): Id) -> Result<Json<BareMetalMachine>> {
    Ok(Json(load(&state, &id).await?))
}

/// `GET /v1/bare-metal-machines?location=`: the pool, by name.
pub async fn list(
    State(state): State<AppState>,
    QueryMap(query): QueryMap,
) -> Result<Json<BareMetalMachineList>> {
    let mut location = None;
    for (key, value) in query {
        match key.as_str() {
            "location" => location = Some(value),
            other => {
                return Err(Error::BadRequest {
                    message: format!("unknown filter {other:?}; filters: location"),
                    field: Some(other.to_string()),
                })
            }
        }
    }
    Ok(Json(BareMetalMachineList {
        machines: state.store.list_bare_metal(location.as_deref()).await?,
    }))
}

pub async fn update(
    State(state): State<AppState>,
    Id(id): Id,
    JsonBody(spec): JsonBody<BareMetalMachineSpec>,
) -> Result<Json<BareMetalMachine>> {
    if let Some(error) = validate_bare_metal_spec(&spec).into_iter().next() {
        return Err(error.into());
    }
    let mut machine = load(&state, &id).await?;
    if spec.location != machine.location {
        return Err(immutable("location", "bare-metal machine"));
    }
    machine.name = spec.name;
    machine.address = spec.address;
    machine.cores = spec.cores;
    machine.memory_gb = spec.memory_gb;
    machine.labels = spec.labels;
    state.store.update_bare_metal(&machine).await?;
    Ok(Json(load(&state, &id).await?))
}

pub async fn delete(State(state): State<AppState>, Id(id): Id) -> Result<StatusCode> {
    if state.store.delete_bare_metal(&id, now_ms()).await? {
        // Its agent hears 401 at its next sync; its zone takes another machine if it can.
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::not_found("bare-metal machine", id))
    }
}
