//! The agent route: `POST /v1/agent/sync` (see `fleetform_api::agent`).

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleetform_api::agent::{SyncRequest, SyncResponse};
use fleetform_api::MachineStatus;

use super::extract::JsonBody;
use super::forward;
use super::{bearer, AppState};
use crate::machines::desired::{pool_state, revision};
use crate::store::MachineRecord;
use crate::time::now_ms;
use crate::zones::token_hash;
use crate::{Error, Result};

/// Longest an agent's sync is held when nothing changed.
const MAX_WAIT: Duration = Duration::from_secs(25);

/// Who a sync's token speaks for.
enum Caller {
    /// A machine (a VM's agent, or a bare-metal agent whose machine a zone took).
    Machine(Box<MachineRecord>),
    /// A bare-metal agent whose machine is in the pool, serving no zone.
    Pool(String),
}

/// Resolves an agent token: a machine's own, else a pool machine's (which speaks for the
/// machine a zone took it for, if any). Unknown tokens and ended machines are a 401.
async fn caller(state: &AppState, token: &str) -> Result<Caller> {
    let hash = token_hash(token);
    let live = |machine: &MachineRecord| {
        !matches!(
            machine.status,
            MachineStatus::Terminated | MachineStatus::Unhealthy
        )
    };
    if let Some(machine) = state.store.machine_by_token(&hash).await? {
        return if live(&machine) {
            Ok(Caller::Machine(Box::new(machine)))
        } else {
            Err(Error::Unauthorized)
        };
    }
    match state.store.bare_metal_by_token(&hash).await? {
        Some((_, Some(machine))) if live(&machine) => Ok(Caller::Machine(Box::new(machine))),
        Some((pool, _)) => Ok(Caller::Pool(pool.id)),
        None => Err(Error::Unauthorized),
    }
}

pub async fn sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(report): JsonBody<SyncRequest>,
) -> Result<Response> {
    let token = bearer(&headers).ok_or(Error::Unauthorized)?;
    let mut current = caller(&state, token).await?;
    // A machine's sync is served by the replica holding its zone (its picture is there).
    if let Caller::Machine(machine) = &current {
        if let Some(owner) = forward::owner(&state, &headers, &machine.fleet_id, &machine.zone_id) {
            let body = serde_json::to_vec(&report).map_err(|e| Error::Internal(e.to_string()))?;
            if let Some(answer) = forward::send(
                &state,
                &owner,
                Method::POST,
                "/v1/agent/sync",
                &headers,
                body,
            )
            .await
            {
                return Ok(answer);
            }
        }
    }
    match &current {
        Caller::Machine(machine) => {
            let outcome = state
                .store
                .apply_agent_report(machine, &report, now_ms())
                .await?;
            // Sessions the game servers ended free slots: the predictive forecast counts
            // them.
            state
                .demand
                .record_ends(&machine.zone_id, now_ms(), outcome.sessions_ended);
        }
        Caller::Pool(pool_id) => {
            // Nothing of a previous assignment is applied: that machine has ended, and
            // its processes with it.
            state.store.touch_bare_metal(pool_id, now_ms()).await?;
        }
    }
    let wait = Duration::from_millis(u64::from(report.wait_ms)).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let changes = state.store.changes().clone();
    loop {
        // Watched before the read, so a change in between wakes the wait below. Only this
        // machine's changes (and its fleet's) wake it.
        let mut watch = match &current {
            Caller::Machine(machine) => changes.watch_machine(&machine.id, Some(&machine.fleet_id)),
            Caller::Pool(pool_id) => changes.watch_machine(pool_id, None),
        };
        let response = match &current {
            Caller::Machine(machine) => {
                let (record, desired) = state
                    .store
                    .desired_state(&machine.id, now_ms())
                    .await?
                    .ok_or(Error::Unauthorized)?;
                SyncResponse {
                    revision: revision(&desired)?,
                    machine_id: record.id,
                    heartbeat_interval_ms: state.heartbeat_interval.as_millis() as u32,
                    desired,
                }
            }
            Caller::Pool(pool_id) => pool_state(pool_id, state.heartbeat_interval)?,
        };
        if report.known_revision.as_deref() != Some(response.revision.as_str()) {
            return Ok(Json(response).into_response());
        }
        // Until a change, the deadline, or a shutdown (which answers held syncs at once).
        let woke = tokio::select! {
            changed = tokio::time::timeout_at(deadline, watch.changed()) => changed.is_ok(),
            _ = state.closed() => false,
        };
        if !woke {
            return Ok(Json(response).into_response());
        }
        if let Caller::Pool(_) = current {
            // A zone may have taken the machine: answer with its machine at once.
            if let Caller::Machine(machine) = caller(&state, token).await? {
                current = Caller::Machine(machine);
            }
        }
    }
}
