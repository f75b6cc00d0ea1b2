//! `fleetform-agent`: runs on every machine, keeps the game-server processes fleetformd wants
//! running, and serves them the local SDK (DESIGN.md §5).
//!
//! The agent's whole conversation with fleetformd is one call in a loop,
//! `POST /v1/agent/sync` ([`fleetform_api::Client::agent_sync`]): the request reports what
//! runs here (it is the heartbeat), the answer says what should run. The answer is held by
//! the server while nothing changes, and the agent cancels and re-sends it the moment its
//! own state changes, so both sides learn of changes within milliseconds.
//!
//! Code map:
//! - [`supervisor`]: the observe → plan → act loop, the sync loop, process spawning and
//!   signals. All I/O lives here.
//! - [`plan`]: the pure decision step (start, tell shutdown, stop, kill).
//! - [`sdk`]: the SDK's HTTP server over state shared with the supervisor.
//! - [`fetch`]: build sources → a build root directory.
//! - [`launch`]: command line, environment, log file and core limit of a game server.
//! - [`crash`]: what a crash report carries: the tail of the process's output and its
//!   core file (the host's `core_pattern` rules, pure and table-tested).
//! - [`ports`]: game-port allocation. [`backoff`]: retry pacing.
//!
//! Architecture invariant: every game server is spawned from the thread that runs
//! [`run`], with `PR_SET_PDEATHSIG = SIGKILL`, so game servers die with the agent. Run it on a
//! current-thread runtime (as the binary does). The agent itself does not die with its
//! parent: fleetformd may restart while the agent keeps its processes and reconnects.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;

pub mod backoff;
pub mod crash;
pub mod fetch;
pub mod launch;
pub mod plan;
pub mod ports;
pub mod sdk;
pub mod supervisor;

pub use ports::PortRange;

/// Command-line options of `fleetform-agent`; each is also an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "fleetform-agent",
    version,
    about = "Runs fleetform game-server processes on this machine"
)]
pub struct Options {
    /// URL of the control plane (fleetformd), e.g. http://127.0.0.1:7400.
    #[arg(long, env = "FLEETFORM_SERVER")]
    pub server: String,
    /// This machine's agent token.
    #[arg(long, env = "FLEETFORM_AGENT_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Directory for builds, downloads and process logs.
    #[arg(long, env = "FLEETFORM_AGENT_DIR")]
    pub work_dir: PathBuf,
    /// Where players reach this machine's game ports.
    #[arg(long, env = "FLEETFORM_AGENT_ADDRESS", default_value = "127.0.0.1")]
    pub address: String,
    /// Game ports come from this range (START-END); without it the OS picks free ports.
    #[arg(long, env = "FLEETFORM_AGENT_PORT_RANGE")]
    pub port_range: Option<PortRange>,
    /// Where the game-server SDK listens (keep it on loopback).
    #[arg(
        long,
        env = "FLEETFORM_AGENT_SDK_LISTEN",
        default_value = "127.0.0.1:0"
    )]
    pub sdk_listen: SocketAddr,
    /// A READY process without a health beat for this long is killed.
    #[arg(
        long,
        env = "FLEETFORM_AGENT_HEALTH_TIMEOUT_SECS",
        default_value_t = 15
    )]
    pub health_timeout_secs: u64,
}

impl Options {
    /// The health timeout as a duration.
    pub fn health_timeout(&self) -> Duration {
        Duration::from_secs(self.health_timeout_secs)
    }
}

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid build source {source_uri:?}: {reason}")]
    BadSource { source_uri: String, reason: String },
    #[error("s3 sources need the aws location driver (not available to this agent)")]
    S3Unsupported,
    #[error("sha256 mismatch for {}: expected {expected}, got {actual}", path.display())]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("download of {url} failed: {reason}")]
    Download { url: String, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot launch: {0}")]
    Launch(String),
    #[error("no free game port in {0}")]
    NoPort(String),
    #[error(transparent)]
    Client(#[from] fleetform_api::ClientError),
}

/// Result of agent operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs the agent until `shutdown` resolves (then stops every process: SIGTERM, SIGKILL
/// after 5 s), fleetformd orders the machine shut down, or fleetformd no longer knows the
/// machine (401). Serves the SDK on `sdk_listener`. Returns `Ok` in all three cases.
pub async fn run(
    options: Options,
    sdk_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    for dir in ["builds", "downloads", "logs"] {
        let path = options.work_dir.join(dir);
        std::fs::create_dir_all(&path).map_err(|source| Error::Io {
            context: format!("creating {}", path.display()),
            source,
        })?;
    }
    let sdk_port = sdk_listener
        .local_addr()
        .map_err(|source| Error::Io {
            context: "reading the SDK listener's address".into(),
            source,
        })?
        .port();
    let sdk_host = match options.sdk_listen.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let sdk_addr = format!("http://{sdk_host}:{sdk_port}");
    let state = sdk::SdkState::new();
    let server = tokio::spawn({
        let router = sdk::router(state.clone());
        async move {
            if let Err(err) = axum::serve(sdk_listener, router).await {
                tracing::error!(%err, "SDK server failed");
            }
        }
    });
    tracing::info!(server = %options.server, sdk = %sdk_addr, "fleetform-agent starting");
    let result = supervisor::Supervisor::new(options, state, sdk_addr)?
        .run(shutdown)
        .await;
    server.abort();
    result
}
