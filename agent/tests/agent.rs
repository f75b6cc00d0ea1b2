//! End-to-end tests of the agent with the real `example-game-server` binary:
//! - the SDK server in-process (over [`fleetform_agent::sdk::SdkState`]) with a game server;
//! - the real `fleetform-agent` binary against a fake fleetformd that speaks
//!   `POST /v1/agent/sync`.
//!
//! The game server binary is not part of this package, so it is looked up in the target
//! directory: build it first (`cargo build -p example-game-server`, or run the tests with
//! `cargo test -p fleetform-agent -p example-game-server`).

use std::net::{Ipv4Addr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use fleetform_agent::sdk::{self, SdkState};
use fleetform_api::agent::{
    AgentProcessState, AssignedSession, DesiredMachine, LaunchSpec, SyncRequest, SyncResponse,
};
use fleetform_api::{ErrorBody, ErrorDetail, SessionMode};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("debug")
}

fn game_server_binary() -> PathBuf {
    let path = target_dir().join("example-game-server");
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build -p example-game-server`",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    StdListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child on drop, so a failing test leaves nothing running (the agent's game
/// servers die with it).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics naming `what`.
async fn eventually<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_json(url: &str) -> Option<Value> {
    let response = reqwest::get(url).await.ok()?;
    response.json().await.ok()
}

async fn post_status(url: &str) -> u16 {
    reqwest::Client::new()
        .post(url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn session(id: &str) -> AssignedSession {
    AssignedSession {
        id: id.into(),
        max_players: Some(4),
        properties: Default::default(),
    }
}

// -- SDK in-process + game server ---------------------------------------------------------

async fn start_sdk() -> (Arc<SdkState>, String) {
    let state = SdkState::new();
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let router = sdk::router(state.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (state, addr)
}

fn spawn_game_server(sdk_addr: &str, process_id: &str, port: u16, args: &[&str]) -> Guard {
    Guard(
        Command::new(game_server_binary())
            .args(args)
            .env("FLEETFORM_SDK_ADDR", sdk_addr)
            .env("FLEETFORM_PROCESS_ID", process_id)
            .env("FLEETFORM_PORT", port.to_string())
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn game_server_follows_the_sdk() {
    let (state, sdk_addr) = start_sdk().await;
    state.add_process("proc-a");
    let port = free_port();
    let mut game = spawn_game_server(&sdk_addr, "proc-a", port, &[]);
    let game_url = format!("http://127.0.0.1:{port}");

    eventually("ready and a health beat", Duration::from_secs(10), || {
        let process = state.process("proc-a")?;
        (process.ready_at.is_some() && process.last_health.is_some()).then_some(())
    })
    .await;
    let idle = get_json(&format!("{game_url}/session")).await.unwrap();
    assert_eq!(idle["session_id"], Value::Null);
    assert_eq!(idle["process_id"], "proc-a");
    assert_eq!(post_status(&format!("{game_url}/session/end")).await, 409);

    // A session assigned by the control plane reaches the game server through the long-poll.
    state.set_assigned("proc-a", &[session("s-1")]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let view = get_json(&format!("{game_url}/session")).await.unwrap();
        if view["session_id"] == "s-1" {
            assert_eq!(view["sessions"], serde_json::json!(["s-1"]));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "session never reached the game server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The game ends its match: the SDK hears about it once.
    assert_eq!(post_status(&format!("{game_url}/session/end")).await, 204);
    assert_eq!(state.take_ended_sessions(), ["s-1"]);
    let view = get_json(&format!("{game_url}/session")).await.unwrap();
    assert_eq!(view["session_id"], Value::Null);

    // Told to shut down, it exits 0.
    state.set_shutdown("proc-a");
    let status = game.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn game_server_misbehaves_on_request() {
    use std::os::unix::process::ExitStatusExt;

    let (state, sdk_addr) = start_sdk().await;
    for id in ["crash", "segv", "lazy"] {
        state.add_process(id);
    }
    let mut crash = spawn_game_server(
        &sdk_addr,
        "crash",
        free_port(),
        &["--crash-after-secs", "1"],
    );
    let mut segv = spawn_game_server(
        &sdk_addr,
        "segv",
        free_port(),
        &["--crash-after-secs", "1", "--crash-signal"],
    );
    let _lazy = spawn_game_server(
        &sdk_addr,
        "lazy",
        free_port(),
        &["--never-ready", "--no-health"],
    );
    assert_eq!(
        crash.wait_exit(Duration::from_secs(10)).await.code(),
        Some(3)
    );
    assert_eq!(
        segv.wait_exit(Duration::from_secs(10)).await.signal(),
        Some(libc::SIGSEGV)
    );
    let lazy = state.process("lazy").unwrap();
    assert!(lazy.ready_at.is_none() && lazy.last_health.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn game_server_gives_up_without_an_sdk() {
    let dead_sdk = format!("http://127.0.0.1:{}", free_port());
    let mut game = spawn_game_server(&dead_sdk, "proc-x", free_port(), &[]);
    let status = game.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(1));
}

// -- the agent binary against a fake fleetformd ------------------------------------------

/// A fake fleetformd: records every sync, answers with `desired`, holds answers while the
/// revision is unchanged, and drops ended sessions like the real one.
#[derive(Clone)]
struct FakeServer {
    state: Arc<Mutex<FakeState>>,
    revision: watch::Sender<u64>,
    url: String,
}

struct FakeState {
    desired: DesiredMachine,
    requests: Vec<SyncRequest>,
    unauthorized: bool,
    /// Answer 503 (after recording the request).
    failing: bool,
}

impl FakeServer {
    async fn start(desired: DesiredMachine) -> Self {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let server = FakeServer {
            state: Arc::new(Mutex::new(FakeState {
                desired,
                requests: Vec::new(),
                unauthorized: false,
                failing: false,
            })),
            revision: watch::Sender::new(1),
            url: format!("http://{}", listener.local_addr().unwrap()),
        };
        let router = Router::new()
            .route("/v1/agent/sync", post(fake_sync))
            .with_state(server.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        server
    }

    fn update(&self, change: impl FnOnce(&mut FakeState)) {
        change(&mut self.state.lock().unwrap());
        self.revision.send_modify(|revision| *revision += 1);
    }

    fn last_request(&self) -> Option<SyncRequest> {
        self.state.lock().unwrap().requests.last().cloned()
    }

    fn any_request(&self, check: impl Fn(&SyncRequest) -> bool) -> bool {
        self.state.lock().unwrap().requests.iter().any(check)
    }

    /// The processes of the latest report, once all `count` of them are READY.
    async fn ready_processes(&self, count: usize) -> Vec<(String, u16)> {
        eventually(
            &format!("{count} READY processes"),
            Duration::from_secs(20),
            || {
                let request = self.last_request()?;
                let ready: Vec<(String, u16)> = request
                    .processes
                    .iter()
                    .filter(|p| p.state == AgentProcessState::Ready)
                    .map(|p| (p.process_id.clone(), p.port))
                    .collect();
                (ready.len() == count && request.processes.len() == count).then_some(ready)
            },
        )
        .await
    }
}

async fn fake_sync(State(server): State<FakeServer>, Json(request): Json<SyncRequest>) -> Response {
    let mut revision = server.revision.subscribe();
    {
        let mut state = server.state.lock().unwrap();
        if state.unauthorized {
            let body = ErrorBody {
                error: ErrorDetail {
                    code: "unauthorized".into(),
                    message: "unknown agent token".into(),
                    field: None,
                },
            };
            return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
        }
        let ended = request.ended_sessions.clone();
        for sessions in state.desired.sessions.values_mut() {
            sessions.retain(|session| !ended.contains(&session.id));
        }
        state
            .desired
            .sessions
            .retain(|_, sessions| !sessions.is_empty());
        state.requests.push(request.clone());
        if state.failing {
            let body = ErrorBody {
                error: ErrorDetail {
                    code: "unavailable".into(),
                    message: "database is down".into(),
                    field: None,
                },
            };
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        }
    }
    let known = request.known_revision.clone();
    let wait = Duration::from_millis(u64::from(request.wait_ms).min(5_000));
    let current = *revision.borrow_and_update();
    if known == Some(current.to_string()) {
        let _ = tokio::time::timeout(wait, revision.changed()).await;
    }
    let revision = *revision.borrow();
    let desired = server.state.lock().unwrap().desired.clone();
    Json(SyncResponse {
        machine_id: "mch-test".into(),
        revision: revision.to_string(),
        heartbeat_interval_ms: 2_000,
        desired,
    })
    .into_response()
}

fn desired(process_count: u32) -> DesiredMachine {
    let build_dir = game_server_binary().parent().unwrap().to_path_buf();
    DesiredMachine {
        shutdown: false,
        launch: Some(LaunchSpec {
            build_id: "bld-test".into(),
            source: format!("file://{}", build_dir.display()),
            sha256: None,
            launch_path: "example-game-server".into(),
            launch_parameters: Some("--port {port}".into()),
            session_mode: SessionMode::Simple,
            sessions_per_process: 1,
        }),
        process_count,
        sessions: Default::default(),
        drain: vec![],
    }
}

fn spawn_agent(server: &FakeServer, work_dir: &std::path::Path) -> Guard {
    let log = std::fs::File::create(work_dir.join("agent.log")).unwrap();
    Guard(
        Command::new(env!("CARGO_BIN_EXE_fleetform-agent"))
            .args(["--server", &server.url, "--token", "agent-token"])
            .arg("--work-dir")
            .arg(work_dir)
            .env("RUST_LOG", "fleetform_agent=debug")
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks whether the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_sessions_and_replaces_processes() {
    let work = tempfile::tempdir().unwrap();
    let server = FakeServer::start(desired(2)).await;
    let mut agent = spawn_agent(&server, work.path());
    let dump_log = || std::fs::read_to_string(work.path().join("agent.log")).unwrap_or_default();

    let ready = server.ready_processes(2).await;
    let (first_id, first_port) = ready[0].clone();
    let first = server.last_request().unwrap();
    assert_eq!(first.address, "127.0.0.1");
    assert_ne!(ready[0].1, ready[1].1, "distinct ports");
    assert!(work.path().join(format!("logs/{first_id}.log")).is_file());

    // Place a session: it reaches the game server through agent and SDK.
    let placed = Instant::now();
    server.update(|state| {
        state
            .desired
            .sessions
            .insert(first_id.clone(), vec![session("s-1")]);
    });
    let game_url = format!("http://127.0.0.1:{first_port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = get_json(&format!("{game_url}/session")).await;
        if view
            .as_ref()
            .is_some_and(|view| view["session_id"] == "s-1")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "session never arrived:\n{}",
            dump_log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "session reached the game server after {:?}",
        placed.elapsed()
    );

    // The match ends: fleetformd hears of it, the process is restarted (simple mode).
    assert_eq!(post_status(&format!("{game_url}/session/end")).await, 204);
    eventually("the ended session reported", Duration::from_secs(5), || {
        server
            .any_request(|r| r.ended_sessions.contains(&"s-1".to_string()))
            .then_some(())
    })
    .await;
    eventually(
        "the first process to exit, requested",
        Duration::from_secs(15),
        || {
            server
                .any_request(|r| {
                    r.exited.iter().any(|exit| {
                        exit.process_id == first_id && exit.requested && exit.exit_code == Some(0)
                    })
                })
                .then_some(())
        },
    )
    .await;
    let after = server.ready_processes(2).await;
    assert!(
        after.iter().all(|(id, _)| *id != first_id),
        "the process that hosted a session was replaced"
    );

    // Scale to one: one idle process stops.
    server.update(|state| state.desired.process_count = 1);
    let remaining = server.ready_processes(1).await;

    // Machine shutdown: every process stops, one last sync, exit 0.
    let pid = server
        .last_request()
        .unwrap()
        .processes
        .iter()
        .find(|p| p.process_id == remaining[0].0)
        .unwrap()
        .pid;
    server.update(|state| state.desired.shutdown = true);
    let status = agent.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "agent exited with {status}:\n{}",
        dump_log()
    );
    if std::env::var_os("SHOW_AGENT_LOG").is_some() {
        eprintln!("{}", dump_log());
    }
    let last = server.last_request().unwrap();
    assert!(last.processes.is_empty(), "{last:?}");
    assert!(!pid_alive(pid));
    assert!(server.any_request(|r| r
        .exited
        .iter()
        .any(|exit| exit.process_id == remaining[0].0 && exit.requested)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reports_crashes_and_unhealthy_processes() {
    let work = tempfile::tempdir().unwrap();
    // A build directory of its own: the crash may leave a core file in it.
    let build_dir = work.path().join("build");
    std::fs::create_dir_all(&build_dir).unwrap();
    std::fs::copy(game_server_binary(), build_dir.join("example-game-server")).unwrap();
    let mut machine = desired(1);
    let launch = machine.launch.as_mut().unwrap();
    launch.source = format!("file://{}", build_dir.display());
    launch.launch_parameters = Some("--port {port} --crash-after-secs 1 --crash-signal".into());
    let server = FakeServer::start(machine).await;
    let _agent = spawn_agent(&server, work.path());

    let crash = eventually("a crash by SIGSEGV", Duration::from_secs(20), || {
        server
            .state
            .lock()
            .unwrap()
            .requests
            .iter()
            .flat_map(|r| r.exited.iter())
            .find(|exit| exit.signal == Some(libc::SIGSEGV) && !exit.requested)
            .cloned()
    })
    .await;
    assert_eq!(crash.build_id.as_deref(), Some("bld-test"));
    assert!(crash.started_at.is_some());
    assert!(
        crash
            .output_tail
            .iter()
            .any(|line| line.contains("crashing with SIGSEGV")),
        "{:?}",
        crash.output_tail
    );
    // A core file where this host's core_pattern puts one the agent can find: the kernel
    // default (`core` in the working directory), moved next to the process's log.
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let mut core_limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut core_limit) };
    if pattern.trim() == "core" && core_limit.rlim_max > 0 {
        let core = crash.core_dump.as_deref().expect("a core file");
        assert_eq!(
            std::path::Path::new(core),
            work.path()
                .join("logs")
                .join(format!("{}.core", crash.process_id))
        );
        assert!(std::path::Path::new(core).is_file());
    } else if pattern.starts_with('|') {
        assert_eq!(crash.core_dump, None, "cores are piped to {pattern}");
    }
    // It is restarted (after a backoff), and crashes again.
    eventually("a second crash", Duration::from_secs(20), || {
        let crashes: std::collections::BTreeSet<String> = server
            .state
            .lock()
            .unwrap()
            .requests
            .iter()
            .flat_map(|r| r.exited.iter())
            .filter(|exit| exit.signal == Some(libc::SIGSEGV))
            .map(|exit| exit.process_id.clone())
            .collect();
        (crashes.len() >= 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kills_a_process_without_health_beats() {
    let work = tempfile::tempdir().unwrap();
    let mut machine = desired(1);
    machine.launch.as_mut().unwrap().launch_parameters = Some("--port {port} --no-health".into());
    let server = FakeServer::start(machine).await;
    let log = std::fs::File::create(work.path().join("agent.log")).unwrap();
    let _agent = Guard(
        Command::new(env!("CARGO_BIN_EXE_fleetform-agent"))
            .args([
                "--server",
                &server.url,
                "--token",
                "t",
                "--health-timeout-secs",
                "2",
            ])
            .arg("--work-dir")
            .arg(work.path())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let ready = server.ready_processes(1).await;
    eventually(
        "the unhealthy process killed",
        Duration::from_secs(10),
        || {
            server
                .any_request(|r| {
                    r.exited.iter().any(|exit| {
                        exit.process_id == ready[0].0
                            && exit.signal == Some(libc::SIGKILL)
                            && !exit.requested
                    })
                })
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_stops_everything_on_sigterm_on_401_and_when_killed() {
    for how in ["SIGTERM", "401", "SIGKILL"] {
        let work = tempfile::tempdir().unwrap();
        let server = FakeServer::start(desired(1)).await;
        let mut agent = spawn_agent(&server, work.path());
        server.ready_processes(1).await;
        let pid = server.last_request().unwrap().processes[0].pid;
        assert!(pid_alive(pid));
        match how {
            "401" => server.update(|state| state.unauthorized = true),
            // SAFETY: signalling our own child.
            "SIGTERM" => unsafe {
                libc::kill(agent.0.id() as libc::pid_t, libc::SIGTERM);
            },
            _ => agent.0.kill().unwrap(),
        }
        let status = agent.wait_exit(Duration::from_secs(10)).await;
        if how != "SIGKILL" {
            assert!(status.success(), "{how}: {status}");
        }
        // A killed agent takes its game servers with it (PR_SET_PDEATHSIG).
        eventually(
            &format!("{how}: game server gone"),
            Duration::from_secs(5),
            || (!pid_alive(pid)).then_some(()),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_keeps_processes_while_fleetformd_is_away() {
    let work = tempfile::tempdir().unwrap();
    let server = FakeServer::start(desired(1)).await;
    let _agent = spawn_agent(&server, work.path());
    let ready = server.ready_processes(1).await;

    // fleetformd answers 503 for a while: the agent retries with backoff (100 ms doubling to
    // 2 s) and keeps its process.
    server.update(|state| state.failing = true);
    let failing_since = server.state.lock().unwrap().requests.len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let retries = server.state.lock().unwrap().requests.len() - failing_since;
    // It retried, and it did not loop hot (at most ~5 paced attempts fit in 4 s; the
    // bound leaves room for a loaded machine either way).
    assert!((2..=12).contains(&retries), "{retries} retries in 4 s");
    server.update(|state| state.failing = false);
    let after = server.ready_processes(1).await;
    assert_eq!(after, ready);
}
