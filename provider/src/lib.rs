//! Terraform provider for fleetform (plugin protocol 6, crate `tf-provider`).
//!
//! The provider talks to fleetformd only through `fleetform_api::Client`, and checks
//! configurations at plan with the server's own rules (`fleetform_api::validate`), so a
//! mistake is reported on its attribute before anything is sent.
//!
//! Architecture invariant: plan-time code (`validate`, `plan_create`, `plan_update`) does
//! no I/O; only read, apply, import and data sources call fleetformd.

pub mod client;
pub mod data_sources;
pub mod diag;
pub mod handshake;
pub mod plugin;
pub mod proto;
pub mod provider;
pub mod resources;
pub mod schema;
pub mod state;
pub mod timeouts;
pub mod wire;

use tf_provider::schema::Schema;

pub use provider::FleetformProvider;

/// The provider's name: type names are `fleetform_build`, `fleetform_zone_status`, ….
pub const PROVIDER_NAME: &str = "fleetform";

/// Keeps Rust backtraces out of Terraform's error messages.
///
/// `tf_provider::Diagnostic::new` captures a backtrace and appends it to the detail when
/// `RUST_BACKTRACE` or `RUST_LIB_BACKTRACE` is set, so a user debugging something else
/// would see a page of frames under every validation error. `RUST_LIB_BACKTRACE=0` takes
/// precedence for `Backtrace::capture` while leaving panic backtraces (`RUST_BACKTRACE`)
/// alone. The standard library reads it once, on the first capture, so this must run
/// first thing in `main`, before any thread exists.
pub fn quiet_diagnostic_backtraces() {
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
}

/// Serves the provider to Terraform until it is told to stop. SIGINT is ignored (a
/// Ctrl-C in the terminal reaches the provider too; Terraform stops it through the
/// protocol, where killing it mid-apply could lose what it created).
pub async fn serve() -> anyhow::Result<()> {
    plugin::ignore_interrupts();
    tf_provider::serve(PROVIDER_NAME, FleetformProvider::new()).await
}

/// The schemas of the provider's resources by type name (`fleetform_build`, …).
pub fn resource_schemas() -> Vec<(String, Schema)> {
    vec![
        (
            format!("{PROVIDER_NAME}_build"),
            resources::build::build_schema(),
        ),
        (
            format!("{PROVIDER_NAME}_fleet"),
            resources::fleet::fleet_schema(),
        ),
        (
            format!("{PROVIDER_NAME}_zone"),
            resources::zone::zone_schema(),
        ),
        (
            format!("{PROVIDER_NAME}_bare_metal_machine"),
            resources::bare_metal_machine::bare_metal_machine_schema(),
        ),
    ]
}

/// The schemas of the provider's data sources by type name.
pub fn data_source_schemas() -> Vec<(String, Schema)> {
    vec![
        (
            format!("{PROVIDER_NAME}_zone_status"),
            data_sources::zone_status::zone_status_schema(),
        ),
        (
            format!("{PROVIDER_NAME}_locations"),
            data_sources::locations::locations_schema(),
        ),
        (
            format!("{PROVIDER_NAME}_fleet"),
            data_sources::fleet::fleet_data_schema(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::process::Command;

    use tf_provider::{AttributePath, Diagnostic, Diagnostics, DynamicProvider};

    use super::*;

    const CHILD_MODE: &str = "FLEETFORM_BACKTRACE_TEST_MODE";

    /// Runs in a child process (see below): makes one diagnostic and prints its detail.
    #[test]
    fn backtrace_child() {
        let Ok(mode) = std::env::var(CHILD_MODE) else {
            return;
        };
        if mode == "quiet" {
            quiet_diagnostic_backtraces();
        }
        let diagnostic = Diagnostic::new("summary", "the detail", AttributePath::new("name"));
        println!("DETAIL<<{}>>", diagnostic.detail);
    }

    /// The standard library caches the backtrace setting per process, so each variant
    /// runs in a fresh child with `RUST_BACKTRACE=1`.
    fn child_detail(mode: &str) -> String {
        let output = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::backtrace_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_MODE, mode)
            .env("RUST_BACKTRACE", "1")
            .env_remove("RUST_LIB_BACKTRACE")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        let start = stdout.find("DETAIL<<").expect("child printed its detail") + 8;
        let end = stdout.rfind(">>").unwrap();
        stdout[start..end].to_string()
    }

    #[test]
    fn diagnostics_carry_no_backtrace_even_with_rust_backtrace_set() {
        // Without the fix the hazard is real: the detail grows a backtrace.
        assert_ne!(child_detail("raw"), "the detail");
        assert_eq!(child_detail("quiet"), "the detail");
    }

    #[test]
    fn type_names_are_prefixed_with_fleetform() {
        let provider = FleetformProvider::new();
        let mut diags = Diagnostics::default();
        let resources: BTreeSet<String> = provider
            .get_resources(&mut diags)
            .unwrap()
            .into_keys()
            .map(|name| format!("{PROVIDER_NAME}_{name}"))
            .collect();
        let listed: BTreeSet<String> = resource_schemas().into_iter().map(|(n, _)| n).collect();
        assert_eq!(resources, listed);
        let data: BTreeSet<String> = provider
            .get_data_sources(&mut diags)
            .unwrap()
            .into_keys()
            .map(|name| format!("{PROVIDER_NAME}_{name}"))
            .collect();
        let listed: BTreeSet<String> = data_source_schemas().into_iter().map(|(n, _)| n).collect();
        assert_eq!(data, listed);
    }
}
