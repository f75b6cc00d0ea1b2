//! The agent route: `POST /v1/agent/sync` (see `fleetform_api::agent`).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use fleetform_api::agent::{
    AssignedSession, DesiredMachine, LaunchSpec, SyncRequest, SyncResponse,
};
use fleetform_api::MachineStatus;
use sha2::{Digest, Sha256};

use super::extract::JsonBody;
use super::{bearer, AppState};
use crate::store::MachineRecord;
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
        .filter(|machine| machine.status != MachineStatus::Terminated)
        .ok_or(Error::Unauthorized)?;
    if state
        .store
        .apply_agent_report(&machine, &report, now_ms())
        .await?
    {
        state.changes.bump();
    }
    let wait = Duration::from_millis(u64::from(report.wait_ms)).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = state.changes.subscribe();
    loop {
        changes.borrow_and_update();
        let response = desired_state(&state, &machine.id).await?;
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

/// What `machine_id` should run now, with its revision.
async fn desired_state(state: &AppState, machine_id: &str) -> Result<SyncResponse> {
    let machine = state
        .store
        .get_machine(machine_id)
        .await?
        .ok_or(Error::Unauthorized)?;
    let desired = desired_machine(state, &machine).await?;
    let canonical = serde_json::to_vec(&desired).map_err(|e| Error::Internal(e.to_string()))?;
    let revision: String = Sha256::digest(&canonical)
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(SyncResponse {
        machine_id: machine.id,
        revision,
        heartbeat_interval_ms: state.heartbeat_interval.as_millis() as u32,
        desired,
    })
}

async fn desired_machine(state: &AppState, machine: &MachineRecord) -> Result<DesiredMachine> {
    let shutdown = matches!(
        machine.status,
        MachineStatus::Terminating | MachineStatus::Terminated
    );
    let fleet = state.store.get_fleet(&machine.fleet_id).await?;
    let (Some(fleet), false) = (fleet, shutdown) else {
        return Ok(DesiredMachine {
            shutdown: true,
            launch: None,
            process_count: 0,
            sessions: BTreeMap::new(),
            drain: Vec::new(),
        });
    };
    let build = state.store.get_build(&fleet.build_id).await?;
    let launch = build.map(|build| LaunchSpec {
        build_id: build.id,
        source: build.source,
        sha256: build.sha256,
        launch_path: fleet.launch_path.clone(),
        launch_parameters: fleet.launch_parameters.clone(),
        session_mode: fleet.session_mode,
        sessions_per_process: fleet.sessions_per_process,
    });
    // Simple-mode processes whose session is over are drained (and so replaced), even when
    // the session ended before the agent ever heard of it.
    let drain = state
        .store
        .machine_processes(&machine.id)
        .await?
        .into_iter()
        .filter(|process| process.spent(fleet.session_mode))
        .map(|process| process.id)
        .collect();
    let mut sessions: BTreeMap<String, Vec<AssignedSession>> = BTreeMap::new();
    for session in state.store.machine_active_sessions(&machine.id).await? {
        sessions
            .entry(session.process_id)
            .or_default()
            .push(AssignedSession {
                id: session.id,
                max_players: session.max_players,
                properties: session.properties,
            });
    }
    Ok(DesiredMachine {
        shutdown: false,
        launch,
        process_count: machine.target_processes.min(machine.processes_per_machine),
        sessions,
        drain,
    })
}
