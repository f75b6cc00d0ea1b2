//! `terraform-provider-fleetform`: started by Terraform, speaks plugin protocol 6 on a
//! local socket it announces on stdout.

fn main() -> anyhow::Result<()> {
    // Before anything else, and before any thread exists: see the function's doc.
    terraform_provider_fleetform::quiet_diagnostic_backtraces();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(terraform_provider_fleetform::serve())
}
