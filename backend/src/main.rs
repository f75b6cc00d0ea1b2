//! `fleetformd`: the control plane binary. Thin: options, then [`fleetformd::server::run`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use fleetformd::config::ServerConfig;
use rand::RngCore;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// fleetform's control plane. With no options: SQLite in the data directory, the `local`
/// machine driver, 127.0.0.1:7400, and a development token printed at start.
#[derive(Debug, Parser)]
#[command(version)]
struct Options {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, env = "FLEETFORMD_LISTEN", default_value = "127.0.0.1:7400")]
    listen: String,
    /// `sqlite://PATH` or `postgres://USER@HOST:PORT/DATABASE` (default: `fleetform.db` in
    /// the data directory).
    #[arg(long, env = "FLEETFORMD_DATABASE")]
    database: Option<String>,
    /// Days ended sessions, exited processes and ended machines are kept before they are
    /// pruned (0 keeps them all).
    #[arg(long, env = "FLEETFORMD_RETENTION_DAYS", default_value_t = 7)]
    retention_days: u32,
    /// Where the database and local machines live (default: `$XDG_DATA_HOME/fleetform`,
    /// else `~/.local/share/fleetform`).
    #[arg(long, env = "FLEETFORMD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML file of locations and their drivers.
    #[arg(long, env = "FLEETFORMD_CONFIG")]
    config: Option<PathBuf>,
    /// The admin token; without one, a development token is kept in the data directory.
    #[arg(long, env = "FLEETFORM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The `fleetform-agent` binary the local driver runs (default: next to fleetformd).
    #[arg(long, env = "FLEETFORMD_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// How often agents must sync, in milliseconds.
    #[arg(long, env = "FLEETFORMD_HEARTBEAT_MS", default_value_t = 2000)]
    heartbeat_ms: u64,
    /// Where the other replicas reach this one (default: the address it listens on).
    #[arg(long, env = "FLEETFORMD_REPLICA_URL")]
    replica_url: Option<String>,
    /// The URL agents are given (with replicas: the load balancer's; default: the address
    /// it listens on).
    #[arg(long, env = "FLEETFORMD_AGENT_URL")]
    agent_url: Option<String>,
    /// How long a zone lease lasts unrenewed, in milliseconds: a dead replica's zones are
    /// taken over within about 5/4 of it.
    #[arg(long, env = "FLEETFORMD_LEASE_TTL_MS", default_value_t = 3000)]
    lease_ttl_ms: u64,
    /// How long /readyz answers 503 at shutdown before the listener closes, in
    /// milliseconds (let load balancers notice first).
    #[arg(long, env = "FLEETFORMD_DRAIN_MS", default_value_t = 1000)]
    drain_ms: u64,
}

fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("fleetform");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/fleetform"),
        None => PathBuf::from(".fleetform"),
    }
}

/// The development token: created once, then read back so restarts keep it.
fn development_token(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("admin-token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        return Ok(token.trim().to_string());
    }
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, &token).with_context(|| format!("write {}", path.display()))?;
    Ok(token)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let options = Options::parse();
    let data_dir = options.data_dir.unwrap_or_else(default_data_dir);
    // The database is where `--database` says; the data directory (local machines, the
    // development token) is where `--data-dir` says. Neither moves the other.
    let database = match &options.database {
        None => None,
        Some(text) => {
            let database = fleetformd::store::Database::parse(text).map_err(anyhow::Error::msg)?;
            if let fleetformd::store::Database::Sqlite(path) = &database {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("create {}", parent.display()))?;
                }
            }
            Some(database)
        }
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("create data directory {}", data_dir.display()))?;
    let (admin_token, development) = match options.token {
        Some(token) if !token.is_empty() => (token, false),
        _ => (development_token(&data_dir)?, true),
    };
    let agent_bin = match options.agent_bin {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("fleetformd has no directory")?
            .join("fleetform-agent"),
    };
    let listener = tokio::net::TcpListener::bind(&options.listen)
        .await
        .with_context(|| format!("listen on {}", options.listen))?;
    let address = listener.local_addr()?;
    // Scripts and tests read these two lines.
    println!("fleetformd listening on http://{address}");
    if development {
        println!("development admin token: {admin_token}");
    }
    let config = ServerConfig {
        config_file: options.config,
        heartbeat_interval: Duration::from_millis(options.heartbeat_ms.max(100)),
        database,
        retention: (options.retention_days > 0)
            .then(|| Duration::from_secs(u64::from(options.retention_days) * 24 * 3600)),
        replica_url: options.replica_url,
        agent_url: options.agent_url,
        lease_ttl: Duration::from_millis(options.lease_ttl_ms.max(300)),
        drain: Duration::from_millis(options.drain_ms.min(3000)),
        ..ServerConfig::new(data_dir, admin_token, agent_bin)
    };
    let shutdown = async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    };
    fleetformd::server::run(config, listener, shutdown).await?;
    Ok(())
}
