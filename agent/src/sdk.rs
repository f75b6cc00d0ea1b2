//! The local SDK server game servers call (routes in `fleetform_api::sdk`), over state shared
//! with the supervisor.
//!
//! The supervisor registers each process it starts, pushes the sessions fleetformd assigned
//! and the shutdown order; the handlers record `ready`, `health` and `session end` and wake
//! the supervisor (except for health beats, which change nothing it reports). A change of a
//! process's session state wakes the long-polls waiting on it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fleetform_api::agent::{AssignedSession, SdkSessionState};
use fleetform_api::sdk::{
    END_SESSION_ROUTE, HEALTH_ROUTE, MAX_WAIT_MS, READY_ROUTE, SESSION_ROUTE,
};
use fleetform_api::{ErrorBody, ErrorDetail};
use serde::Deserialize;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// What the SDK knows about one process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SdkProcess {
    /// When it called `ready`.
    pub ready_at: Option<Instant>,
    /// Its last `health` beat.
    pub last_health: Option<Instant>,
    /// Sessions fleetformd assigned to it, as of the last sync.
    pub assigned: Vec<AssignedSession>,
    /// Sessions it ended through the SDK.
    pub ended: BTreeSet<String>,
    /// It has been assigned a session at some point.
    pub hosted: bool,
    /// It was told to shut down.
    pub shutdown: bool,
}

impl SdkProcess {
    /// The state the session long-poll answers: assigned sessions the process has not
    /// ended, and the shutdown order.
    pub fn session_state(&self) -> SdkSessionState {
        SdkSessionState {
            sessions: self
                .assigned
                .iter()
                .filter(|session| !self.ended.contains(&session.id))
                .cloned()
                .collect(),
            shutdown: self.shutdown,
        }
    }
}

#[derive(Debug, Default)]
struct Registry {
    processes: BTreeMap<String, SdkProcess>,
    /// Sessions ended through the SDK that the supervisor has not collected yet.
    ended_sessions: Vec<String>,
}

/// State shared by the SDK handlers and the supervisor.
#[derive(Debug)]
pub struct SdkState {
    registry: Mutex<Registry>,
    /// Bumped whenever a process's session state changes; long-polls wait on it.
    changes: watch::Sender<u64>,
    /// Wakes the supervisor: a process became ready or ended a session.
    local_change: Notify,
}

impl SdkState {
    pub fn new() -> Arc<Self> {
        Arc::new(SdkState {
            registry: Mutex::new(Registry::default()),
            changes: watch::Sender::new(0),
            local_change: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump(&self) {
        self.changes.send_modify(|version| *version += 1);
    }

    /// Waits until a handler reports something the supervisor must act on. A notification
    /// sent while nobody waits is kept for the next call.
    pub async fn local_changed(&self) {
        self.local_change.notified().await;
    }

    /// Registers a process the agent just started.
    pub fn add_process(&self, process_id: &str) {
        self.lock()
            .processes
            .insert(process_id.to_string(), SdkProcess::default());
    }

    /// Forgets a process that exited; its pending long-polls answer 404.
    pub fn remove_process(&self, process_id: &str) {
        self.lock().processes.remove(process_id);
        self.bump();
    }

    /// A copy of what the SDK knows about a process.
    pub fn process(&self, process_id: &str) -> Option<SdkProcess> {
        self.lock().processes.get(process_id).cloned()
    }

    /// Sets the sessions fleetformd assigned to a process.
    pub fn set_assigned(&self, process_id: &str, sessions: &[AssignedSession]) {
        let changed = {
            let mut registry = self.lock();
            let Some(process) = registry.processes.get_mut(process_id) else {
                return;
            };
            if process.assigned == sessions {
                false
            } else {
                let before = process.session_state();
                process.assigned = sessions.to_vec();
                process.hosted |= !sessions.is_empty();
                before != process.session_state()
            }
        };
        if changed {
            self.bump();
        }
    }

    /// Tells a process to shut down.
    pub fn set_shutdown(&self, process_id: &str) {
        let changed = {
            let mut registry = self.lock();
            match registry.processes.get_mut(process_id) {
                Some(process) if !process.shutdown => {
                    process.shutdown = true;
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.bump();
        }
    }

    /// Takes the sessions game servers ended since the last call.
    pub fn take_ended_sessions(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().ended_sessions)
    }

    fn mark_ready(&self, process_id: &str, now: Instant) -> Result<(), SdkError> {
        let newly_ready = {
            let mut registry = self.lock();
            let process = registry
                .processes
                .get_mut(process_id)
                .ok_or_else(|| SdkError::unknown_process(process_id))?;
            let newly_ready = process.ready_at.is_none();
            process.ready_at.get_or_insert(now);
            newly_ready
        };
        if newly_ready {
            self.local_change.notify_one();
        }
        Ok(())
    }

    fn mark_health(&self, process_id: &str, now: Instant) -> Result<(), SdkError> {
        let mut registry = self.lock();
        let process = registry
            .processes
            .get_mut(process_id)
            .ok_or_else(|| SdkError::unknown_process(process_id))?;
        process.last_health = Some(now);
        Ok(())
    }

    fn end_session(&self, process_id: &str, session_id: &str) -> Result<(), SdkError> {
        {
            let mut registry = self.lock();
            let process = registry
                .processes
                .get_mut(process_id)
                .ok_or_else(|| SdkError::unknown_process(process_id))?;
            if process.ended.contains(session_id) {
                return Ok(()); // Ending twice is fine.
            }
            if !process
                .assigned
                .iter()
                .any(|session| session.id == session_id)
            {
                return Err(SdkError::not_found(format!(
                    "process {process_id} hosts no session {session_id}"
                )));
            }
            process.ended.insert(session_id.to_string());
            registry.ended_sessions.push(session_id.to_string());
        }
        self.bump();
        self.local_change.notify_one();
        Ok(())
    }

    fn session_state(&self, process_id: &str) -> Result<SdkSessionState, SdkError> {
        self.lock()
            .processes
            .get(process_id)
            .map(SdkProcess::session_state)
            .ok_or_else(|| SdkError::unknown_process(process_id))
    }
}

/// The SDK's HTTP routes over `state`.
pub fn router(state: Arc<SdkState>) -> Router {
    Router::new()
        .route(READY_ROUTE, post(ready))
        .route(HEALTH_ROUTE, post(health))
        .route(SESSION_ROUTE, get(session))
        .route(END_SESSION_ROUTE, post(end_session))
        .with_state(state)
}

async fn ready(
    State(state): State<Arc<SdkState>>,
    Path(process_id): Path<String>,
) -> Result<StatusCode, SdkError> {
    state.mark_ready(&process_id, Instant::now())?;
    Ok(StatusCode::NO_CONTENT)
}

async fn health(
    State(state): State<Arc<SdkState>>,
    Path(process_id): Path<String>,
) -> Result<StatusCode, SdkError> {
    state.mark_health(&process_id, Instant::now())?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct SessionQuery {
    #[serde(default)]
    wait_ms: Option<u32>,
    #[serde(default)]
    known: Option<String>,
}

async fn session(
    State(state): State<Arc<SdkState>>,
    Path(process_id): Path<String>,
    Query(query): Query<SessionQuery>,
) -> Result<Json<SdkSessionState>, SdkError> {
    let wait = Duration::from_millis(u64::from(query.wait_ms.unwrap_or(0).min(MAX_WAIT_MS)));
    let deadline = Instant::now() + wait;
    let mut changes = state.changes.subscribe();
    loop {
        // Mark the current version seen *before* reading the state, so a change made after
        // the read wakes the wait below.
        changes.borrow_and_update();
        let current = state.session_state(&process_id)?;
        if query.known.as_deref() != Some(current.state_key().as_str()) {
            return Ok(Json(current));
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Ok(Json(current)),
        }
    }
}

async fn end_session(
    State(state): State<Arc<SdkState>>,
    Path((process_id, session_id)): Path<(String, String)>,
) -> Result<StatusCode, SdkError> {
    state.end_session(&process_id, &session_id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// An SDK error answer: `{ "error": { "code", "message" } }` with its status.
#[derive(Debug)]
struct SdkError {
    status: StatusCode,
    body: ErrorBody,
}

impl SdkError {
    fn not_found(message: String) -> Self {
        SdkError {
            status: StatusCode::NOT_FOUND,
            body: ErrorBody {
                error: ErrorDetail {
                    code: "not_found".into(),
                    message,
                    field: None,
                },
            },
        }
    }

    fn unknown_process(process_id: &str) -> Self {
        Self::not_found(format!("this agent runs no process {process_id}"))
    }
}

impl IntoResponse for SdkError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn assigned(id: &str) -> AssignedSession {
        AssignedSession {
            id: id.into(),
            max_players: Some(8),
            properties: Default::default(),
        }
    }

    async fn call(state: &Arc<SdkState>, method: &str, uri: &str) -> (StatusCode, Vec<u8>) {
        let response = router(state.clone())
            .oneshot(
                Request::builder()
                    .method(method)
                    .uri(uri)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, body.to_vec())
    }

    #[tokio::test]
    async fn ready_and_health_are_recorded_and_wake_the_supervisor() {
        let state = SdkState::new();
        state.add_process("p1");
        let (status, _) = call(&state, "POST", "/sdk/v1/processes/p1/ready").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        // The notification is stored for the supervisor's next wait.
        tokio::time::timeout(Duration::from_secs(1), state.local_changed())
            .await
            .expect("ready wakes the supervisor");
        let (status, _) = call(&state, "POST", "/sdk/v1/processes/p1/health").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let process = state.process("p1").unwrap();
        assert!(process.ready_at.is_some() && process.last_health.is_some());
    }

    #[tokio::test]
    async fn unknown_process_is_a_404_with_an_error_body() {
        let state = SdkState::new();
        for (method, uri) in [
            ("POST", "/sdk/v1/processes/nope/ready"),
            ("POST", "/sdk/v1/processes/nope/health"),
            ("GET", "/sdk/v1/processes/nope/session"),
            ("POST", "/sdk/v1/processes/nope/sessions/s1/end"),
        ] {
            let (status, body) = call(&state, method, uri).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}");
            let body: ErrorBody = serde_json::from_slice(&body).unwrap();
            assert_eq!(body.error.code, "not_found");
        }
    }

    #[tokio::test]
    async fn end_session_is_reported_once_and_hides_the_session() {
        let state = SdkState::new();
        state.add_process("p1");
        state.set_assigned("p1", &[assigned("s1")]);
        let (status, _) = call(&state, "POST", "/sdk/v1/processes/p1/sessions/s2/end").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "not its session");
        for _ in 0..2 {
            let (status, _) = call(&state, "POST", "/sdk/v1/processes/p1/sessions/s1/end").await;
            assert_eq!(status, StatusCode::NO_CONTENT);
        }
        assert_eq!(state.take_ended_sessions(), ["s1"]);
        assert!(state.take_ended_sessions().is_empty());
        let (_, body) = call(&state, "GET", "/sdk/v1/processes/p1/session").await;
        let view: SdkSessionState = serde_json::from_slice(&body).unwrap();
        assert_eq!(view, SdkSessionState::default());
        assert!(state.process("p1").unwrap().hosted);
    }

    #[tokio::test(start_paused = true)]
    async fn session_long_poll_holds_until_a_change_or_the_deadline() {
        let state = SdkState::new();
        state.add_process("p1");

        // Unknown `known`: answers at once.
        let (_, body) = call(&state, "GET", "/sdk/v1/processes/p1/session?wait_ms=20000").await;
        let view: SdkSessionState = serde_json::from_slice(&body).unwrap();
        assert_eq!(view.state_key(), "");

        // Unchanged: held until the deadline (time is paused, so this is instant and exact).
        let started = Instant::now();
        let (status, _) = call(
            &state,
            "GET",
            "/sdk/v1/processes/p1/session?wait_ms=5000&known=",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(started.elapsed(), Duration::from_millis(5000));

        // A change wakes the poll early.
        let poll = tokio::spawn({
            let state = state.clone();
            async move {
                call(
                    &state,
                    "GET",
                    "/sdk/v1/processes/p1/session?wait_ms=30000&known=",
                )
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        state.set_assigned("p1", &[assigned("s1")]);
        let started = Instant::now();
        let (_, body) = poll.await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(10));
        let view: SdkSessionState = serde_json::from_slice(&body).unwrap();
        assert_eq!(view.state_key(), "s1");
        assert_eq!(view.sessions[0].max_players, Some(8));

        // Shutdown is a change too.
        state.set_shutdown("p1");
        let (_, body) = call(
            &state,
            "GET",
            "/sdk/v1/processes/p1/session?wait_ms=30000&known=s1",
        )
        .await;
        let view: SdkSessionState = serde_json::from_slice(&body).unwrap();
        assert_eq!(view.state_key(), "s1;shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_poll_answers_404_when_the_process_goes_away() {
        let state = SdkState::new();
        state.add_process("p1");
        let poll = tokio::spawn({
            let state = state.clone();
            async move {
                call(
                    &state,
                    "GET",
                    "/sdk/v1/processes/p1/session?wait_ms=30000&known=",
                )
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        state.remove_process("p1");
        let (status, _) = poll.await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
