//! `terraform-provider-fleetform`: started by Terraform, speaks plugin protocol 5 or 6 on
//! a local socket it announces on stdout.

use terraform_provider_fleetform::handshake;

fn main() -> anyhow::Result<()> {
    // Before anything else, and before any thread exists: see the function's doc.
    terraform_provider_fleetform::quiet_diagnostic_backtraces();
    // Run by hand, not by Terraform, or asked for what it cannot serve: say so on stderr
    // (Terraform shows a plugin's stderr when its handshake fails).
    let settings = match handshake::settings(|name| std::env::var(name).ok()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(1);
        }
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(terraform_provider_fleetform::serve(settings))
}
