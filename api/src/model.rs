//! Admin, placement and operations bodies (DESIGN.md §2–§4).
//!
//! `*Spec` types are what a client sends to create or replace a resource; the plain type
//! (`Build`, `Fleet`, `Zone`) is what the server answers: the spec's fields plus the
//! server's own (`id`, `created_at`, `status`). Timestamps are RFC 3339 strings in UTC.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

wire_enum!(
    /// Operating system a build runs on.
    OperatingSystem default Linux { Linux => "linux", Windows => "windows" }
);
wire_enum!(
    /// How a fleet moves to a new build (`update_mode`).
    UpdateMode default Soft { Soft => "soft", Force => "force" }
);
wire_enum!(
    /// `simple`: one session per process, the process restarts after it;
    /// `parallel`: up to `sessions_per_process` at once.
    SessionMode default Simple { Simple => "simple", Parallel => "parallel" }
);
wire_enum!(
    /// `fixed` runs the sum of the data centers' maximums; `auto` follows the buffer rules.
    ScalingMode default Auto { Auto => "auto", Fixed => "fixed" }
);
wire_enum!(
    /// `pack` fills busy machines first so idle ones can scale in; `spread` does the opposite.
    PlacementStrategy default Pack { Pack => "pack", Spread => "spread" }
);
wire_enum!(
    /// Kind of machines a data center is made of.
    MachineType default Vm { Vm => "vm", BareMetal => "bare_metal" }
);
wire_enum!(
    /// Status of a fleet or a zone (DESIGN.md §3).
    ResourceStatus {
        New => "NEW",
        Launching => "LAUNCHING",
        Available => "AVAILABLE",
        AvailableCooldown => "AVAILABLE_COOLDOWN",
        Unavailable => "UNAVAILABLE",
        Deleting => "DELETING",
    }
);
wire_enum!(
    /// Status of a machine (DESIGN.md §3).
    MachineStatus {
        Pending => "PENDING",
        Launching => "LAUNCHING",
        Active => "ACTIVE",
        WaitingUpdate => "WAITING_UPDATE",
        Draining => "DRAINING",
        Unhealthy => "UNHEALTHY",
        Terminating => "TERMINATING",
        Terminated => "TERMINATED",
    }
);
wire_enum!(
    /// Status of a game-server process (DESIGN.md §3). `READY` means idle.
    ProcessStatus {
        Starting => "STARTING",
        Ready => "READY",
        Active => "ACTIVE",
        Draining => "DRAINING",
        Exited => "EXITED",
        Crashed => "CRASHED",
    }
);
wire_enum!(
    /// Status of a session (DESIGN.md §3). `LOST`: its machine or process died.
    SessionStatus { Active => "ACTIVE", Ended => "ENDED", Lost => "LOST" }
);
wire_enum!(
    /// How much an event matters (DESIGN.md §4): `ERROR` needs an operator.
    EventLevel { Info => "INFO", Warning => "WARNING", Error => "ERROR" }
);
wire_enum!(
    /// What kind of thing an event is about (DESIGN.md §4).
    EventProducer { Fleet => "FLEET", Zone => "ZONE", Machine => "MACHINE" }
);

/// The values the server gives what a body leaves out, where the type's own default is not
/// it. Clients that plan a default (the Terraform provider) take it from here, so the two
/// cannot drift apart. Enums default through `Default` (`UpdateMode::default()`, …).
pub mod defaults {
    /// `FleetSpec::sessions_per_process`.
    pub const SESSIONS_PER_PROCESS: u32 = 1;
    /// `FleetSpec::storage_gb`.
    pub const STORAGE_GB: u32 = 50;
    /// `FleetSpec::process_restart_hours` (off).
    pub const PROCESS_RESTART_HOURS: u32 = 0;
    /// `FleetSpec::force_destroy`.
    pub const FORCE_DESTROY: bool = false;
    /// `ZoneSpec::cooldown_minutes`.
    pub const COOLDOWN_MINUTES: u32 = 0;
    /// `BufferRule::min_active_sessions`.
    pub const MIN_ACTIVE_SESSIONS: u32 = 0;
    /// `DataCenterSpec::priority`.
    pub const PRIORITY: u32 = 0;
}

fn default_one() -> u32 {
    defaults::SESSIONS_PER_PROCESS
}
fn default_storage_gb() -> u32 {
    defaults::STORAGE_GB
}
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

// ---------------------------------------------------------------------------------------------
// Builds

/// Body of `POST /v1/builds` and `PUT /v1/builds/{id}`. Only `name` and `version` may change
/// on `PUT`; the others are immutable and a different value is a 422 naming the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub operating_system: OperatingSystem,
    /// `file:///abs/dir`, `file:///abs/pkg.tar.gz`, `s3://bucket/key` or `https://…`.
    pub source: String,
    /// Lower-case hex SHA-256 of an archive source, checked when a machine fetches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A build as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    pub operating_system: OperatingSystem,
    pub source: String,
    #[serde(default)]
    pub sha256: Option<String>,
    pub created_at: String,
}

impl Build {
    /// The spec this build was created from.
    pub fn spec(&self) -> BuildSpec {
        BuildSpec {
            name: self.name.clone(),
            version: self.version.clone(),
            operating_system: self.operating_system,
            source: self.source.clone(),
            sha256: self.sha256.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fleets

/// Body of `POST /v1/fleets` and `PUT /v1/fleets/{id}`. `name` and `session_mode` are
/// immutable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub build_id: String,
    #[serde(default)]
    pub update_mode: UpdateMode,
    /// Executable inside the build, relative to the build's root.
    pub launch_path: String,
    /// `{port}`, `{process_id}` and `{sdk_addr}` are substituted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_parameters: Option<String>,
    /// 0–168; 0 turns the periodic restart off.
    #[serde(default, skip_serializing_if = "is_default")]
    pub process_restart_hours: u32,
    #[serde(default)]
    pub session_mode: SessionMode,
    #[serde(default = "default_one")]
    pub sessions_per_process: u32,
    #[serde(default = "default_storage_gb")]
    pub storage_gb: u32,
    #[serde(default, skip_serializing_if = "is_default")]
    pub force_destroy: bool,
}

/// A fleet as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fleet {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub build_id: String,
    pub update_mode: UpdateMode,
    pub launch_path: String,
    #[serde(default)]
    pub launch_parameters: Option<String>,
    pub process_restart_hours: u32,
    pub session_mode: SessionMode,
    pub sessions_per_process: u32,
    pub storage_gb: u32,
    pub force_destroy: bool,
    pub status: ResourceStatus,
    pub created_at: String,
}

impl Fleet {
    /// The spec this fleet currently runs.
    pub fn spec(&self) -> FleetSpec {
        FleetSpec {
            name: self.name.clone(),
            description: self.description.clone(),
            build_id: self.build_id.clone(),
            update_mode: self.update_mode,
            launch_path: self.launch_path.clone(),
            launch_parameters: self.launch_parameters.clone(),
            process_restart_hours: self.process_restart_hours,
            session_mode: self.session_mode,
            sessions_per_process: self.sessions_per_process,
            storage_gb: self.storage_gb,
            force_destroy: self.force_destroy,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Zones

/// One buffer rule: from `min_active_sessions` active sessions on, keep idle capacity for
/// new sessions. Exactly one amount is set:
/// - `available_servers`: this many idle servers (in parallel mode, free session slots);
/// - `available_percent`: this share of the active sessions;
/// - `available_predicted`: the session requests forecast while a new machine boots (from
///   the last minutes' arrival rate and the same time on the previous day), less the slots
///   that sessions ending meanwhile free in time, plus this many servers as a safety margin. Capacity is bought before the demand arrives instead of
///   after, so a smaller static buffer gives the same service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferRule {
    #[serde(default)]
    pub min_active_sessions: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_servers: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_predicted: Option<u32>,
}

/// A machine model a data center may buy, in rank order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineModel {
    pub instance_type: String,
    pub processes_per_machine: u32,
}

/// One data center of a zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataCenterSpec {
    pub name: String,
    /// A location the backend offers (`GET /v1/locations`).
    pub location: String,
    /// Lower is preferred.
    #[serde(default)]
    pub priority: u32,
    #[serde(default)]
    pub machine_type: MachineType,
    /// 1–10 models, ranked: the first is bought first.
    #[serde(default)]
    pub machine_models: Vec<MachineModel>,
    /// For `vm` data centers: the most processes this data center may run (before rounding
    /// up to whole machines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_server_processes: Option<u32>,
    /// For `bare_metal` data centers: machines taken from the pool at `location`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bare_metal_machines: Option<u32>,
}

/// Body of `POST /v1/zones` and `PUT /v1/zones/{id}`. `fleet_id` and `name` are immutable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSpec {
    pub fleet_id: String,
    pub name: String,
    #[serde(default)]
    pub scaling_mode: ScalingMode,
    pub initial_server_processes: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buffer_rules: Vec<BufferRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_slots_min: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_slots_max: Option<u32>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub cooldown_minutes: u32,
    #[serde(default)]
    pub placement_strategy: PlacementStrategy,
    pub data_centers: Vec<DataCenterSpec>,
}

/// A zone as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zone {
    pub id: String,
    #[serde(flatten)]
    pub spec: ZoneSpecView,
    pub status: ResourceStatus,
    pub created_at: String,
}

/// The spec fields of a [`Zone`] response. The same fields as [`ZoneSpec`], but tolerant of
/// fields a newer server adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneSpecView {
    pub fleet_id: String,
    pub name: String,
    pub scaling_mode: ScalingMode,
    pub initial_server_processes: u32,
    #[serde(default)]
    pub buffer_rules: Vec<BufferRule>,
    #[serde(default)]
    pub free_slots_min: Option<u32>,
    #[serde(default)]
    pub free_slots_max: Option<u32>,
    #[serde(default)]
    pub cooldown_minutes: u32,
    pub placement_strategy: PlacementStrategy,
    pub data_centers: Vec<DataCenterSpec>,
}

impl From<ZoneSpec> for ZoneSpecView {
    fn from(spec: ZoneSpec) -> Self {
        ZoneSpecView {
            fleet_id: spec.fleet_id,
            name: spec.name,
            scaling_mode: spec.scaling_mode,
            initial_server_processes: spec.initial_server_processes,
            buffer_rules: spec.buffer_rules,
            free_slots_min: spec.free_slots_min,
            free_slots_max: spec.free_slots_max,
            cooldown_minutes: spec.cooldown_minutes,
            placement_strategy: spec.placement_strategy,
            data_centers: spec.data_centers,
        }
    }
}

impl From<ZoneSpecView> for ZoneSpec {
    fn from(view: ZoneSpecView) -> Self {
        ZoneSpec {
            fleet_id: view.fleet_id,
            name: view.name,
            scaling_mode: view.scaling_mode,
            initial_server_processes: view.initial_server_processes,
            buffer_rules: view.buffer_rules,
            free_slots_min: view.free_slots_min,
            free_slots_max: view.free_slots_max,
            cooldown_minutes: view.cooldown_minutes,
            placement_strategy: view.placement_strategy,
            data_centers: view.data_centers,
        }
    }
}

/// Live figures of a zone: `GET /v1/zones/{id}/status`. Volatile; never part of a
/// resource's Terraform state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneStatus {
    pub zone_id: String,
    pub status: ResourceStatus,
    /// Machine count per machine status (`ACTIVE` → 2); statuses with no machine are absent.
    pub machines: BTreeMap<String, u32>,
    /// Processes that are up and take sessions but host none.
    pub processes_idle: u32,
    /// Processes hosting at least one session.
    pub processes_active: u32,
    /// Processes started but not yet ready.
    pub processes_starting: u32,
    /// How many processes the scaler currently wants.
    pub processes_desired: u32,
    pub active_sessions: u32,
    /// Sum of `max_players` over active sessions that declared it.
    pub players: u32,
    /// Live processes per build id: the progress of a build update (`bld-2` → 4,
    /// `bld-1` → 1 while an old session plays out).
    #[serde(default)]
    pub processes_by_build: BTreeMap<String, u32>,
}

/// One location the backend offers: `GET /v1/locations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub name: String,
    /// `local`, `sim`, `aws` or `bare_metal`.
    pub driver: String,
    /// Machine types this location can run.
    pub machine_types: Vec<MachineType>,
}

// ---------------------------------------------------------------------------------------------
// Bare-metal pool

/// Body of `POST /v1/bare-metal-machines` and `PUT /v1/bare-metal-machines/{id}`: a machine
/// the operator runs, registered in the pool of its `location`. `location` is immutable (a
/// machine elsewhere is another machine).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BareMetalMachineSpec {
    pub name: String,
    /// A location of driver `bare_metal` (`GET /v1/locations`).
    pub location: String,
    /// Where players reach its game ports (host name or IP address).
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_gb: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A bare-metal machine of the pool as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BareMetalMachine {
    /// `bm-…`.
    pub id: String,
    pub name: String,
    pub location: String,
    pub address: String,
    #[serde(default)]
    pub cores: Option<u32>,
    #[serde(default)]
    pub memory_gb: Option<u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The credential its agent runs with (`fleetform-agent --token`). Sensitive.
    pub agent_token: String,
    pub created_at: String,
    /// The fleetform machine it serves now (a zone took it from the pool); volatile.
    #[serde(default)]
    pub machine_id: Option<String>,
    /// The zone that took it; volatile.
    #[serde(default)]
    pub zone_id: Option<String>,
    /// When its agent last synced; volatile.
    #[serde(default)]
    pub last_heartbeat_at: Option<String>,
}

impl BareMetalMachine {
    /// The spec this machine was registered with.
    pub fn spec(&self) -> BareMetalMachineSpec {
        BareMetalMachineSpec {
            name: self.name.clone(),
            location: self.location.clone(),
            address: self.address.clone(),
            cores: self.cores,
            memory_gb: self.memory_gb,
            labels: self.labels.clone(),
        }
    }
}

/// Body of `GET /v1/bare-metal-machines`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BareMetalMachineList {
    pub machines: Vec<BareMetalMachine>,
}

// ---------------------------------------------------------------------------------------------
// Placement

/// Body of `POST /v1/fleets/{fleet}/sessions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementRequest {
    /// Zone name (or id) of the fleet.
    pub zone: String,
    /// Data-center name → measured latency; breaks ties between equal priorities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub player_latencies_ms: Option<BTreeMap<String, u32>>,
    /// Data centers whose reported latency exceeds this are not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_players: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<BTreeMap<String, String>>,
    /// A repeated key returns the first answer instead of placing again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Hold the request up to this long for capacity before answering 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_seconds: Option<u32>,
}

/// A placed session: the 201 of a placement and `GET /v1/sessions/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub fleet_id: String,
    /// The zone's name.
    pub zone: String,
    pub zone_id: String,
    pub data_center: String,
    pub machine_id: String,
    pub process_id: String,
    pub build_id: String,
    /// Where players connect: the machine's address and the process's game port.
    pub address: String,
    pub port: u16,
    pub status: SessionStatus,
    #[serde(default)]
    pub max_players: Option<u32>,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    pub created_at: String,
    #[serde(default)]
    pub ended_at: Option<String>,
    /// Why a session is `LOST`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Body of `GET /v1/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionList {
    pub sessions: Vec<Session>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Operations

/// A machine of a fleet: `GET /v1/fleets/{id}/machines`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub id: String,
    pub fleet_id: String,
    pub zone_id: String,
    pub data_center: String,
    pub location: String,
    pub instance_type: String,
    pub processes_per_machine: u32,
    pub status: MachineStatus,
    pub build_id: String,
    #[serde(default)]
    pub address: Option<String>,
    /// What the driver knows the machine by: an instance id for `aws`, a pid for `local`.
    #[serde(default)]
    pub driver_ref: Option<String>,
    pub created_at: String,
    #[serde(default)]
    pub last_heartbeat_at: Option<String>,
    /// When the machine was gone (`TERMINATED`).
    #[serde(default)]
    pub terminated_at: Option<String>,
    /// Why it was terminated (the first reason recorded).
    #[serde(default)]
    pub termination_reason: Option<String>,
    /// The pool machine it runs on (`bm-…`), for a bare-metal data center.
    #[serde(default)]
    pub bare_metal_id: Option<String>,
}

/// A game-server process as the control plane last heard of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub id: String,
    pub machine_id: String,
    pub zone_id: String,
    pub build_id: String,
    pub port: u16,
    #[serde(default)]
    pub pid: Option<u32>,
    pub status: ProcessStatus,
    pub active_sessions: u32,
    pub started_at: String,
}

/// Body of `GET /v1/fleets/{id}/machines`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineList {
    pub machines: Vec<Machine>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Answer of `POST /v1/machines/{id}/revoke` and `POST /v1/machines/{id}/reboot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineOperation {
    pub machine: Machine,
    /// Sessions the operation ended as `LOST`.
    pub sessions_lost: u32,
}

/// Answer of `POST /v1/machines/{id}/revoke`.
pub type Revoked = MachineOperation;

/// Body of `GET /v1/fleets/{id}/processes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessList {
    pub processes: Vec<Process>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Something that happened to a fleet, a zone or a machine: `GET /v1/events` and
/// `GET /v1/fleets/{id}/events`. Events are history: they outlive what they are about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    /// When it happened.
    pub time: String,
    pub level: EventLevel,
    pub producer: EventProducer,
    /// A stable UPPER_SNAKE code for programs, e.g. `MACHINE_MODEL_UNAVAILABLE`.
    pub code: String,
    #[serde(default)]
    pub fleet_id: Option<String>,
    #[serde(default)]
    pub zone_id: Option<String>,
    #[serde(default)]
    pub machine_id: Option<String>,
    /// What happened, for a person.
    pub message: String,
}

/// Query of `GET /v1/events` as [`Client::events`](crate::Client::events) sends it;
/// `None` means any. The server's default `limit` applies
/// when it is not set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Fleet id or name.
    pub fleet: Option<String>,
    /// Zone id.
    pub zone: Option<String>,
    /// Machine id.
    pub machine: Option<String>,
    pub level: Option<EventLevel>,
    pub producer: Option<EventProducer>,
    /// Case-insensitive substring of the message or the code.
    pub text: Option<String>,
    pub limit: Option<u32>,
    /// A page's `next_cursor`: the events older than that page's last.
    pub cursor: Option<String>,
}

/// Body of `GET /v1/events` and `GET /v1/fleets/{id}/events`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventList {
    pub events: Vec<Event>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A game-server process that exited non-zero or by a signal without being asked to:
/// `GET /v1/crashes` and `GET /v1/fleets/{id}/crashes`. Crashes are history: they outlive
/// their machine and zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crash {
    /// `crash-…`.
    pub id: String,
    pub fleet_id: String,
    pub zone_id: String,
    pub machine_id: String,
    pub process_id: String,
    /// The build the process ran.
    pub build_id: String,
    /// Its exit status, when it exited by itself.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that killed it (11 for SIGSEGV, 9 when the agent killed it for missing
    /// its health beats).
    #[serde(default)]
    pub signal: Option<i32>,
    /// When it exited (RFC 3339, the agent's clock).
    pub time: String,
    /// The last lines of its stdout and stderr, oldest first.
    #[serde(default)]
    pub output_tail: Vec<String>,
    /// Path of the core file on its machine, when one was written where the agent looks.
    #[serde(default)]
    pub core_dump: Option<String>,
}

/// Query of `GET /v1/crashes` as [`Client::crashes`](crate::Client::crashes) sends it;
/// `None` means any. The server's default `limit` applies when it is not set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashQuery {
    /// Fleet id or name.
    pub fleet: Option<String>,
    /// Zone id.
    pub zone: Option<String>,
    /// Machine id.
    pub machine: Option<String>,
    /// Build id.
    pub build: Option<String>,
    pub limit: Option<u32>,
    /// A page's `next_cursor`: the crashes older than that page's last.
    pub cursor: Option<String>,
}

/// Body of `GET /v1/crashes` and `GET /v1/fleets/{id}/crashes`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashList {
    pub crashes: Vec<Crash>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the server fills in for a body that leaves everything optional out is what
    /// `defaults` says (the provider plans these values).
    #[test]
    fn left_out_fields_take_the_published_defaults() {
        let fleet: FleetSpec = serde_json::from_value(serde_json::json!({
            "name": "f", "build_id": "bld-1", "launch_path": "server"
        }))
        .unwrap();
        assert_eq!(fleet.sessions_per_process, defaults::SESSIONS_PER_PROCESS);
        assert_eq!(fleet.storage_gb, defaults::STORAGE_GB);
        assert_eq!(fleet.process_restart_hours, defaults::PROCESS_RESTART_HOURS);
        assert_eq!(fleet.force_destroy, defaults::FORCE_DESTROY);
        let zone: ZoneSpec = serde_json::from_value(serde_json::json!({
            "fleet_id": "flt-1", "name": "z", "initial_server_processes": 1,
            "buffer_rules": [{"available_servers": 1}],
            "data_centers": [{"name": "a", "location": "local"}]
        }))
        .unwrap();
        assert_eq!(zone.cooldown_minutes, defaults::COOLDOWN_MINUTES);
        assert_eq!(
            zone.buffer_rules[0].min_active_sessions,
            defaults::MIN_ACTIVE_SESSIONS
        );
        assert_eq!(zone.data_centers[0].priority, defaults::PRIORITY);
    }
}
