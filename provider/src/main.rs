//! `terraform-provider-fleetform`: started by Terraform, speaks plugin protocol 6 on a
//! local socket it announces on stdout.

use terraform_provider_fleetform::handshake::{self, HandshakeError};

fn main() -> anyhow::Result<()> {
    // Before anything else, and before any thread exists: see the function's doc.
    terraform_provider_fleetform::quiet_diagnostic_backtraces();
    // Run by hand, not by Terraform: say so, instead of serving nobody.
    if let Err(error @ HandshakeError::NotAPluginHost) =
        handshake::settings(|name| std::env::var(name).ok())
    {
        eprintln!("{error}");
        std::process::exit(1);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(terraform_provider_fleetform::serve())
}
