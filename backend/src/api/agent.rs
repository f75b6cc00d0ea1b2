//! The agent route: `POST /v1/agent/sync` (see `fleetform_api::agent`).

use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use fleetform_api::agent::{SyncRequest, SyncResponse};
use fleetform_api::MachineStatus;

use super::extract::JsonBody;
use super::{bearer, AppState};
use crate::machines::desired::desired_state;
use crate::time::now_ms;
use crate::zones::token_hash;
use crate::{Error, Result};

/// Longest an agent's sync is held when nothing changed.
const MAX_WAIT: Duration = Duration::from_secs(25);

pub async fn sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(report): JsonBody<SyncRequest>,
) -> Result<Json<SyncResponse>> {
    let token = bearer(&headers).ok_or(Error::Unauthorized)?;
    let machine = state
        .store
        .machine_by_token(&token_hash(token))
        .await?
        .filter(|machine| {
            !matches!(
                machine.status,
                MachineStatus::Terminated | MachineStatus::Unhealthy
            )
        })
        .ok_or(Error::Unauthorized)?;
    let outcome = state
        .store
        .apply_agent_report(&machine, &report, now_ms())
        .await?;
    // Sessions the game servers ended free slots: the predictive forecast counts them.
    state
        .demand
        .record_ends(&machine.zone_id, now_ms(), outcome.sessions_ended);
    if outcome.placement_changed {
        state.changes.bump();
    }
    let wait = Duration::from_millis(u64::from(report.wait_ms)).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = state.changes.subscribe();
    loop {
        changes.borrow_and_update();
        let response =
            desired_state(state.store.as_ref(), &machine.id, state.heartbeat_interval).await?;
        if report.known_revision.as_deref() != Some(response.revision.as_str()) {
            return Ok(Json(response));
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            return Ok(Json(response));
        }
    }
}
