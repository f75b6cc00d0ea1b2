//! The agent's main loop: observe (reap children, read the SDK) → plan ([`crate::plan`]) →
//! act (spawn, signal), and the sync with fleetformd that reports the result.
//!
//! Everything runs on one task on one thread: the loop owns the children, so a pid is only
//! signalled while its child is known not to be reaped (no pid-reuse race), and every spawn
//! happens on the thread whose death kills the game servers (`PR_SET_PDEATHSIG`).
//!
//! Sync rules: the report is re-sent at once whenever it differs from the one in flight
//! (the long-poll is cancelled); exits and ended sessions are kept until a sync carrying them
//! succeeds, so fleetformd must accept them more than once; transport errors and 5xx retry
//! after 100 ms doubling to 2 s while the processes keep running; a 401 means the machine is
//! gone: stop everything and exit.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use fleetform_api::agent::{
    DesiredMachine, LaunchSpec, ProcessExit, ProcessReport, SyncRequest, SyncResponse,
};
use fleetform_api::{Client, ClientError};
use tokio::process::Child;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::backoff::{Backoff, StartBackoff};
use crate::crash;
use crate::launch::{self, LaunchVars};
use crate::plan::{self, Action, KillReason, LocalProcess, Timeouts, STOP_GRACE};
use crate::ports::PortAllocator;
use crate::sdk::SdkState;
use crate::{fetch, Error, Options, Result};

/// How long to wait before fetching a build again after a failure.
const FETCH_RETRY: Duration = Duration::from_secs(10);
/// The loop wakes at least this often to check deadlines (health, grace periods, backoff).
const TICK: Duration = Duration::from_millis(250);
/// An answer with an unchanged revision faster than this means the server did not hold it;
/// the next idle sync then waits [`IDLE_RESYNC`] so a server that never holds is not hammered.
const QUICK_ANSWER: Duration = Duration::from_millis(100);
const IDLE_RESYNC: Duration = Duration::from_secs(1);

/// One game-server process this agent started.
#[derive(Debug)]
struct Managed {
    child: Child,
    pid: u32,
    port: u16,
    build_id: String,
    started_at: Instant,
    /// RFC 3339.
    started_at_text: String,
    /// The wall-clock start, to tell its core file from an older one.
    started_at_wall: std::time::SystemTime,
    /// Its working directory (the build's root) and executable, where a core may be.
    cwd: PathBuf,
    executable: String,
    /// Its stdout and stderr.
    log_path: PathBuf,
    shutdown_told_at: Option<Instant>,
    stop_requested_at: Option<Instant>,
    /// The agent asked it to stop (reported in its exit).
    requested: bool,
    killed: bool,
}

/// Where the current launch spec's build stands.
#[derive(Debug)]
enum BuildState {
    None,
    Fetching {
        build_id: String,
    },
    Ready {
        build_id: String,
        root: PathBuf,
    },
    Failed {
        build_id: String,
        error: String,
        retry_at: Instant,
    },
}

impl BuildState {
    fn build_id(&self) -> Option<&str> {
        match self {
            BuildState::None => None,
            BuildState::Fetching { build_id }
            | BuildState::Ready { build_id, .. }
            | BuildState::Failed { build_id, .. } => Some(build_id),
        }
    }
}

/// The part of a sync request that describes local state; a change in it triggers a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Report {
    processes: Vec<ProcessReport>,
    exited: Vec<ProcessExit>,
    ended_sessions: Vec<String>,
    error: Option<String>,
}

/// A sync on its way.
#[derive(Debug)]
struct InFlight {
    task: JoinHandle<Result<SyncResponse, ClientError>>,
    report: Report,
    known_revision: Option<String>,
    wait_ms: u32,
    started: Instant,
}

enum Event {
    Synced(std::result::Result<Result<SyncResponse, ClientError>, JoinError>),
    Fetched(String, std::result::Result<Result<PathBuf>, JoinError>),
    Woken,
    Terminate,
}

/// How a sync ended, for the loop.
enum SyncOutcome {
    Continue,
    /// fleetformd answered 401: the machine no longer exists.
    MachineGone,
}

/// The agent's state and main loop.
pub struct Supervisor {
    client: Client,
    address: String,
    work_dir: PathBuf,
    timeouts: Timeouts,
    sdk: Arc<SdkState>,
    sdk_addr: String,
    ports: PortAllocator,
    processes: BTreeMap<String, Managed>,
    desired: Option<DesiredMachine>,
    revision: Option<String>,
    heartbeat_interval_ms: u32,
    pending_exits: Vec<ProcessExit>,
    pending_ended: Vec<String>,
    build: BuildState,
    fetch_task: Option<(String, JoinHandle<Result<PathBuf>>)>,
    start_backoff: StartBackoff,
    launch_error: Option<String>,
    sync: Option<InFlight>,
    /// The last acknowledged report, less the exits and ended sessions it delivered.
    acked: Option<Report>,
    sync_backoff: Backoff,
    sync_retry_at: Option<Instant>,
    idle_resync_at: Option<Instant>,
    /// Failed syncs in a row.
    sync_failures: u32,
    connected: bool,
    /// The last `report_seq` sent (see `SyncRequest::report_seq`).
    last_report_seq: std::cell::Cell<u64>,
    /// The machine fleetformd last said this agent serves. A bare-metal agent serves one
    /// machine per zone assignment (and its pool machine's id between them).
    machine_id: Option<String>,
}

impl Supervisor {
    /// A supervisor talking to `options.server`, serving processes the SDK at `sdk_addr`.
    pub fn new(options: Options, sdk: Arc<SdkState>, sdk_addr: String) -> Result<Self> {
        let client = Client::new(&options.server, &options.token)?;
        Ok(Supervisor {
            client,
            address: options.address.clone(),
            work_dir: options.work_dir.clone(),
            timeouts: Timeouts {
                health: options.health_timeout(),
                ..Timeouts::default()
            },
            sdk,
            sdk_addr,
            ports: PortAllocator::new(options.port_range.clone()),
            processes: BTreeMap::new(),
            desired: None,
            revision: None,
            heartbeat_interval_ms: 0,
            pending_exits: Vec::new(),
            pending_ended: Vec::new(),
            build: BuildState::None,
            fetch_task: None,
            start_backoff: StartBackoff::default(),
            launch_error: None,
            sync: None,
            acked: None,
            sync_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
            sync_retry_at: None,
            idle_resync_at: None,
            sync_failures: 0,
            connected: false,
            last_report_seq: std::cell::Cell::new(0),
            machine_id: None,
        })
    }

    /// Runs until `shutdown`, a machine shutdown ordered by fleetformd, or a 401.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let mut children = signal(SignalKind::child()).map_err(|source| Error::Io {
            context: "listening for SIGCHLD".into(),
            source,
        })?;
        tokio::pin!(shutdown);
        loop {
            let now = Instant::now();
            self.observe(now);
            self.reconcile(now);
            if self
                .desired
                .as_ref()
                .is_some_and(|desired| desired.shutdown)
                && self.processes.is_empty()
            {
                info!("machine shut down by fleetformd; every process stopped");
                self.final_sync().await;
                return Ok(());
            }
            self.schedule_sync(now);
            let wake_at = self.next_wake(now);

            let event = tokio::select! {
                result = sync_done(&mut self.sync) => Event::Synced(result),
                (build_id, result) = fetch_done(&mut self.fetch_task) => Event::Fetched(build_id, result),
                _ = children.recv() => Event::Woken,
                () = self.sdk.local_changed() => Event::Woken,
                () = tokio::time::sleep_until(wake_at) => Event::Woken,
                () = &mut shutdown => Event::Terminate,
            };
            let now = Instant::now();
            match event {
                Event::Synced(result) => {
                    let in_flight = self.sync.take().expect("a sync was in flight");
                    if let SyncOutcome::MachineGone = self.on_synced(in_flight, result, now) {
                        warn!("fleetformd no longer knows this machine (401); stopping");
                        self.stop_all(&mut children).await;
                        return Ok(());
                    }
                }
                Event::Fetched(build_id, result) => {
                    self.fetch_task = None;
                    self.on_fetched(build_id, result, now);
                }
                Event::Woken => {}
                Event::Terminate => {
                    info!("terminating: stopping every process");
                    self.stop_all(&mut children).await;
                    // Best effort: tell fleetformd how the processes ended.
                    if let Some(in_flight) = self.sync.take() {
                        in_flight.task.abort();
                    }
                    let request = self.request(self.report(), 0);
                    let _ = tokio::time::timeout(
                        Duration::from_secs(3),
                        self.client.agent_sync(&request),
                    )
                    .await;
                    return Ok(());
                }
            }
        }
    }

    // -- observe -------------------------------------------------------------------------

    /// Reaps exited children and collects sessions ended through the SDK.
    fn observe(&mut self, now: Instant) {
        let mut exited = Vec::new();
        for (process_id, managed) in &mut self.processes {
            match managed.child.try_wait() {
                Ok(Some(status)) => exited.push((process_id.clone(), status)),
                Ok(None) => {}
                Err(err) => warn!(%process_id, %err, "cannot check a game server's status"),
            }
        }
        for (process_id, status) in exited {
            self.on_exit(&process_id, status, now);
        }
        self.pending_ended.extend(self.sdk.take_ended_sessions());
    }

    fn on_exit(&mut self, process_id: &str, status: ExitStatus, now: Instant) {
        let Some(managed) = self.processes.remove(process_id) else {
            return;
        };
        self.sdk.remove_process(process_id);
        let lived = now.saturating_duration_since(managed.started_at);
        let requested = managed.requested;
        if requested {
            info!(%process_id, %status, "game server stopped");
        } else {
            warn!(
                %process_id,
                %status,
                core_dumped = status.core_dumped(),
                lived_ms = lived.as_millis() as u64,
                "game server exited on its own"
            );
            self.start_backoff.unrequested_exit(lived, now);
        }
        let mut exit = ProcessExit {
            process_id: process_id.to_string(),
            exit_code: status.code(),
            signal: status.signal(),
            requested,
            exited_at: rfc3339_now(),
            build_id: Some(managed.build_id.clone()),
            started_at: Some(managed.started_at_text.clone()),
            ..ProcessExit::default()
        };
        if exit.is_crash() {
            exit.output_tail = crash::read_output_tail(&managed.log_path);
            if status.core_dumped() {
                exit.core_dump = self.find_core(process_id, &managed, status);
            }
        }
        self.pending_exits.push(exit);
    }

    /// The core file a crashed process left, moved next to its log when it is in the
    /// build's root (see [`crash`]).
    fn find_core(&self, process_id: &str, managed: &Managed, status: ExitStatus) -> Option<String> {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        // SAFETY: getuid and getgid cannot fail and have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let process = crash::DeadProcess {
            pid: managed.pid,
            signal: status.signal().unwrap_or_default(),
            executable: &managed.executable,
            uid,
            gid,
            hostname: hostname.trim(),
            cwd: &managed.cwd,
        };
        let keep_as = self
            .work_dir
            .join("logs")
            .join(format!("{process_id}.core"));
        let core = crash::find_core(&process, managed.started_at_wall, &keep_as)?;
        info!(%process_id, core = %core.display(), "game server left a core file");
        Some(core.display().to_string())
    }

    fn local_processes(&self) -> Vec<LocalProcess> {
        self.processes
            .iter()
            .map(|(process_id, managed)| {
                let sdk = self.sdk.process(process_id).unwrap_or_default();
                LocalProcess {
                    process_id: process_id.clone(),
                    build_id: managed.build_id.clone(),
                    started_at: managed.started_at,
                    ready_at: sdk.ready_at,
                    last_health: sdk.last_health,
                    hosted: sdk.hosted,
                    ended_sessions: sdk.ended,
                    shutdown_told_at: managed.shutdown_told_at,
                    stop_requested_at: managed.stop_requested_at,
                    killed: managed.killed,
                }
            })
            .collect()
    }

    // -- plan and act --------------------------------------------------------------------

    fn reconcile(&mut self, now: Instant) {
        let Some(desired) = self.desired.clone() else {
            return; // Nothing is known to be wanted before the first sync.
        };
        if let Some(spec) = &desired.launch {
            self.ensure_build(spec, now);
        }
        let actions = plan::plan(&desired, &self.local_processes(), now, self.timeouts);
        for action in actions {
            match action {
                Action::Start(count) => {
                    if let Some(spec) = &desired.launch {
                        self.start(spec, count, now);
                    }
                }
                Action::TellShutdown(process_id) => {
                    info!(%process_id, "session over: telling the game server to shut down");
                    self.sdk.set_shutdown(&process_id);
                    if let Some(managed) = self.processes.get_mut(&process_id) {
                        managed.shutdown_told_at = Some(now);
                        managed.requested = true;
                    }
                }
                Action::Stop(process_id) => {
                    info!(%process_id, "stopping game server (SIGTERM)");
                    self.sdk.set_shutdown(&process_id);
                    if let Some(managed) = self.processes.get_mut(&process_id) {
                        managed.stop_requested_at = Some(now);
                        managed.requested = true;
                        send_signal(managed, libc::SIGTERM);
                    }
                }
                Action::Kill(process_id, reason) => {
                    let Some(managed) = self.processes.get_mut(&process_id) else {
                        continue;
                    };
                    match reason {
                        KillReason::Unhealthy => {
                            warn!(%process_id, "no health beat: killing the game server")
                        }
                        KillReason::StopTimeout => {
                            warn!(%process_id, "did not stop in time: killing the game server")
                        }
                    }
                    managed.killed = true;
                    send_signal(managed, libc::SIGKILL);
                }
            }
        }
    }

    /// Starts fetching the launch spec's build if it is not there, or again after a failure.
    fn ensure_build(&mut self, spec: &LaunchSpec, now: Instant) {
        let retry = match &self.build {
            BuildState::Failed {
                build_id, retry_at, ..
            } => build_id == &spec.build_id && now >= *retry_at,
            other => other.build_id() != Some(spec.build_id.as_str()),
        };
        if !retry {
            return;
        }
        if self.build.build_id() != Some(spec.build_id.as_str()) {
            info!(build_id = %spec.build_id, source = %spec.source, "fetching build");
            self.start_backoff.reset();
        }
        if let Some((_, task)) = self.fetch_task.take() {
            task.abort();
        }
        let work_dir = self.work_dir.clone();
        let spec_for_task = spec.clone();
        let task = tokio::spawn(async move { fetch::fetch(&spec_for_task, &work_dir).await });
        self.fetch_task = Some((spec.build_id.clone(), task));
        self.build = BuildState::Fetching {
            build_id: spec.build_id.clone(),
        };
    }

    fn on_fetched(
        &mut self,
        build_id: String,
        result: std::result::Result<Result<PathBuf>, JoinError>,
        now: Instant,
    ) {
        if self.build.build_id() != Some(build_id.as_str()) {
            return; // A fetch for a build no longer wanted.
        }
        let result = result.unwrap_or_else(|err| Err(Error::Launch(format!("fetch task: {err}"))));
        self.build = match result {
            Ok(root) => {
                info!(%build_id, root = %root.display(), "build ready");
                BuildState::Ready { build_id, root }
            }
            Err(err) => {
                let error = format!("build {build_id}: {err}");
                warn!(%error, "build fetch failed; retrying in 10s");
                BuildState::Failed {
                    build_id,
                    error,
                    retry_at: now + FETCH_RETRY,
                }
            }
        };
    }

    /// Starts up to `count` processes of `spec`, if its build is ready and no crash backoff
    /// holds starts back.
    fn start(&mut self, spec: &LaunchSpec, count: u32, now: Instant) {
        let root = match &self.build {
            BuildState::Ready { build_id, root } if build_id == &spec.build_id => root.clone(),
            _ => return,
        };
        for _ in 0..count {
            if !self.start_backoff.allows(now) {
                return;
            }
            match self.spawn(spec, &root, now) {
                Ok(()) => self.launch_error = None,
                Err(err) => {
                    warn!(%err, "cannot start a game server");
                    self.launch_error = Some(err.to_string());
                    self.start_backoff.spawn_failed(now);
                    return;
                }
            }
        }
    }

    fn spawn(&mut self, spec: &LaunchSpec, root: &std::path::Path, now: Instant) -> Result<()> {
        let process_id = format!("proc-{}", uuid::Uuid::now_v7().simple());
        let in_use: BTreeSet<u16> = self.processes.values().map(|m| m.port).collect();
        let port = self.ports.allocate(&in_use)?;
        let log_path = self.work_dir.join("logs").join(format!("{process_id}.log"));
        let vars = LaunchVars {
            port,
            process_id: &process_id,
            sdk_addr: &self.sdk_addr,
        };
        let mut command = launch::command(root, spec, &vars, &log_path)?;
        let executable = std::path::Path::new(&spec.launch_path)
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let child = command.spawn().map_err(|source| Error::Io {
            context: format!("starting {}", root.join(&spec.launch_path).display()),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        info!(%process_id, pid, port, build_id = %spec.build_id, "started game server");
        self.sdk.add_process(&process_id);
        self.processes.insert(
            process_id,
            Managed {
                child,
                pid,
                port,
                build_id: spec.build_id.clone(),
                started_at: now,
                started_at_text: rfc3339_now(),
                started_at_wall: std::time::SystemTime::now(),
                cwd: root.to_path_buf(),
                executable,
                log_path,
                shutdown_told_at: None,
                stop_requested_at: None,
                requested: false,
                killed: false,
            },
        );
        Ok(())
    }

    /// Stops every process: SIGTERM, then SIGKILL for those still there after 5 s; waits
    /// until all are reaped.
    async fn stop_all(&mut self, children: &mut Signal) {
        let now = Instant::now();
        for (process_id, managed) in &mut self.processes {
            self.sdk.set_shutdown(process_id);
            managed.requested = true;
            if managed.stop_requested_at.is_none() {
                managed.stop_requested_at = Some(now);
                send_signal(managed, libc::SIGTERM);
            }
        }
        let deadline = now + STOP_GRACE;
        while !self.processes.is_empty() && Instant::now() < deadline {
            tokio::select! {
                _ = children.recv() => {}
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            self.observe(Instant::now());
        }
        for (process_id, managed) in &mut self.processes {
            warn!(%process_id, "did not stop in time: killing the game server");
            managed.killed = true;
            send_signal(managed, libc::SIGKILL);
        }
        let ids: Vec<String> = self.processes.keys().cloned().collect();
        for process_id in ids {
            let Some(managed) = self.processes.get_mut(&process_id) else {
                continue;
            };
            match tokio::time::timeout(Duration::from_secs(2), managed.child.wait()).await {
                Ok(Ok(status)) => self.on_exit(&process_id, status, Instant::now()),
                _ => warn!(%process_id, "game server did not go away after SIGKILL"),
            }
        }
    }

    // -- sync ----------------------------------------------------------------------------

    fn report(&self) -> Report {
        let processes = self
            .local_processes()
            .into_iter()
            .filter_map(|local| {
                let managed = self.processes.get(&local.process_id)?;
                Some(ProcessReport {
                    state: local.state(),
                    process_id: local.process_id,
                    port: managed.port,
                    pid: managed.pid,
                    build_id: managed.build_id.clone(),
                    started_at: managed.started_at_text.clone(),
                })
            })
            .collect();
        Report {
            processes,
            exited: self.pending_exits.clone(),
            ended_sessions: self.pending_ended.clone(),
            error: self.error(),
        }
    }

    /// The problem the machine cannot get past by itself, if any.
    fn error(&self) -> Option<String> {
        match &self.build {
            BuildState::Failed { error, .. } => Some(error.clone()),
            _ => self.launch_error.clone(),
        }
    }

    fn request(&self, report: Report, wait_ms: u32) -> SyncRequest {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_micros() as u64)
            .unwrap_or(0);
        let report_seq = now_us.max(self.last_report_seq.get() + 1);
        self.last_report_seq.set(report_seq);
        SyncRequest {
            report_seq,
            agent_pid: std::process::id(),
            address: self.address.clone(),
            known_revision: self.revision.clone(),
            wait_ms,
            processes: report.processes,
            exited: report.exited,
            ended_sessions: report.ended_sessions,
            error: report.error,
        }
    }

    /// Starts a sync unless the one in flight already carries the current report; cancels
    /// the one in flight when local state changed.
    fn schedule_sync(&mut self, now: Instant) {
        let report = self.report();
        if let Some(in_flight) = &self.sync {
            if in_flight.report == report {
                return;
            }
            debug!("local state changed: cancelling the long-poll to report at once");
            in_flight.task.abort();
            self.sync = None;
        }
        if self.sync_retry_at.is_some_and(|at| now < at) {
            return;
        }
        let changed = self.acked.as_ref() != Some(&report);
        if !changed && self.idle_resync_at.is_some_and(|at| now < at) {
            return;
        }
        let wait_ms = if self.revision.is_some() {
            self.heartbeat_interval_ms / 2
        } else {
            0
        };
        let request = self.request(report.clone(), wait_ms);
        let client = self.client.clone();
        let task = tokio::spawn(async move { client.agent_sync(&request).await });
        self.sync = Some(InFlight {
            task,
            report,
            known_revision: self.revision.clone(),
            wait_ms,
            started: now,
        });
    }

    fn on_synced(
        &mut self,
        in_flight: InFlight,
        result: std::result::Result<Result<SyncResponse, ClientError>, JoinError>,
        now: Instant,
    ) -> SyncOutcome {
        let response = match result {
            Ok(Ok(response)) => response,
            Ok(Err(err)) if err.status().map(|s| s.as_u16()) == Some(401) => {
                return SyncOutcome::MachineGone;
            }
            Ok(Err(err)) => {
                self.sync_failed(&err.to_string(), now);
                return SyncOutcome::Continue;
            }
            Err(err) => {
                self.sync_failed(&format!("sync task: {err}"), now);
                return SyncOutcome::Continue;
            }
        };
        if !self.connected {
            info!(machine_id = %response.machine_id, "connected to fleetformd");
            self.connected = true;
        }
        self.sync_backoff.reset();
        self.sync_failures = 0;
        self.sync_retry_at = None;
        // What was delivered is acknowledged; later entries stay for the next sync.
        let delivered_exits = in_flight.report.exited.len().min(self.pending_exits.len());
        self.pending_exits.drain(..delivered_exits);
        let delivered_ended = in_flight
            .report
            .ended_sessions
            .len()
            .min(self.pending_ended.len());
        self.pending_ended.drain(..delivered_ended);
        self.acked = Some(Report {
            exited: Vec::new(),
            ended_sessions: Vec::new(),
            ..in_flight.report
        });

        let unchanged = in_flight.known_revision.as_deref() == Some(response.revision.as_str());
        let quick = now.saturating_duration_since(in_flight.started) < QUICK_ANSWER;
        self.idle_resync_at =
            (unchanged && quick && in_flight.wait_ms > 0).then_some(now + IDLE_RESYNC);
        if !unchanged {
            debug!(revision = %response.revision, "desired state changed");
        }
        if self
            .machine_id
            .as_ref()
            .is_some_and(|previous| previous != &response.machine_id)
        {
            // A bare-metal machine moved to another assignment (or back to the pool): what
            // runs here belonged to the previous one, whose sessions are over.
            info!(machine_id = %response.machine_id, "this agent now serves another machine: stopping the previous one's processes");
            for (process_id, managed) in &mut self.processes {
                if managed.stop_requested_at.is_none() && !managed.killed {
                    self.sdk.set_shutdown(process_id);
                    managed.stop_requested_at = Some(now);
                    managed.requested = true;
                    send_signal(managed, libc::SIGTERM);
                }
            }
        }
        self.machine_id = Some(response.machine_id.clone());
        self.revision = Some(response.revision);
        self.heartbeat_interval_ms = response.heartbeat_interval_ms;
        for process_id in self.processes.keys() {
            let sessions = response
                .desired
                .sessions
                .get(process_id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            self.sdk.set_assigned(process_id, sessions);
        }
        self.desired = Some(response.desired);
        SyncOutcome::Continue
    }

    fn sync_failed(&mut self, error: &str, now: Instant) {
        let delay = self.sync_backoff.fail();
        self.sync_failures += 1;
        if self.connected {
            warn!(%error, "lost fleetformd; processes keep running, retrying");
            self.connected = false;
        } else if self.sync_failures % 30 == 1 {
            warn!(%error, failures = self.sync_failures, "cannot reach fleetformd; retrying");
        } else {
            debug!(%error, retry_ms = delay.as_millis() as u64, "sync failed");
        }
        self.sync_retry_at = Some(now + delay);
    }

    /// The last sync after a machine shutdown: delivers the final exits, a few tries at most.
    async fn final_sync(&mut self) {
        if let Some(in_flight) = self.sync.take() {
            in_flight.task.abort();
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..5 {
            let request = self.request(self.report(), 0);
            match self.client.agent_sync(&request).await {
                Ok(_) => return,
                Err(err) if err.status().map(|s| s.as_u16()) == Some(401) => return,
                Err(err) => {
                    debug!(%err, "final sync failed");
                    tokio::time::sleep(backoff.fail()).await;
                }
            }
        }
        warn!("could not deliver the final report to fleetformd");
    }

    /// When the loop must look again even if nothing happens.
    fn next_wake(&self, now: Instant) -> Instant {
        let mut deadlines = vec![self.start_backoff.not_before()];
        if self.sync.is_none() {
            deadlines.extend([self.sync_retry_at, self.idle_resync_at]);
        }
        deadlines
            .into_iter()
            .flatten()
            .filter(|at| *at > now)
            .fold(now + TICK, Instant::min)
    }
}

/// Waits for the sync in flight; never resolves when there is none.
async fn sync_done(
    sync: &mut Option<InFlight>,
) -> std::result::Result<Result<SyncResponse, ClientError>, JoinError> {
    match sync {
        Some(in_flight) => (&mut in_flight.task).await,
        None => std::future::pending().await,
    }
}

/// Waits for the build fetch in flight; never resolves when there is none.
async fn fetch_done(
    fetch: &mut Option<(String, JoinHandle<Result<PathBuf>>)>,
) -> (String, std::result::Result<Result<PathBuf>, JoinError>) {
    match fetch {
        Some((build_id, task)) => {
            let result = task.await;
            (build_id.clone(), result)
        }
        None => std::future::pending().await,
    }
}

/// Signals a child that has not been reaped yet. Once reaped, `Child::id` is `None`, so a pid
/// that the OS may have reused is never signalled.
fn send_signal(managed: &Managed, signal: libc::c_int) {
    if let Some(pid) = managed.child.id() {
        // SAFETY: kill(2) has no memory-safety preconditions.
        let result = unsafe { libc::kill(pid as libc::pid_t, signal) };
        if result != 0 {
            debug!(pid, signal, err = %std::io::Error::last_os_error(), "kill failed");
        }
    }
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
