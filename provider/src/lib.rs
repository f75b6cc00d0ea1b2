//! Terraform provider for fleetform, serving plugin protocol 5 or 6 (whichever is the
//! highest both Terraform and the provider speak) from one core.
//!
//! Layers, outside in: `plugin.rs` (go-plugin's socket, mTLS and services) serves one of
//! `protocol::v5`/`protocol::v6`, thin adapters over `core::Core`, which dispatches to the
//! resource types of the registry (`core::Registry::all`): each an `ApiResource`
//! (`resource.rs`) over `fleetform_api::Client`. `tf-provider` lends its value, schema and
//! diagnostic types; its server is not used.
//!
//! The provider talks to fleetformd only through `fleetform_api::Client`, and checks
//! configurations at plan with the server's own rules (`fleetform_api::validate`), so a
//! mistake is reported on its attribute before anything is sent.
//!
//! Architecture invariant: plan-time code (`validate`, `plan_create`, `plan_update`) does
//! no I/O; only read, apply, import and data sources call fleetformd.

pub mod client;
pub mod core;
pub mod data_sources;
pub mod diag;
pub mod handshake;
pub mod plugin;
pub mod proto;
pub mod protocol;
pub mod provider;
pub mod resource;
pub mod resources;
pub mod schema;
pub mod state;
pub mod timeouts;
pub mod wire;

use std::io::Write;
use std::sync::Arc;

use tf_provider::schema::Schema;
use tonic::service::Routes;

use crate::core::Core;
use crate::handshake::Settings;

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

/// Serves the provider to Terraform, on the protocol version the handshake chose, until
/// Terraform shuts it down. SIGINT is ignored (a Ctrl-C in the terminal reaches the
/// provider too; Terraform stops it through the protocol, where killing it mid-apply could
/// lose what it created).
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let core = Arc::new(Core::new());
    let routes = match settings.protocol {
        5 => Routes::new(protocol::v5::ProviderV5::service(core)),
        _ => Routes::new(protocol::v6::ProviderV6::service(core)),
    };
    plugin::serve(&settings, routes, |line| {
        let mut stdout = std::io::stdout().lock();
        // go-plugin reads the handshake as one line on stdout.
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    })
    .await
}

/// The schemas of the provider's resources by type name (`fleetform_build`, …).
pub fn resource_schemas() -> Vec<(String, Schema)> {
    let registry = core::Registry::all();
    registry
        .resources
        .iter()
        .map(|(name, resource)| (name.clone(), resource.schema()))
        .collect()
}

/// The schemas of the provider's data sources by type name.
pub fn data_source_schemas() -> Vec<(String, Schema)> {
    let registry = core::Registry::all();
    registry
        .data_sources
        .iter()
        .map(|(name, data)| (name.clone(), data.schema()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use tf_provider::{AttributePath, Diagnostic};

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
        let names: Vec<String> = resource_schemas()
            .into_iter()
            .chain(data_source_schemas())
            .map(|(name, _)| name)
            .collect();
        assert_eq!(
            names,
            [
                "fleetform_bare_metal_machine",
                "fleetform_build",
                "fleetform_fleet",
                "fleetform_zone",
                "fleetform_fleet",
                "fleetform_locations",
                "fleetform_zone_status",
            ]
        );
    }
}
