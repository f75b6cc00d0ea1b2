//! Storage behind a trait: handlers and the reconciler see [`Store`] over domain types; the
//! SQLite implementation lives in [`sqlite`] with its own `migrations/`, and [`hot`] is the
//! picture of live state its writer keeps in memory.
//!
//! Architecture invariant: every operation that must not be half-applied (a placement, an
//! agent report, a zone's removal) is one method here and one transaction in the
//! implementation, so a kill -9 at any moment leaves either all of it or none; and every
//! method that writes returns only once its transaction is durable.

pub mod db;
pub mod hot;
pub mod postgres;
pub mod sql;
pub mod sqlite;

use std::collections::BTreeMap;

use async_trait::async_trait;
use fleetform_api::agent::{AgentProcessState, SyncRequest};
use fleetform_api::{
    BareMetalMachine, Build, EventLevel, EventProducer, Fleet, MachineStatus, ResourceStatus,
    Session, SessionMode, SessionStatus, Zone,
};

use crate::changes::Changes;
use crate::placement::Candidate;
use crate::Result;

pub use hot::{ObservedMachine, ZoneSummary};
pub use sql::SqlStore;

/// Where the store keeps its data (`--database`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// `sqlite://PATH`: the database file itself.
    Sqlite(std::path::PathBuf),
    /// `postgres://…` (or `postgresql://…`): a libpq-style URL.
    Postgres(String),
}

impl Database {
    /// Reads `--database`: `sqlite://PATH` or `postgres://…`.
    pub fn parse(text: &str) -> std::result::Result<Database, String> {
        if let Some(path) = text.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(format!("--database {text:?}: the path is empty"));
            }
            return Ok(Database::Sqlite(path.into()));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Database::Postgres(text.to_string()));
        }
        Err(format!(
            "--database {text:?}: expected sqlite://PATH or postgres://USER@HOST:PORT/DATABASE"
        ))
    }
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            // Without a password, should the URL carry one.
            Database::Postgres(url) => match (url.find("://"), url.rfind('@')) {
                (Some(scheme), Some(at)) if url[scheme + 3..at].contains(':') => {
                    let user_end = scheme + 3 + url[scheme + 3..at].find(':').unwrap_or(0);
                    write!(f, "{}:***{}", &url[..user_end], &url[at..])
                }
                _ => f.write_str(url),
            },
        }
    }
}

/// A zone and whether it is being deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneRecord {
    pub zone: Zone,
    /// Set by `DELETE /v1/zones/{id}`; the reconciler terminates its machines, then removes it.
    pub deleting: bool,
    /// Start of the zone's idle period, for cooldown (see `autoscale::Observed`).
    pub idle_since_ms: i64,
}

/// A machine as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineRecord {
    pub id: String,
    pub zone_id: String,
    pub fleet_id: String,
    pub data_center: String,
    pub location: String,
    pub instance_type: String,
    pub processes_per_machine: u32,
    pub status: MachineStatus,
    pub build_id: String,
    /// What the driver knows the machine by (a pid for `local`).
    pub driver_ref: Option<String>,
    pub address: Option<String>,
    pub agent_error: Option<String>,
    pub created_at_ms: i64,
    pub last_heartbeat_ms: Option<i64>,
    /// Processes the planner wants it to run (at most `processes_per_machine`).
    pub target_processes: u32,
    /// When it first became `TERMINATING` (set once, by the store).
    pub terminating_since_ms: Option<i64>,
    /// When it became `TERMINATED` (set once, by [`Store::machine_gone`]).
    pub terminated_at_ms: Option<i64>,
    /// Why it was terminated: the first reason [`Store::machine_gone`] was given.
    pub termination_reason: Option<String>,
    /// The pool machine this machine runs on, for a bare-metal data center.
    pub bare_metal_id: Option<String>,
}

/// Processes started before this time are due for their periodic restart
/// (`process_restart_hours`; 0 is never): they take no new session and are replaced once
/// their sessions end.
pub fn restart_cutoff_ms(process_restart_hours: u32, now_ms: i64) -> i64 {
    if process_restart_hours == 0 {
        i64::MIN
    } else {
        now_ms - i64::from(process_restart_hours) * 3_600_000
    }
}

/// A live or ended game-server process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRecord {
    pub id: String,
    pub machine_id: String,
    pub zone_id: String,
    pub fleet_id: String,
    pub build_id: String,
    pub port: u16,
    pub pid: Option<u32>,
    pub state: ProcessState,
    pub active_sessions: u32,
    pub sessions_started: u32,
    pub started_at_ms: i64,
    /// An operator's reboot asked for it to be replaced: it takes no new session.
    pub restart_requested: bool,
}

impl ProcessRecord {
    /// A simple-mode process whose one session is over: it takes no other and must be
    /// replaced (the agent drains it).
    pub fn spent(&self, mode: SessionMode) -> bool {
        mode == SessionMode::Simple && self.sessions_started > 0 && self.active_sessions == 0
    }

    /// Whether a placement may put a session on it now. The placement query in each
    /// store implementation is the SQL mirror of this rule.
    pub fn takes_sessions(&self, mode: SessionMode, sessions_per_process: u32) -> bool {
        let capacity = match mode {
            SessionMode::Simple => 1,
            SessionMode::Parallel => sessions_per_process.max(1),
        };
        self.state == ProcessState::Live(AgentProcessState::Ready)
            && !self.restart_requested
            && self.active_sessions < capacity
            && !(mode == SessionMode::Simple && self.sessions_started > 0)
    }
}

/// A process's lifecycle as stored: what the agent reports while it lives, then how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    Live(AgentProcessState),
    Exited,
    Crashed,
}

impl ProcessState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::Live(state) => state.as_str(),
            ProcessState::Exited => "EXITED",
            ProcessState::Crashed => "CRASHED",
        }
    }

    pub fn parse(text: &str) -> ProcessState {
        match text {
            "EXITED" => ProcessState::Exited,
            "CRASHED" => ProcessState::Crashed,
            other => ProcessState::Live(other.parse().unwrap_or(AgentProcessState::Starting)),
        }
    }

    pub fn is_live(self) -> bool {
        matches!(self, ProcessState::Live(_))
    }
}

/// What the reconciler observes of one zone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneObservation {
    /// Every machine of the zone that is not `TERMINATED`.
    pub machines: Vec<MachineRecord>,
    /// Live processes of those machines.
    pub processes: Vec<ProcessRecord>,
}

/// A placement as the store performs it, in one transaction. The fleet and zone are named
/// as the request names them: the store resolves them in the same step that places, so a
/// change of the fleet's build that committed before is always seen.
#[derive(Debug, Clone)]
pub struct PlaceArgs {
    /// The fleet's id or name.
    pub fleet: String,
    /// The zone's name or id.
    pub zone: String,
    pub session_id: String,
    pub max_players: Option<u32>,
    pub properties: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    /// Data-center name → player latency.
    pub latencies_ms: BTreeMap<String, u32>,
    pub max_latency_ms: Option<u32>,
    pub now_ms: i64,
}

/// What a placement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceOutcome {
    Placed(Session),
    /// The idempotency key was used before: the first answer.
    Repeated(Session),
    /// No process may take it now. A zone in cooldown has been woken (its idle clock
    /// restarted, in the same transaction).
    NoCapacity {
        zone_id: String,
    },
}

impl PlaceOutcome {
    /// The zone the placement was for.
    pub fn zone_id(&self) -> &str {
        match self {
            PlaceOutcome::Placed(session) | PlaceOutcome::Repeated(session) => &session.zone_id,
            PlaceOutcome::NoCapacity { zone_id } => zone_id,
        }
    }
}

/// What ending a session did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndOutcome {
    /// The session as it is now.
    pub session: Session,
    /// This call ended it (false: it had already ended).
    pub ended_now: bool,
}

/// One page of a list, in the list's order, and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as the next request's cursor; None: this was the last page.
    pub next_cursor: Option<String>,
}

/// What one round of history pruning removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub sessions: u64,
    pub processes: u64,
    pub machines: u64,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.sessions + self.processes + self.machines
    }
}

/// What applying an agent report did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportOutcome {
    /// Something placement can use changed (a process became ready, a slot was freed).
    pub placement_changed: bool,
    /// Active sessions this report ended (a repeated report ends none again).
    pub sessions_ended: u32,
}

/// Filters of `GET /v1/sessions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    pub fleet_id: Option<String>,
    pub zone_id: Option<String>,
    pub data_center: Option<String>,
    pub machine_id: Option<String>,
    pub build_id: Option<String>,
    pub status: Option<SessionStatus>,
    pub limit: u32,
    /// Only sessions after this cursor (a page's `next_cursor`).
    pub cursor: Option<String>,
}

/// Something that happened to a fleet, a zone or a machine, as the store keeps it.
/// Events are history: removing what they are about keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// `evt-…`.
    pub id: String,
    pub at_ms: i64,
    pub level: EventLevel,
    pub producer: EventProducer,
    /// A stable UPPER_SNAKE code, e.g. `MACHINE_MODEL_UNAVAILABLE`.
    pub code: String,
    pub fleet_id: Option<String>,
    pub zone_id: Option<String>,
    pub machine_id: Option<String>,
    pub message: String,
    /// The zone lease generation its writer held, for events a zone's reconciler (or its
    /// lease manager) wrote: in one zone, never lower than an earlier event's.
    pub lease_generation: Option<i64>,
}

impl EventRecord {
    /// An event with a fresh id, happening now; name what it is about with
    /// [`fleet`](Self::fleet), [`zone`](Self::zone), [`machine`](Self::machine).
    pub fn new(
        level: EventLevel,
        producer: EventProducer,
        code: &str,
        message: impl Into<String>,
    ) -> Self {
        EventRecord {
            id: crate::time::new_id("evt"),
            at_ms: crate::time::now_ms(),
            level,
            producer,
            code: code.to_string(),
            lease_generation: None,
            fleet_id: None,
            zone_id: None,
            machine_id: None,
            message: message.into(),
        }
    }

    /// The fleet it is about.
    pub fn fleet(mut self, id: &str) -> Self {
        self.fleet_id = Some(id.to_string());
        self
    }

    /// The zone it is about.
    pub fn zone(mut self, id: &str) -> Self {
        self.zone_id = Some(id.to_string());
        self
    }

    /// The machine it is about.
    pub fn machine(mut self, id: &str) -> Self {
        self.machine_id = Some(id.to_string());
        self
    }

    /// When it happened, instead of now (callers that already hold `now_ms`, tests).
    pub fn at(mut self, ms: i64) -> Self {
        self.at_ms = ms;
        self
    }
}

/// Filters of `GET /v1/events`; every filter set must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    pub fleet_id: Option<String>,
    pub zone_id: Option<String>,
    pub machine_id: Option<String>,
    pub level: Option<EventLevel>,
    pub producer: Option<EventProducer>,
    /// A case-insensitive substring of the message or the code.
    pub text: Option<String>,
    /// The most events returned (the newest ones).
    pub limit: u32,
    /// Only events older than this cursor (a page's `next_cursor`).
    pub cursor: Option<String>,
}

impl EventFilter {
    /// `limit` when a request does not say.
    pub const DEFAULT_LIMIT: u32 = 100;
    /// The largest `limit` a request may ask for.
    pub const MAX_LIMIT: u32 = 10_000;
}

impl Default for EventFilter {
    fn default() -> Self {
        EventFilter {
            fleet_id: None,
            zone_id: None,
            machine_id: None,
            level: None,
            producer: None,
            text: None,
            limit: Self::DEFAULT_LIMIT,
            cursor: None,
        }
    }
}

/// A game-server process that exited non-zero or by a signal without being asked to,
/// as the store keeps it. Crashes are history, like events: they outlive their zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashRecord {
    /// `crash-…`.
    pub id: String,
    pub fleet_id: String,
    pub zone_id: String,
    pub machine_id: String,
    pub process_id: String,
    pub build_id: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// When it exited (the agent's clock, never later than when fleetformd heard of it).
    pub at_ms: i64,
    /// When it had started, if known.
    pub started_at_ms: Option<i64>,
    /// Its last output lines, oldest first.
    pub output_tail: Vec<String>,
    /// Where its core file is on its machine.
    pub core_dump: Option<String>,
}

/// Filters of `GET /v1/crashes`; every filter set must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashFilter {
    pub fleet_id: Option<String>,
    pub zone_id: Option<String>,
    pub machine_id: Option<String>,
    pub build_id: Option<String>,
    /// The most crashes returned (the newest ones).
    pub limit: u32,
    /// Only crashes older than this cursor (a page's `next_cursor`).
    pub cursor: Option<String>,
}

impl CrashFilter {
    /// `limit` when a request does not say.
    pub const DEFAULT_LIMIT: u32 = 100;
    /// The largest `limit` a request may ask for.
    pub const MAX_LIMIT: u32 = 10_000;
}

impl Default for CrashFilter {
    fn default() -> Self {
        CrashFilter {
            fleet_id: None,
            zone_id: None,
            machine_id: None,
            build_id: None,
            limit: Self::DEFAULT_LIMIT,
            cursor: None,
        }
    }
}

/// Filters of a fleet's machine list (`GET /v1/fleets/{id}/machines`); every one set
/// must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineFilter {
    pub id: Option<String>,
    pub address: Option<String>,
    pub build_id: Option<String>,
    pub data_center: Option<String>,
    pub zone_id: Option<String>,
    /// The stored status.
    pub status: Option<MachineStatus>,
    pub limit: u32,
    pub cursor: Option<String>,
}

/// Filters of a fleet's process list (`GET /v1/fleets/{id}/processes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessFilter {
    /// Only live processes (`STARTING`, `READY`, `STOPPING`), not history.
    pub live_only: bool,
    pub machine_id: Option<String>,
    pub limit: u32,
    pub cursor: Option<String>,
}

/// Persistent state of fleetformd.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// The hub this store tells, after each commit, what it changed.
    fn changes(&self) -> &Changes;

    // -- builds
    async fn insert_build(&self, build: &Build) -> Result<()>;
    async fn get_build(&self, id: &str) -> Result<Option<Build>>;
    async fn update_build(&self, build: &Build) -> Result<()>;
    /// Removes a build no fleet uses (else a conflict). False when it did not exist.
    async fn delete_build(&self, id: &str) -> Result<bool>;

    // -- fleets
    async fn insert_fleet(&self, fleet: &Fleet) -> Result<()>;
    /// A fleet by id, or else by name. Its `status` is `UNAVAILABLE` while its current
    /// build crash-loops (see [`crate::crash_loop`]), else `NEW` (the API derives the
    /// rest from its zones).
    async fn get_fleet(&self, id_or_name: &str) -> Result<Option<Fleet>>;
    /// Replaces a fleet's settings. When its build or launch settings change, a crash-loop
    /// verdict is lifted (event `FLEET_RECOVERED`, same transaction) and earlier crashes no
    /// longer count toward a new one. A build change starts a build update (event
    /// `BUILD_UPDATE_STARTED`, same transaction; see [`Store::finish_build_update`]).
    async fn update_fleet(&self, fleet: &Fleet) -> Result<()>;
    /// Removes a fleet with no zones, and its ended sessions (else a conflict).
    async fn delete_fleet(&self, id: &str) -> Result<bool>;

    // -- zones
    async fn insert_zone(&self, zone: &Zone) -> Result<()>;
    async fn get_zone(&self, id: &str) -> Result<Option<ZoneRecord>>;
    /// A zone of a fleet by id or name.
    async fn find_zone(&self, fleet_id: &str, id_or_name: &str) -> Result<Option<ZoneRecord>>;
    /// Replaces a zone's spec; a conflict when it is being deleted.
    async fn update_zone(&self, zone: &Zone) -> Result<()>;
    /// Marks a zone for deletion, atomically with the check that it hosts no active
    /// session unless `force` (the fleet's `force_destroy`).
    async fn begin_zone_deletion(&self, id: &str, force: bool) -> Result<()>;
    async fn list_zones(&self) -> Result<Vec<ZoneRecord>>;
    /// Sets a zone's status (never undoes `DELETING`).
    async fn set_zone_status(&self, id: &str, status: ResourceStatus) -> Result<()>;
    /// Removes a zone being deleted whose machines have all ended, and every row of its
    /// machines, processes and sessions. False when it is not (yet) removable.
    async fn remove_zone(&self, id: &str) -> Result<bool>;
    /// Every live machine of a zone and their live processes, read from the database.
    async fn zone_observation(&self, zone_id: &str) -> Result<ZoneObservation>;
    /// What the reconciler observes of a zone (from the writer's picture: no query once
    /// the zone is loaded). None when the zone does not exist.
    async fn zone_summary(&self, zone_id: &str) -> Result<Option<ZoneSummary>>;
    /// Active sessions of a zone.
    async fn zone_active_sessions(&self, zone_id: &str) -> Result<Vec<Session>>;

    // -- machines
    async fn insert_machine(&self, machine: &MachineRecord, token_hash: &str) -> Result<()>;
    /// A machine by id, `TERMINATED` ones included (until its zone is removed).
    async fn get_machine(&self, id: &str) -> Result<Option<MachineRecord>>;
    async fn machine_by_token(&self, token_hash: &str) -> Result<Option<MachineRecord>>;
    /// Sets a machine's status; the first move to `TERMINATING` records `terminating_since`.
    async fn set_machine_status(&self, id: &str, status: MachineStatus) -> Result<()>;
    /// Marks an idle machine `TERMINATING` (recording `terminating_since` the first time),
    /// atomically with the check that it hosts no active session (a placement may have
    /// landed since the reconciler looked). False when it hosts one now and must stay.
    async fn begin_idle_termination(&self, id: &str) -> Result<bool>;
    /// Takes a machine out of service now (an operator's revoke): its active sessions end
    /// LOST with `reason` and it becomes `TERMINATING` (its agent stops its processes, the
    /// driver stops it, the plan replaces it), in one transaction. The number of sessions
    /// LOST; `None` when the machine does not exist or has already ended.
    async fn revoke_machine(&self, id: &str, reason: &str, now_ms: i64) -> Result<Option<u32>>;
    /// A forced build update of a zone: its active sessions on processes of another build
    /// than `build_id` end LOST with `reason`, in one transaction; how many.
    async fn lose_old_build_sessions(
        &self,
        zone_id: &str,
        build_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<u32>;
    async fn set_machine_driver_ref(&self, id: &str, driver_ref: &str) -> Result<()>;
    /// Sets how many processes machines should run; `(machine id, processes)` pairs.
    async fn set_machine_targets(&self, targets: &[(String, u32)]) -> Result<()>;
    /// Restarts a zone's idle clock at `now_ms`: it has active sessions, or a placement
    /// request woke it from cooldown.
    async fn touch_zone(&self, zone_id: &str, now_ms: i64) -> Result<()>;
    /// The machine is gone: `TERMINATED` with `terminated_at = now_ms` and
    /// `termination_reason = reason` (a machine already `TERMINATED` keeps its first time
    /// and reason), its live processes `EXITED`, its active sessions `LOST` with `reason`.
    /// One transaction.
    async fn machine_gone(&self, id: &str, reason: &str, now_ms: i64) -> Result<()>;
    /// Like [`Store::machine_gone`], but the machine ends `UNHEALTHY`: it died or went
    /// silent unexpectedly (its sessions LOST), and is replaced.
    async fn machine_unhealthy(&self, id: &str, reason: &str, now_ms: i64) -> Result<()>;
    /// An operator's reboot: the machine's active sessions end LOST with `reason` and
    /// every live process is marked for restart (it takes no new session; its agent
    /// replaces it), in one transaction. The number of sessions LOST; `None` when the
    /// machine does not exist or is not in service (ended or terminating).
    async fn reboot_machine(&self, id: &str, reason: &str, now_ms: i64) -> Result<Option<u32>>;
    /// Ends a fleet's build update (recorded with its `BUILD_UPDATE_STARTED` event by
    /// [`Store::update_fleet`] when the build changes) once no live process of another
    /// build remains, with its `BUILD_UPDATE_COMPLETED` event, in one transaction. True
    /// when it ended one.
    async fn finish_build_update(&self, fleet_id: &str, now_ms: i64) -> Result<bool>;
    /// A fleet's machines, ended ones included, in id order, a page at a time.
    async fn fleet_machines(
        &self,
        fleet_id: &str,
        filter: &MachineFilter,
    ) -> Result<Page<MachineRecord>>;
    /// Machines of a fleet that run a live process of another build than `build_id`.
    async fn machines_on_other_builds(
        &self,
        fleet_id: &str,
        build_id: &str,
    ) -> Result<std::collections::BTreeSet<String>>;
    /// A fleet's processes, in id order, a page at a time.
    async fn fleet_processes(
        &self,
        fleet_id: &str,
        filter: &ProcessFilter,
    ) -> Result<Page<ProcessRecord>>;
    /// A machine's live processes.
    async fn machine_processes(&self, machine_id: &str) -> Result<Vec<ProcessRecord>>;
    /// What a machine should run now, with its row (from the writer's picture). None when
    /// the store does not know it.
    async fn desired_state(
        &self,
        machine_id: &str,
        now_ms: i64,
    ) -> Result<Option<(MachineRecord, fleetform_api::agent::DesiredMachine)>>;
    /// [`Store::desired_state`] of several machines at once (unknown ones left out).
    async fn desired_states(
        &self,
        machine_ids: &[String],
        now_ms: i64,
    ) -> Result<Vec<(MachineRecord, fleetform_api::agent::DesiredMachine)>>;

    // -- bare-metal pool
    /// Registers a pool machine; `token_hash` finds it when its agent syncs.
    async fn insert_bare_metal(&self, machine: &BareMetalMachine, token_hash: &str) -> Result<()>;
    /// A pool machine with its current assignment (`machine_id`, `zone_id`).
    async fn get_bare_metal(&self, id: &str) -> Result<Option<BareMetalMachine>>;
    /// The pool (at one location, when given), by name.
    async fn list_bare_metal(&self, location: Option<&str>) -> Result<Vec<BareMetalMachine>>;
    /// Writes a pool machine's mutable fields (name, address, cores, memory, labels).
    async fn update_bare_metal(&self, machine: &BareMetalMachine) -> Result<()>;
    /// Removes a pool machine (revoking its agent token); the machine it serves, if any,
    /// ends `TERMINATED` with a `BARE_METAL_REMOVED` event in the same transaction. A
    /// conflict while that machine hosts an active session; false when the id is unknown.
    async fn delete_bare_metal(&self, id: &str, now_ms: i64) -> Result<bool>;
    /// The pool machine whose agent token hashes to `token_hash`, and the live machine it
    /// serves now, if a zone took it.
    async fn bare_metal_by_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<(BareMetalMachine, Option<MachineRecord>)>>;
    /// Records the sync of a pool machine's agent while no zone has it.
    async fn touch_bare_metal(&self, id: &str, now_ms: i64) -> Result<()>;
    /// Takes up to `count` free pool machines at `template.location` (by name) for the
    /// zone and data center of `template`: one machine row each, with the pool machine's
    /// id as `bare_metal_id` and `driver_ref` and its address, the rest from `template`.
    /// One transaction; a pool machine never serves two live machines. The rows inserted.
    async fn assign_bare_metal(
        &self,
        template: &MachineRecord,
        count: u32,
    ) -> Result<Vec<MachineRecord>>;

    // -- agents
    /// Records an agent's report (heartbeat, processes, exits, ended sessions). One
    /// transaction, which also records each crash it carries (once per process, whether
    /// or not the process was ever reported alive) and applies the crash-loop rule
    /// ([`crate::crash_loop::assess`]) to the machine's fleet, with its event. A report older
    /// than one already applied (`report_seq`) only counts as a heartbeat; a report for a
    /// `TERMINATED` machine is refused (`Unauthorized`: the agent stops). A report with
    /// many ended sessions may end all but the last few hundred first, in transactions of
    /// their own (each end stands alone, and a retried report ends none twice).
    async fn apply_agent_report(
        &self,
        machine: &MachineRecord,
        report: &SyncRequest,
        now_ms: i64,
    ) -> Result<ReportOutcome>;
    async fn machine_active_sessions(&self, machine_id: &str) -> Result<Vec<Session>>;

    // -- sessions
    /// Places a session (or answers a repeated idempotency key), resolving the fleet and
    /// zone as named. Unknown fleet: `NotFound`; unknown zone: `Invalid` on `zone`; a zone
    /// being deleted: a conflict.
    async fn place_session(&self, args: PlaceArgs) -> Result<PlaceOutcome>;
    async fn get_session(&self, id: &str) -> Result<Option<Session>>;
    /// Ends an active session (idempotent on an ended one). None when unknown.
    async fn end_session(&self, id: &str, now_ms: i64) -> Result<Option<EndOutcome>>;
    /// Sessions matching `filter`, oldest first, a page at a time.
    async fn list_sessions(&self, filter: &SessionFilter) -> Result<Page<Session>>;

    // -- events
    async fn insert_event(&self, event: &EventRecord) -> Result<()>;
    /// Events matching `filter`, newest first (in insertion order, not by `at_ms`), at
    /// most `filter.limit`, and the cursor of the next (older) page.
    async fn list_events(&self, filter: &EventFilter) -> Result<Page<EventRecord>>;

    // -- crashes
    /// Crashes matching `filter`, newest first (in the order they were recorded), at most
    /// `filter.limit`, and the cursor of the next (older) page.
    async fn list_crashes(&self, filter: &CrashFilter) -> Result<Page<CrashRecord>>;

    // -- retention
    /// Removes up to `batch` rows of history that ended before `before_ms`: ended and lost
    /// sessions, exited and crashed processes (none with an active session), and ended
    /// machines with nothing left. Live rows are never touched. Call again while it
    /// removes something.
    async fn prune_history(&self, before_ms: i64, batch: u32) -> Result<Pruned>;

    /// One round of a replica's lease manager: heartbeat, release, renew, take up to the
    /// fair share (see [`crate::leases`]). One transaction.
    async fn lease_round(
        &self,
        request: crate::leases::LeaseRequest,
    ) -> Result<crate::leases::LeaseRound>;
}

/// Candidates a placement may choose among, as the store loaded them.
pub type Candidates = Vec<Candidate>;

#[cfg(test)]
mod tests {
    use super::Database;

    #[test]
    fn database_urls() {
        let cases: [(&str, Result<Database, &str>); 6] = [
            (
                "sqlite:///var/lib/f.db",
                Ok(Database::Sqlite("/var/lib/f.db".into())),
            ),
            ("sqlite://f.db", Ok(Database::Sqlite("f.db".into()))),
            ("sqlite://", Err("the path is empty")),
            (
                "postgres://u@h:5432/d",
                Ok(Database::Postgres("postgres://u@h:5432/d".into())),
            ),
            (
                "postgresql://u@h/d",
                Ok(Database::Postgres("postgresql://u@h/d".into())),
            ),
            (
                "mysql://u@h/d",
                Err("expected sqlite://PATH or postgres://"),
            ),
        ];
        for (text, want) in cases {
            match (Database::parse(text), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn a_shown_postgres_url_hides_its_password() {
        let shown = Database::Postgres("postgres://fleet:s3cret@db:5432/f".into()).to_string();
        assert_eq!(shown, "postgres://fleet:***@db:5432/f");
        let shown = Database::Postgres("postgres://fleet@db/f".into()).to_string();
        assert_eq!(shown, "postgres://fleet@db/f");
    }
}
