//! `example-game-server`: a small game server that uses the fleetform SDK
//! ([`fleetform_api::sdk::SdkClient`]), for tests and as an example to copy.
//!
//! It calls `ready`, beats `health` every second, long-polls its session state, and exits 0
//! when told to shut down (or on SIGTERM). On its game port it answers `GET /session` with
//! `{"session_id", "process_id", "sessions"}` and `POST /session/end` ends its sessions the
//! way a game does when the match is over. Flags make it misbehave on purpose for tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use fleetform_api::sdk::{SdkClient, SdkError, ENV_PORT};
use serde::Serialize;

/// How long to keep trying to reach the SDK at start before giving up.
const SDK_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one session long-poll may be held.
const SESSION_WAIT_MS: u32 = 20_000;

#[derive(Debug, Parser)]
#[command(
    name = "example-game-server",
    about = "Example game server for fleetform"
)]
struct Args {
    /// Game port (default: FLEETFORM_PORT).
    #[arg(long, env = ENV_PORT)]
    port: u16,
    /// Exit with status 3 after this many seconds; 0 crashes at once, before `ready` (a
    /// server that crashes at start).
    #[arg(long)]
    crash_after_secs: Option<u64>,
    /// With --crash-after-secs: die by SIGSEGV instead of exiting 3.
    #[arg(long, requires = "crash_after_secs")]
    crash_signal: bool,
    /// Never call `ready`.
    #[arg(long)]
    never_ready: bool,
    /// Send no health beats.
    #[arg(long)]
    no_health: bool,
}

/// What `GET /session` answers.
#[derive(Debug, Clone, Serialize)]
struct SessionView {
    /// The first (in simple mode the only) hosted session, `null` when idle.
    session_id: Option<String>,
    process_id: String,
    sessions: Vec<String>,
}

#[derive(Clone)]
struct Game {
    sdk: SdkClient,
    sessions: Arc<Mutex<Vec<String>>>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let sdk = match SdkClient::from_env() {
        Ok(sdk) => sdk,
        Err(err) => fail(&err.to_string()),
    };
    let process_id = sdk.process_id().to_string();
    log(&format!("starting as {process_id} on port {}", args.port));
    if args.crash_after_secs == Some(0) {
        crash(args.crash_signal);
    }
    let game = Game {
        sdk: sdk.clone(),
        sessions: Arc::default(),
    };

    let listener =
        match tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.port)))
            .await
        {
            Ok(listener) => listener,
            Err(err) => fail(&format!("cannot listen on port {}: {err}", args.port)),
        };
    let app = Router::new()
        .route("/session", get(session))
        .route("/session/end", post(end_session))
        .with_state(game.clone());
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            fail(&format!("game port server failed: {err}"));
        }
    });

    if let Some(secs) = args.crash_after_secs {
        let by_signal = args.crash_signal;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            crash(by_signal);
        });
    }
    tokio::spawn(async {
        if let Ok(mut terminate) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            terminate.recv().await;
            log("SIGTERM: exiting");
            std::process::exit(0);
        }
    });

    // The first call proves the SDK is there; retry for a while in case the agent is slow.
    let first = if args.never_ready {
        retry_at_start(|| sdk.session(0, None)).await.map(|_| ())
    } else {
        retry_at_start(|| sdk.ready()).await
    };
    if let Err(err) = first {
        fail(&format!("the SDK is unreachable: {err}"));
    }
    log(if args.never_ready {
        "connected to the SDK; staying not ready (--never-ready)"
    } else {
        "ready"
    });

    if !args.no_health {
        let sdk = sdk.clone();
        tokio::spawn(async move {
            loop {
                if let Err(err) = sdk.health().await {
                    log(&format!("health beat failed: {err}"));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    follow_sessions(&game).await;
}

/// Long-polls the session state, keeps `game.sessions` current, and exits 0 on shutdown.
async fn follow_sessions(game: &Game) -> ! {
    let mut known: Option<String> = None;
    loop {
        match game.sdk.session(SESSION_WAIT_MS, known.as_deref()).await {
            Ok(state) => {
                let key = state.state_key();
                if known.as_deref() != Some(key.as_str()) {
                    let ids: Vec<String> = state.sessions.iter().map(|s| s.id.clone()).collect();
                    log(&format!("sessions: {ids:?}, shutdown: {}", state.shutdown));
                    *game.sessions.lock().unwrap() = ids;
                    known = Some(key);
                }
                if state.shutdown {
                    log("told to shut down: exiting");
                    std::process::exit(0);
                }
            }
            Err(err) if err.status().map(|s| s.as_u16()) == Some(404) => {
                fail(&format!("the agent no longer knows this process: {err}"));
            }
            Err(err) => {
                log(&format!("session poll failed: {err}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn session(State(game): State<Game>) -> Json<SessionView> {
    let sessions = game.sessions.lock().unwrap().clone();
    Json(SessionView {
        session_id: sessions.first().cloned(),
        process_id: game.sdk.process_id().to_string(),
        sessions,
    })
}

/// Ends every hosted session, as a game does when its match finishes.
async fn end_session(State(game): State<Game>) -> StatusCode {
    let sessions = game.sessions.lock().unwrap().clone();
    if sessions.is_empty() {
        return StatusCode::CONFLICT;
    }
    for session_id in &sessions {
        match game.sdk.end_session(session_id).await {
            Ok(()) => log(&format!("ended session {session_id}")),
            Err(err) => {
                log(&format!("cannot end session {session_id}: {err}"));
                return StatusCode::BAD_GATEWAY;
            }
        }
    }
    game.sessions
        .lock()
        .unwrap()
        .retain(|id| !sessions.contains(id));
    StatusCode::NO_CONTENT
}

/// Retries `call` while the SDK is unreachable, for [`SDK_CONNECT_TIMEOUT`].
async fn retry_at_start<T, F, Fut>(call: F) -> Result<T, SdkError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, SdkError>>,
{
    let deadline = tokio::time::Instant::now() + SDK_CONNECT_TIMEOUT;
    loop {
        match call().await {
            Err(err) if err.is_unreachable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

fn crash(by_signal: bool) -> ! {
    if by_signal {
        log("crashing with SIGSEGV (--crash-signal)");
        // SAFETY: resetting a signal's disposition and raising it have no memory-safety
        // preconditions. Rust installs its own SIGSEGV handler (stack-overflow detection),
        // so the default action must be restored for the signal to kill the process.
        unsafe {
            libc::signal(libc::SIGSEGV, libc::SIG_DFL);
            libc::raise(libc::SIGSEGV);
        }
    }
    log("crashing with exit status 3 (--crash-after-secs)");
    std::process::exit(3);
}

fn log(message: &str) {
    eprintln!("example-game-server: {message}");
}

fn fail(message: &str) -> ! {
    log(message);
    std::process::exit(1);
}
