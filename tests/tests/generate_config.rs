//! `terraform plan -generate-config-out` after `import {}` blocks, for every resource: the
//! configuration Terraform writes from what the provider reads back plans clean (imports
//! only, then after the apply that imports them, nothing at all).

use anyhow::{ensure, Result};
use fleetform_e2e::*;

const CONFIG: &str = r#"
[[location]]
name = "local"
driver = "local"

[[location]]
name = "fra-metal"
driver = "bare_metal"
"#;

const PROVIDER: &str = r#"terraform {
  required_providers {
    fleetform = { source = "fleetform/fleetform" }
  }
}
"#;

/// What another configuration made: one of each resource, with optional attributes set
/// and left out.
const MADE: &str = r#"
resource "fleetform_build" "b" {
  name             = "arena-server"
  version          = "1.0"
  operating_system = "linux"
  source           = "file:///opt/builds/arena"
}

resource "fleetform_fleet" "f" {
  name                 = "arena"
  description          = "ranked"
  build_id             = fleetform_build.b.id
  launch_path          = "bin/arena"
  session_mode         = "parallel"
  sessions_per_process = 4
}

resource "fleetform_zone" "z" {
  fleet_id                 = fleetform_fleet.f.id
  name                     = "eu"
  scaling_mode             = "auto"
  initial_server_processes = 1
  wait_for_capacity        = false

  buffer_rule {
    min_active_sessions = 0
    available_servers   = 1
  }

  data_center {
    name                 = "dc1"
    location             = "local"
    max_server_processes = 4

    machine_model {
      instance_type         = "local"
      processes_per_machine = 2
    }
  }
}

resource "fleetform_bare_metal_machine" "m" {
  name      = "fra-bm-01"
  location  = "fra-metal"
  address   = "203.0.113.10"
  cores     = 32
  memory_gb = 128
  labels    = { rack = "r12" }
}

output "ids" {
  value = {
    "fleetform_build.b"              = fleetform_build.b.id
    "fleetform_fleet.f"              = fleetform_fleet.f.id
    "fleetform_zone.z"               = fleetform_zone.z.id
    "fleetform_bare_metal_machine.m" = fleetform_bare_metal_machine.m.id
  }
}
"#;

#[test]
fn generated_configuration_plans_clean_for_every_resource() -> Result<()> {
    let server = Fleetformd::start_with_config(CONFIG)?;
    let made = Terraform::new(&server, &format!("{PROVIDER}{MADE}"))?;
    made.apply()?;
    let ids: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&made.ok(&["output", "-json", "ids"])?.stdout)?;
    ensure!(ids.len() == 4, "{ids:?}");

    let imports: String = ids
        .iter()
        .map(|(to, id)| format!("import {{\n  to = {to}\n  id = \"{id}\"\n}}\n"))
        .collect();
    let tf = Terraform::new(&server, &format!("{PROVIDER}{imports}"))?;
    let generate = tf.ok(&[
        "plan",
        "-generate-config-out=generated.tf",
        "-no-color",
        "-input=false",
    ])?;
    ensure!(
        generate
            .stdout
            .contains("Plan: 4 to import, 0 to add, 0 to change, 0 to destroy."),
        "the generating plan:\n{}",
        generate.text()
    );
    let generated = std::fs::read_to_string(tf.dir.path().join("generated.tf"))?;
    for to in ids.keys() {
        let (kind, name) = to.split_once('.').unwrap();
        ensure!(
            generated.contains(&format!("resource \"{kind}\" \"{name}\"")),
            "{to} is not in the generated configuration:\n{generated}"
        );
    }
    // The generated configuration, as written, plans the imports and nothing else.
    let plan = tf.ok(&["plan", "-no-color", "-input=false"])?;
    ensure!(
        plan.stdout
            .contains("Plan: 4 to import, 0 to add, 0 to change, 0 to destroy."),
        "the plan of the generated configuration:\n{}\n{generated}",
        plan.text()
    );
    tf.apply()?;
    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(
        !changes,
        "after the import the generated configuration still plans changes:\n{}\n{generated}",
        plan.text()
    );
    Ok(())
}
