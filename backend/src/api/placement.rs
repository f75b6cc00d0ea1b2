//! Placement routes used by the matchmaker.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use fleetform_api::validate::validate_placement;
use fleetform_api::{PlacementRequest, Session, SessionList, SessionStatus};

use super::admin::load_fleet;
use super::extract::{Id, JsonBody, QueryMap};
use super::AppState;
use crate::store::{PlaceArgs, PlaceOutcome, SessionFilter};
use crate::time::{new_id, now_ms};
use crate::{Error, Result};

/// Seconds a client should wait before retrying a placement that found no capacity.
const RETRY_AFTER_SECS: u64 = 2;

pub async fn place(
    State(state): State<AppState>,
    Id(fleet): Id,
    JsonBody(request): JsonBody<PlacementRequest>,
) -> Result<(StatusCode, Json<Session>)> {
    if let Some(error) = validate_placement(&request).into_iter().next() {
        return Err(error.into());
    }
    let fleet = load_fleet(&state, &fleet).await?;
    let zone = state
        .store
        .find_zone(&fleet.id, &request.zone)
        .await?
        .ok_or_else(|| {
            Error::invalid(
                "zone",
                format!("fleet {} has no zone {:?}", fleet.name, request.zone),
            )
        })?;
    if zone.deleting {
        return Err(Error::conflict(
            "zone_deleting",
            format!("zone {} is being deleted", zone.zone.spec.name),
        ));
    }
    state.demand.record(&zone.zone.id, now_ms());
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(u64::from(request.wait_seconds.unwrap_or(0)));
    let mut changes = state.changes.subscribe();
    let session_id = new_id("sess");
    loop {
        // Read the generation before looking, so a change during the attempt wakes us.
        changes.borrow_and_update();
        let outcome = state
            .store
            .place_session(PlaceArgs {
                fleet: &fleet,
                zone: &zone.zone,
                session_id: session_id.clone(),
                max_players: request.max_players,
                properties: request.properties.clone().unwrap_or_default(),
                idempotency_key: request.idempotency_key.clone(),
                latencies_ms: request.player_latencies_ms.clone().unwrap_or_default(),
                max_latency_ms: request.max_latency_ms,
                strategy: zone.zone.spec.placement_strategy,
                now_ms: now_ms(),
            })
            .await?;
        match outcome {
            PlaceOutcome::Placed(session) => {
                // Wake the agent's long-poll: its process has a session now.
                state.changes.bump();
                return Ok((StatusCode::CREATED, Json(session)));
            }
            PlaceOutcome::Repeated(session) => return Ok((StatusCode::CREATED, Json(session))),
            PlaceOutcome::NoCapacity => {
                if woke_from_cooldown(&state, &zone.zone.id).await? {
                    // The reconciler brings the zone back to its initial capacity now.
                    state.changes.bump();
                }
                let timed_out = tokio::time::timeout_at(deadline, changes.changed()).await;
                if timed_out.is_err() || tokio::time::Instant::now() >= deadline {
                    return Err(Error::NoCapacity {
                        zone: zone.zone.spec.name.clone(),
                        retry_after_secs: RETRY_AFTER_SECS,
                    });
                }
            }
        }
    }
}

/// A placement that finds a zone in cooldown wakes it: its idle clock restarts, so the
/// plan stops cooling and brings back `initial_server_processes`.
async fn woke_from_cooldown(state: &AppState, zone_id: &str) -> Result<bool> {
    let Some(record) = state.store.get_zone(zone_id).await? else {
        return Ok(false);
    };
    if record.zone.status != fleetform_api::ResourceStatus::AvailableCooldown {
        return Ok(false);
    }
    state.store.touch_zone(zone_id, now_ms()).await?;
    Ok(true)
}

pub async fn get(State(state): State<AppState>, Id(id): Id) -> Result<Json<Session>> {
    state
        .store
        .get_session(&id)
        .await?
        .map(Json)
        .ok_or_else(|| Error::not_found("session", id))
}

pub async fn end(State(state): State<AppState>, Id(id): Id) -> Result<Json<Session>> {
    let was_active = state
        .store
        .get_session(&id)
        .await?
        .is_some_and(|session| session.status == SessionStatus::Active);
    let session = state
        .store
        .end_session(&id, now_ms())
        .await?
        .ok_or_else(|| Error::not_found("session", &id))?;
    if was_active {
        state.demand.record_ends(&session.zone_id, now_ms(), 1);
    }
    state.changes.bump();
    Ok(Json(session))
}

pub async fn list(
    State(state): State<AppState>,
    QueryMap(query): QueryMap,
) -> Result<Json<SessionList>> {
    let mut filter = SessionFilter {
        limit: 1000,
        ..SessionFilter::default()
    };
    for (key, value) in query {
        match key.as_str() {
            "fleet" => filter.fleet_id = Some(load_fleet(&state, &value).await?.id),
            "zone" => filter.zone_id = Some(value),
            "data_center" => filter.data_center = Some(value),
            "machine" => filter.machine_id = Some(value),
            "build" => filter.build_id = Some(value),
            "status" => {
                filter.status = Some(value.parse::<SessionStatus>().map_err(|message| {
                    Error::invalid("status", message)
                })?)
            }
            "limit" => {
                filter.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|limit| (1..=10_000).contains(limit))
                    .ok_or_else(|| Error::invalid("limit", "must be an integer from 1 to 10000"))?
            }
            other => {
                return Err(Error::BadRequest {
                    message: format!(
                        "unknown filter {other:?}; filters: fleet, zone, data_center, machine, build, status, limit"
                    ),
                    field: Some(other.to_string()),
                })
            }
        }
    }
    let sessions = state.store.list_sessions(&filter).await?;
    Ok(Json(SessionList { sessions }))
}
