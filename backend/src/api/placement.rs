//! Placement routes used by the matchmaker.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleetform_api::validate::validate_placement;
use fleetform_api::{PlacementRequest, Session, SessionList, SessionStatus};

use super::admin::load_fleet;
use super::extract::{Id, JsonBody, QueryMap};
use super::forward;
use super::AppState;
use crate::store::{PlaceArgs, PlaceOutcome, SessionFilter};
use crate::time::{new_id, now_ms};
use crate::{Error, Result};

/// Seconds a client should wait before retrying a placement that found no capacity.
const RETRY_AFTER_SECS: u64 = 2;

pub async fn place(
    State(state): State<AppState>,
    headers: HeaderMap,
    Id(fleet): Id,
    JsonBody(request): JsonBody<PlacementRequest>,
) -> Result<Response> {
    if let Some(error) = validate_placement(&request).into_iter().next() {
        return Err(error.into());
    }
    // Served by the replica holding the zone's lease (its free-slot index is there).
    if let Some(owner) = forward::owner(&state, &headers, &fleet, &request.zone) {
        let body = serde_json::to_vec(&request).map_err(|e| Error::Internal(e.to_string()))?;
        let path = format!("/v1/fleets/{}/sessions", path_segment(&fleet));
        if let Some(answer) =
            forward::send(&state, &owner, Method::POST, &path, &headers, body).await
        {
            return Ok(answer);
        }
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
                let mut answer = (StatusCode::CREATED, Json(&session)).into_response();
                if state.leases.held(&session.zone_id).is_some() {
                    if let Ok(url) = HeaderValue::from_str(&state.leases.url) {
                        answer.headers_mut().insert(forward::ZONE_REPLICA, url);
                    }
                }
                return Ok(answer);
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
                // Until capacity, the deadline, or a shutdown (answered now: no capacity,
                // retry, which a client does against another replica).
                let woke = tokio::select! {
                    changed = tokio::time::timeout_at(deadline, watch.changed()) => changed.is_ok(),
                    _ = state.closed() => false,
                };
                if !woke {
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

pub async fn end(
    State(state): State<AppState>,
    headers: HeaderMap,
    Id(id): Id,
) -> Result<Response> {
    if !headers.contains_key(forward::FORWARDED) && state.leases.has_peers() {
        if let Some(session) = state.store.get_session(&id).await? {
            if let Some(owner) =
                forward::owner(&state, &headers, &session.fleet_id, &session.zone_id)
            {
                let path = format!("/v1/sessions/{}/end", path_segment(&id));
                if let Some(answer) =
                    forward::send(&state, &owner, Method::POST, &path, &headers, Vec::new()).await
                {
                    return Ok(answer);
                }
            }
        }
    }
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
    Ok(Json(outcome.session).into_response())
}

/// A path segment as it may appear in a URL (ids and names are URL-safe already; anything
/// else is percent-encoded).
fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
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
