//! The game-server SDK: the routes `fleetform-agent` serves on 127.0.0.1 for the game-server
//! processes it runs (DESIGN.md §5), and a typed client for them, [`SdkClient`].
//!
//! The agent starts every process with `FLEETFORM_SDK_ADDR` (`http://127.0.0.1:<port>`),
//! `FLEETFORM_PROCESS_ID` and `FLEETFORM_PORT`. A process calls [`SdkClient::ready`] once it
//! can host a session, beats [`SdkClient::health`] (the agent kills a READY process whose
//! beats stop for its health timeout, 15 s by default), long-polls [`SdkClient::session`] for
//! the sessions it hosts and for the order to shut down, and reports a finished session with
//! [`SdkClient::end_session`]. In `simple` session mode the agent tells a process to shut down
//! (`shutdown: true`, then SIGTERM 10 s later) once its session ended; the process should then
//! exit 0.
//!
//! ## The `known` state key
//! `GET …/session?wait_ms=N&known=KEY` answers at once when the process's state differs from
//! `KEY`, and otherwise holds the answer up to `wait_ms` (at most [`MAX_WAIT_MS`]). `KEY` is
//! [`SdkSessionState::state_key`] of the last state the caller received: the hosted session
//! ids in order, comma-separated, followed by `;shutdown` when the process must shut down
//! (`""` for an idle process, `"s-1"`, `"s-1;shutdown"`). A missing `known` answers at once.
//! Keys compare only session ids: a session's properties do not change while it is assigned.

use std::time::Duration;

use reqwest::StatusCode;

use crate::agent::SdkSessionState;
use crate::client::encode;
use crate::ErrorBody;

/// Route of `ready` (axum path syntax): `POST` → 204.
pub const READY_ROUTE: &str = "/sdk/v1/processes/{process_id}/ready";
/// Route of `health`: `POST` → 204.
pub const HEALTH_ROUTE: &str = "/sdk/v1/processes/{process_id}/health";
/// Route of the session long-poll: `GET ?wait_ms=N&known=KEY` → [`SdkSessionState`].
pub const SESSION_ROUTE: &str = "/sdk/v1/processes/{process_id}/session";
/// Route of `session end`: `POST` → 204.
pub const END_SESSION_ROUTE: &str = "/sdk/v1/processes/{process_id}/sessions/{session_id}/end";
/// The longest the agent holds a session long-poll.
pub const MAX_WAIT_MS: u32 = 30_000;

/// Environment variable holding the SDK's base URL.
pub const ENV_SDK_ADDR: &str = "FLEETFORM_SDK_ADDR";
/// Environment variable holding the process id the agent gave this process.
pub const ENV_PROCESS_ID: &str = "FLEETFORM_PROCESS_ID";
/// Environment variable holding the game port players connect to.
pub const ENV_PORT: &str = "FLEETFORM_PORT";

impl SdkSessionState {
    /// The key the session long-poll compares against its `known` parameter (see the
    /// module documentation).
    pub fn state_key(&self) -> String {
        let ids: Vec<&str> = self
            .sessions
            .iter()
            .map(|session| session.id.as_str())
            .collect();
        let mut key = ids.join(",");
        if self.shutdown {
            key.push_str(";shutdown");
        }
        key
    }
}

/// Why an SDK call failed.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// A required environment variable is missing.
    #[error("environment variable {0} is not set (is this process started by fleetform-agent?)")]
    MissingEnv(&'static str),
    /// The agent answered with an error body (404: the agent does not know this process).
    #[error("{status}: {}", body.error.message)]
    Api { status: StatusCode, body: ErrorBody },
    /// The agent could not be reached or the body could not be read.
    #[error("request to the fleetform agent failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// The agent answered something that is not the documented body.
    #[error("unexpected answer from the fleetform agent ({status}): {text}")]
    Unexpected { status: StatusCode, text: String },
}

impl SdkError {
    /// The HTTP status, when the agent answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            SdkError::Api { status, .. } | SdkError::Unexpected { status, .. } => Some(*status),
            SdkError::Transport(err) => err.status(),
            SdkError::MissingEnv(_) => None,
        }
    }

    /// True when the agent could not be reached at all (as opposed to answering an error).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, SdkError::Transport(err) if err.status().is_none())
    }
}

/// Client of the local SDK for one game-server process.
#[derive(Debug, Clone)]
pub struct SdkClient {
    http: reqwest::Client,
    base: String,
    process_id: String,
}

impl SdkClient {
    /// A client for the SDK at `sdk_addr` (e.g. `http://127.0.0.1:7501`) acting as
    /// `process_id`.
    pub fn new(sdk_addr: &str, process_id: &str) -> Result<Self, SdkError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // The SDK is always on loopback: a proxy from the environment must not apply.
            .no_proxy()
            .build()?;
        Ok(SdkClient {
            http,
            base: sdk_addr.trim_end_matches('/').to_string(),
            process_id: process_id.to_string(),
        })
    }

    /// A client from `FLEETFORM_SDK_ADDR` and `FLEETFORM_PROCESS_ID`.
    pub fn from_env() -> Result<Self, SdkError> {
        let addr = std::env::var(ENV_SDK_ADDR).map_err(|_| SdkError::MissingEnv(ENV_SDK_ADDR))?;
        let process_id =
            std::env::var(ENV_PROCESS_ID).map_err(|_| SdkError::MissingEnv(ENV_PROCESS_ID))?;
        Self::new(&addr, &process_id)
    }

    /// The process id this client acts as.
    pub fn process_id(&self) -> &str {
        &self.process_id
    }

    /// Tells the agent the process can host sessions.
    pub async fn ready(&self) -> Result<(), SdkError> {
        self.post(&self.url(READY_ROUTE, None)).await
    }

    /// One health beat.
    pub async fn health(&self) -> Result<(), SdkError> {
        self.post(&self.url(HEALTH_ROUTE, None)).await
    }

    /// The process's sessions and shutdown order. With `known` (a previous answer's
    /// [`SdkSessionState::state_key`]) the agent holds the answer up to `wait_ms` while the
    /// state is unchanged.
    pub async fn session(
        &self,
        wait_ms: u32,
        known: Option<&str>,
    ) -> Result<SdkSessionState, SdkError> {
        let wait_ms = wait_ms.min(MAX_WAIT_MS);
        let mut url = format!("{}?wait_ms={wait_ms}", self.url(SESSION_ROUTE, None));
        if let Some(known) = known {
            url.push_str("&known=");
            url.push_str(&encode(known));
        }
        let response = self
            .http
            .get(url)
            .timeout(Duration::from_millis(u64::from(wait_ms)) + Duration::from_secs(10))
            .send()
            .await?;
        let response = check(response).await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|_| SdkError::Unexpected {
            status,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    /// Reports that a session this process hosts has ended (the match is over).
    pub async fn end_session(&self, session_id: &str) -> Result<(), SdkError> {
        self.post(&self.url(END_SESSION_ROUTE, Some(session_id)))
            .await
    }

    fn url(&self, route: &str, session_id: Option<&str>) -> String {
        let mut path = route.replace("{process_id}", &encode(&self.process_id));
        if let Some(session_id) = session_id {
            path = path.replace("{session_id}", &encode(session_id));
        }
        format!("{}{path}", self.base)
    }

    async fn post(&self, url: &str) -> Result<(), SdkError> {
        let response = self
            .http
            .post(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        check(response).await?;
        Ok(())
    }
}

/// Turns a non-2xx answer into an error.
async fn check(response: reqwest::Response) -> Result<reqwest::Response, SdkError> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let bytes = response.bytes().await?;
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => Err(SdkError::Api { status, body }),
        Err(_) => Err(SdkError::Unexpected {
            status,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AssignedSession;

    fn session(id: &str) -> AssignedSession {
        AssignedSession {
            id: id.to_string(),
            max_players: None,
            properties: Default::default(),
        }
    }

    #[test]
    fn state_key_lists_sessions_and_shutdown() {
        let cases = [
            ("idle", vec![], false, ""),
            ("one session", vec![session("s-1")], false, "s-1"),
            (
                "two sessions",
                vec![session("a"), session("b")],
                false,
                "a,b",
            ),
            ("shutdown while idle", vec![], true, ";shutdown"),
            (
                "shutdown with session",
                vec![session("s-1")],
                true,
                "s-1;shutdown",
            ),
        ];
        for (name, sessions, shutdown, expected) in cases {
            let state = SdkSessionState { sessions, shutdown };
            assert_eq!(state.state_key(), expected, "case {name}");
        }
    }

    #[test]
    fn urls_fill_and_escape_the_route() {
        let client = SdkClient::new("http://127.0.0.1:9/", "proc-1").unwrap();
        assert_eq!(
            client.url(READY_ROUTE, None),
            "http://127.0.0.1:9/sdk/v1/processes/proc-1/ready"
        );
        assert_eq!(
            client.url(END_SESSION_ROUTE, Some("s 1/x")),
            "http://127.0.0.1:9/sdk/v1/processes/proc-1/sessions/s%201%2Fx/end"
        );
    }
}
