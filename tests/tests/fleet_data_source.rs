//! `fleetform_fleet` (the data source) through the real `terraform` against the real
//! fleetformd: looked up by name and by id it gives the fleet the resource made, the next
//! plan is empty, and a configuration naming both, or a fleet that does not exist, fails
//! on what is wrong.

use anyhow::{ensure, Context, Result};
use fleetform_e2e::*;

const PROVIDER: &str = r#"terraform {
  required_providers {
    fleetform = { source = "fleetform/fleetform" }
  }
}
"#;

const MAIN_TF: &str = r#"
resource "fleetform_build" "game" {
  name             = "arena-server"
  operating_system = "linux"
  source           = "file:///opt/builds/arena"
}

resource "fleetform_fleet" "game" {
  name                 = "arena"
  build_id             = fleetform_build.game.id
  launch_path          = "bin/arena-server"
  session_mode         = "parallel"
  sessions_per_process = 4
}

data "fleetform_fleet" "by_name" {
  name = fleetform_fleet.game.name
}

data "fleetform_fleet" "by_id" {
  id = fleetform_fleet.game.id
}

output "fleet_id" {
  value = fleetform_fleet.game.id
}

output "build_id" {
  value = fleetform_build.game.id
}

output "by_name" {
  value = data.fleetform_fleet.by_name
}

output "by_id" {
  value = data.fleetform_fleet.by_id
}
"#;

#[test]
fn the_fleet_data_source_reads_a_fleet_by_name_and_by_id() -> Result<()> {
    let server = Fleetformd::start()?;
    let tf = Terraform::new(&server, &format!("{PROVIDER}{MAIN_TF}"))?;
    tf.apply()?;
    let fleet_id = tf.output("fleet_id")?;
    let build_id = tf.output("build_id")?;
    let output = tf.ok(&["output", "-json"])?;
    let all: serde_json::Value = serde_json::from_str(&output.stdout)
        .with_context(|| format!("terraform output -json: {}", output.stdout))?;
    for name in ["by_name", "by_id"] {
        let fleet = &all[name]["value"];
        ensure!(fleet["id"] == fleet_id.as_str(), "{name}: {fleet:#}");
        ensure!(fleet["name"] == "arena", "{name}: {fleet:#}");
        ensure!(fleet["build_id"] == build_id.as_str(), "{name}: {fleet:#}");
        ensure!(fleet["session_mode"] == "parallel", "{name}: {fleet:#}");
        ensure!(fleet["sessions_per_process"] == 4, "{name}: {fleet:#}");
        ensure!(fleet["update_mode"] == "soft", "{name}: {fleet:#}");
        ensure!(fleet["status"].is_string(), "{name}: {fleet:#}");
    }
    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(!changes, "the second plan is not empty:\n{}", plan.text());
    tf.ok(&["destroy", "-auto-approve", "-no-color", "-input=false"])?;
    Ok(())
}

#[test]
fn the_fleet_data_source_fails_on_what_is_wrong() -> Result<()> {
    let server = Fleetformd::start()?;
    let cases = [
        (
            r#"data "fleetform_fleet" "f" {
  id   = "flt-0123456789abcdef"
  name = "arena"
}"#,
            "not both",
        ),
        (r#"data "fleetform_fleet" "f" {}"#, "set `id` or `name`"),
        (
            r#"data "fleetform_fleet" "f" {
  name = "no-such-fleet"
}"#,
            "404",
        ),
    ];
    for (config, expected) in cases {
        let tf = Terraform::new(&server, &format!("{PROVIDER}{config}"))?;
        let plan = tf.run(&["plan", "-no-color", "-input=false"])?;
        ensure!(
            !plan.success,
            "{config}: the plan succeeded:\n{}",
            plan.text()
        );
        ensure!(
            plan.text().contains(expected),
            "{config}: the error does not say {expected:?}:\n{}",
            plan.text()
        );
    }
    Ok(())
}
