//! `fleetform-agent` binary: parses options, sets up logging and signals, and runs
//! [`fleetform_agent::run`] on a current-thread runtime (see the crate's architecture
//! invariant on why every spawn must happen on the main thread).

use anyhow::Context;
use clap::Parser;
use fleetform_agent::Options;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // fleetformd's local driver sends our stderr to a file: colour only a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // fleetformd may die and take our stderr pipe with it: losing log lines is fine,
        // panicking on them (the default reports write errors with eprint!) is not.
        .log_internal_errors(false)
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(options.sdk_listen)
            .await
            .with_context(|| format!("cannot listen for the SDK on {}", options.sdk_listen))?;
        let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        // A hangup (the terminal or parent going away) must not kill the agent: its game
        // servers keep running and it reconnects to a restarted fleetformd.
        let mut hangup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP ignored");
            }
        });
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM received"),
                _ = interrupt.recv() => tracing::info!("SIGINT received"),
            }
        };
        fleetform_agent::run(options, listener, shutdown)
            .await
            .context("fleetform-agent failed")
    })
}
