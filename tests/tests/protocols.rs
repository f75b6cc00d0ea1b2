//! Compatibility: the oldest Terraform the provider supports (1.0.3) and the current one
//! (1.11), each on plugin protocol 5 and on 6 (forced with `FLEETFORM_PLUGIN_PROTOCOL`;
//! Terraform's own log says which one it uses): apply, a clean plan, the data source,
//! import, drift made outside Terraform, and destroy.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use fleetform_e2e::*;

/// A configuration both Terraform versions read (no function newer than 1.0).
const MAIN: &str = r#"terraform {
  required_providers {
    fleetform = { source = "fleetform/fleetform" }
  }
}

resource "fleetform_build" "b" {
  name    = "compat"
  version = "1"
  source  = "file:///opt/builds/compat"
}

resource "fleetform_fleet" "f" {
  name        = "compat"
  build_id    = fleetform_build.b.id
  launch_path = "bin/server"
}

resource "fleetform_zone" "z" {
  fleet_id                 = fleetform_fleet.f.id
  name                     = "compat"
  initial_server_processes = 1
  wait_for_capacity        = false

  buffer_rule {
    available_servers = 1
  }

  data_center {
    name                 = "b"
    location             = "local"
    max_server_processes = 2
    machine_model {
      instance_type         = "local"
      processes_per_machine = 1
    }
  }

  data_center {
    name                 = "a"
    location             = "local"
    priority             = 1
    max_server_processes = 2
    machine_model {
      instance_type         = "local"
      processes_per_machine = 1
    }
  }
}

data "fleetform_fleet" "by_name" {
  name       = "compat"
  depends_on = [fleetform_fleet.f]
}

output "build_id" {
  value = fleetform_build.b.id
}

output "looked_up" {
  value = data.fleetform_fleet.by_name.build_id
}
"#;

/// One Terraform on one protocol, through the whole lifecycle.
async fn lifecycle(server: &Fleetformd, program: PathBuf, protocol: &str) -> Result<()> {
    let case = format!("{} on protocol {protocol}", program.display());
    let mut tf = Terraform::new(server, MAIN)?;
    tf.program = program;
    tf.env
        .push(("FLEETFORM_PLUGIN_PROTOCOL".into(), protocol.into()));
    // Terraform's log names the protocol it negotiated with the provider.
    let mut logged = Terraform::new(server, MAIN)?;
    logged.program = tf.program.clone();
    logged.env = tf.env.clone();
    logged.env.push(("TF_LOG".into(), "debug".into()));
    let plan = logged.ok(&["plan", "-no-color", "-input=false"])?;
    let used = format!("using plugin: version={protocol}");
    ensure!(
        plan.stderr.contains(&used),
        "{case}: no {used:?} in the log"
    );

    tf.apply()?;
    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(!changes, "{case}: the plan after apply:\n{}", plan.text());
    let build_id = tf.output("build_id")?;
    ensure!(
        tf.output("looked_up")? == build_id,
        "{case}: the data source"
    );

    // Import into a fresh state: the same objects, a clean plan.
    let mut imported = Terraform::new(server, MAIN)?;
    imported.program = tf.program.clone();
    imported.env = tf.env.clone();
    imported.ok(&[
        "import",
        "-no-color",
        "-input=false",
        "fleetform_build.b",
        &build_id,
    ])?;
    let state = imported.ok(&["state", "show", "-no-color", "fleetform_build.b"])?;
    ensure!(
        state.stdout.contains("file:///opt/builds/compat"),
        "{case}: the imported build:\n{}",
        state.text()
    );

    // Drift: the version changed outside Terraform shows in the plan, and apply mends it.
    let client = server.client();
    let mut spec = client.get_build(&build_id).await?.spec();
    spec.version = Some("changed".into());
    client.update_build(&build_id, &spec).await?;
    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(
        changes && plan.stdout.contains("\"changed\" -> \"1\""),
        "{case}: the drift is not in the plan:\n{}",
        plan.text()
    );
    tf.apply()?;
    ensure!(
        client.get_build(&build_id).await?.version.as_deref() == Some("1"),
        "{case}: the drift was not mended"
    );

    tf.ok(&["destroy", "-auto-approve", "-no-color", "-input=false"])?;
    ensure!(
        client
            .get_build(&build_id)
            .await
            .is_err_and(|error| error.is_not_found()),
        "{case}: the build outlived destroy"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_1_0_and_1_11_on_protocols_5_and_6() -> Result<()> {
    let server = Fleetformd::start()?;
    let old = old_terraform()?;
    for program in [PathBuf::from("terraform"), old] {
        for protocol in ["5", "6"] {
            lifecycle(&server, program.clone(), protocol).await?;
        }
    }
    Ok(())
}
