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
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(u64::from(request.wait_seconds.unwrap_or(0)));
    let session_id = new_id("sess");
    // Watched once the first attempt names the zone; then an attempt follows each time
    // the zone gains capacity, until the deadline.
    let mut capacity: Option<tokio::sync::watch::Receiver<u64>> = None;
    let mut counted = false;
    loop {
        let outcome = state
            .store
            .place_session(PlaceArgs {
                fleet: fleet.clone(),
                zone: request.zone.clone(),
                session_id: session_id.clone(),
                max_players: request.max_players,
                properties: request.properties.clone().unwrap_or_default(),
                idempotency_key: request.idempotency_key.clone(),
                latencies_ms: request.player_latencies_ms.clone().unwrap_or_default(),
                max_latency_ms: request.max_latency_ms,
                now_ms: now_ms(),
            })
            .await?;
        if !counted {
            // Demand for the forecast: every request, placed or not, counted once.
            state.demand.record(outcome.zone_id(), now_ms());
            counted = true;
        }
        let zone_id = match outcome {
            PlaceOutcome::Placed(session) | PlaceOutcome::Repeated(session) => {
                return Ok((StatusCode::CREATED, Json(session)))
            }
            PlaceOutcome::NoCapacity { zone_id } => zone_id,
        };
        let no_capacity = || Error::NoCapacity {
            zone: request.zone.clone(),
            retry_after_secs: RETRY_AFTER_SECS,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(no_capacity());
        }
        match &mut capacity {
            None => {
                // Watch first, then try again at once: capacity that came between the
                // attempt and the watch is not missed.
                capacity = Some(state.store.changes().watch_capacity(&zone_id));
            }
            Some(watch) => {
                if tokio::time::timeout_at(deadline, watch.changed())
                    .await
                    .is_err()
                {
                    return Err(no_capacity());
                }
            }
        }
    }
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
    let outcome = state
        .store
        .end_session(&id, now_ms())
        .await?
        .ok_or_else(|| Error::not_found("session", &id))?;
    if outcome.ended_now {
        state
            .demand
            .record_ends(&outcome.session.zone_id, now_ms(), 1);
    }
    Ok(Json(outcome.session))
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
            "cursor" => filter.cursor = Some(value),
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
                        "unknown filter {other:?}; filters: fleet, zone, data_center, machine, build, status, limit, cursor"
                    ),
                    field: Some(other.to_string()),
                })
            }
        }
    }
    let page = state.store.list_sessions(&filter).await?;
    Ok(Json(SessionList {
        sessions: page.items,
        next_cursor: page.next_cursor,
    }))
}
