//! `fleetform_bare_metal_machine`'s invalid values fail at plan, each on its attribute,
//! through the real `terraform validate`.
//!
//! Validation runs in the provider and needs no fleetformd: the provider is pointed at a
//! loopback port nothing listens on. The resource's lifecycle against the real fleetformd
//! (create, clean plans, update, replacement, import, drift, destroy) is
//! `tests/tests/bare_metal_lifecycle.rs`.
//!
//! `terraform` must be on PATH: without it the test fails.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// A scratch directory whose CLI config installs the provider under test through
/// `dev_overrides`, so no `terraform init`, registry or network is needed.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Self {
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_terraform-provider-fleetform"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("dev.tfrc"),
            format!(
                "provider_installation {{\n  dev_overrides {{\n    \"fleetform/fleetform\" = \
                 \"{}\"\n  }}\n  direct {{}}\n}}\n",
                binary.parent().unwrap().display()
            ),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        Workspace { dir }
    }

    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// Writes the configuration: the provider block and one machine with `attributes`.
    fn configure(&self, attributes: &str) {
        let hcl = format!(
            "terraform {{\n  required_providers {{\n    fleetform = {{\n      source = \
             \"fleetform/fleetform\"\n    }}\n  }}\n}}\n\nresource \
             \"fleetform_bare_metal_machine\" \"m\" {{\n{attributes}\n}}\n"
        );
        std::fs::write(self.config_dir().join("main.tf"), hcl).unwrap();
    }

    fn terraform(&self, args: &[&str]) -> Output {
        Command::new("terraform")
            .args(args)
            .current_dir(self.config_dir())
            .env("TF_CLI_CONFIG_FILE", self.dir.path().join("dev.tfrc"))
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env("NO_COLOR", "1")
            // Nothing listens here: validation must not need fleetformd.
            .env("FLEETFORM_ENDPOINT", "http://127.0.0.1:9")
            .env("FLEETFORM_TOKEN", "test-admin-token")
            .env_remove("TF_LOG")
            .env_remove("TF_DATA_DIR")
            .stdin(Stdio::null())
            .output()
            .expect("run terraform (it must be on PATH)")
    }
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn invalid_values_fail_at_plan_on_their_attribute() {
    let workspace = Workspace::new();
    workspace.configure(
        r#"  name      = "fra bm 01"
  location  = "fra-metal"
  address   = "203.0.113.10:7777"
  cores     = 0
  memory_gb = 64
  labels = {
    rack = format("%0256d", 0)
  }"#,
    );
    let output = workspace.terraform(&["validate", "-no-color"]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "Invalid name",
        "Invalid address",
        "neither an IP address nor a host name",
        "Invalid cores",
        "must be at least 1, got 0",
        "Invalid labels[\"rack\"]",
        "label values are at most 255 bytes",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} not in: {}",
            describe(&output)
        );
    }
    assert!(!stderr.contains("Invalid memory_gb"), "{stderr}");
    assert!(!stderr.contains("Invalid location"), "{stderr}");
}
