//! The agent ⇄ control-plane protocol (`POST /v1/agent/sync`) and the game-server SDK that
//! the agent serves on 127.0.0.1 (DESIGN.md §5).
//!
//! One call does everything between an agent and fleetformd: the agent reports what it
//! runs, fleetformd records it (the report *is* the heartbeat) and answers with what the
//! machine should run. When nothing changed since the agent's `known_revision`, fleetformd
//! holds the answer up to `wait_ms`, so new session assignments reach the agent at once
//! without polling hot. The agent authenticates with its machine token
//! (`Authorization: Bearer <agent token>`); a 401 means the machine no longer exists and
//! the agent stops its processes and exits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::SessionMode;

/// What an agent tells fleetformd about its machine and processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// OS process id of the agent (lets the local driver find an agent it launched).
    pub agent_pid: u32,
    /// Where players reach this machine's game ports.
    pub address: String,
    /// Strictly increasing over every report this machine's agent sends, across agent
    /// restarts too (wall-clock microseconds, bumped past the previous value). fleetformd
    /// ignores a report older than one it already applied: a cancelled long-poll may still
    /// arrive after its successor. 0 means "unordered" (always applied).
    #[serde(default)]
    pub report_seq: u64,
    /// The `revision` of the last desired state the agent received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_revision: Option<String>,
    /// How long fleetformd may hold the answer when nothing changed (capped server-side).
    #[serde(default)]
    pub wait_ms: u32,
    /// Every process the agent currently runs (starting, ready, or shutting down).
    pub processes: Vec<ProcessReport>,
    /// Processes that ended since the last acknowledged sync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exited: Vec<ProcessExit>,
    /// Sessions the game servers reported ended since the last acknowledged sync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ended_sessions: Vec<String>,
    /// A build fetch or launch problem the machine cannot get past by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

wire_enum!(
    /// A process's state as the agent sees it. `READY`: it called `ready` and beats health.
    AgentProcessState {
        Starting => "STARTING",
        Ready => "READY",
        Stopping => "STOPPING",
    }
);

/// One live process on the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessReport {
    /// Chosen by the agent when it starts the process; never reused.
    pub process_id: String,
    pub port: u16,
    pub pid: u32,
    pub state: AgentProcessState,
    pub build_id: String,
    /// RFC 3339.
    pub started_at: String,
}

/// A process that ended, and how. The fields after `exited_at` came later: each has a
/// default, so a report from an older agent still parses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessExit {
    pub process_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// True when the agent asked it to stop (drain, restart after a session, shutdown).
    #[serde(default)]
    pub requested: bool,
    /// RFC 3339.
    pub exited_at: String,
    /// The build it ran. Lets fleetformd record the crash of a process that died before
    /// any report listed it alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// RFC 3339: when it started (how long it lived tells a crash at start from a later one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Crashes only: the last lines of its stdout and stderr, oldest first (at most
    /// [`OUTPUT_TAIL_LINES`] lines of at most [`OUTPUT_LINE_MAX_BYTES`] bytes each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_tail: Vec<String>,
    /// Crashes only: where the core file it wrote is on the machine, when the agent found
    /// one (none when the host pipes cores to a handler such as systemd-coredump).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_dump: Option<String>,
}

/// How many lines of a crashed process's output [`ProcessExit::output_tail`] keeps.
pub const OUTPUT_TAIL_LINES: usize = 20;
/// The longest line [`ProcessExit::output_tail`] keeps; longer lines are cut.
pub const OUTPUT_LINE_MAX_BYTES: usize = 500;

impl ProcessExit {
    /// Whether this exit is a crash: the agent did not ask for it and the process did not
    /// exit 0 (it exited non-zero, was killed by a signal, or ended in a way nobody saw).
    pub fn is_crash(&self) -> bool {
        !self.requested && (self.exit_code != Some(0) || self.signal.is_some())
    }
}

/// What fleetformd wants the machine to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    pub machine_id: String,
    /// Opaque; changes whenever `desired` changes. Send it back as `known_revision`.
    pub revision: String,
    /// How often the agent must sync at the latest; missing three in a row marks the
    /// machine unhealthy.
    pub heartbeat_interval_ms: u32,
    pub desired: DesiredMachine,
}

/// The desired state of one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredMachine {
    /// Stop every process and exit: the machine is being terminated.
    pub shutdown: bool,
    /// The build and launch settings new processes start with. `None` while the machine
    /// has nothing to run.
    #[serde(default)]
    pub launch: Option<LaunchSpec>,
    /// How many processes should be running (starting or up) on this machine.
    pub process_count: u32,
    /// Active sessions per process id. A session that disappears from here was ended by
    /// the control plane; the agent tells the game server.
    #[serde(default)]
    pub sessions: BTreeMap<String, Vec<AssignedSession>>,
    /// Processes that must take no new session and stop once idle.
    #[serde(default)]
    pub drain: Vec<String>,
}

/// Everything the agent needs to start a game-server process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub build_id: String,
    /// Build package URI (`file:///dir`, `file:///pkg.tar.gz`, …).
    pub source: String,
    #[serde(default)]
    pub sha256: Option<String>,
    /// Executable relative to the build's root.
    pub launch_path: String,
    #[serde(default)]
    pub launch_parameters: Option<String>,
    pub session_mode: SessionMode,
    pub sessions_per_process: u32,
}

/// A session assigned to a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedSession {
    pub id: String,
    #[serde(default)]
    pub max_players: Option<u32>,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------------
// The local SDK a game server calls on the agent (`FLEETFORM_SDK_ADDR`, plain HTTP on
// 127.0.0.1). Routes, all JSON:
//   POST /sdk/v1/processes/{process_id}/ready                     → 204
//   POST /sdk/v1/processes/{process_id}/health                    → 204
//   GET  /sdk/v1/processes/{process_id}/session?wait_ms=N&known=STATE_KEY → SdkSessionState
//        (answers at once when the state differs from `known`, else holds up to wait_ms;
//        STATE_KEY is `SdkSessionState::state_key()`, see `crate::sdk`)
//   POST /sdk/v1/processes/{process_id}/sessions/{session_id}/end → 204
// An unknown process id is a 404.

/// What the SDK's session long-poll answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdkSessionState {
    /// The sessions this process hosts now (at most one in simple mode).
    pub sessions: Vec<AssignedSession>,
    /// The process should end its sessions' work and exit 0.
    pub shutdown: bool,
}
