//! The bare-metal pool through the real terraform: two `fleetform_bare_metal_machine`s whose
//! agents an "operator" starts with their `agent_token`, and a zone of a bare-metal data
//! center and a VM data center of the same priority. Bare metal fills first, the VMs take
//! the overflow, the scaler stops VMs and never bare metal, a lowered
//! `bare_metal_machines` gives an idle machine back to the pool (its agent stays, idle),
//! a machine hosting a session cannot leave the pool, and destroy revokes the agents.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use fleetform_api::*;
use fleetform_e2e::*;

const CONFIG: &str = r#"
[[location]]
name = "local"
driver = "local"

[[location]]
name = "fra-metal"
driver = "bare_metal"
"#;

fn pool_tf() -> String {
    r#"
terraform {
  required_providers {
    fleetform = { source = "fleetform/fleetform" }
  }
}

resource "fleetform_bare_metal_machine" "rack" {
  count     = 2
  name      = "fra-metal-${count.index}"
  location  = "fra-metal"
  address   = "127.0.0.1"
  cores     = 16
  memory_gb = 64
  labels    = { rack = "r${count.index}" }
}

output "agent_tokens" {
  value     = fleetform_bare_metal_machine.rack[*].agent_token
  sensitive = true
}
"#
    .to_string()
}

fn zone_tf(build_dir: &Path, bare_metal_machines: u32) -> String {
    format!(
        r#"{pool}
resource "fleetform_build" "game" {{
  name   = "example"
  source = "file://{build}"
}}

resource "fleetform_fleet" "game" {{
  name              = "metal-first"
  build_id          = fleetform_build.game.id
  launch_path       = "example-game-server"
  launch_parameters = "--port {{port}}"
  force_destroy     = true
}}

resource "fleetform_zone" "eu" {{
  fleet_id                 = fleetform_fleet.game.id
  name                     = "eu"
  initial_server_processes = 4

  buffer_rule {{
    available_servers = 2
  }}

  data_center {{
    name                = "metal"
    location            = "fra-metal"
    machine_type        = "bare_metal"
    bare_metal_machines = {bare_metal_machines}
    machine_model {{
      instance_type         = "metal"
      processes_per_machine = 2
    }}
  }}

  data_center {{
    name                 = "cloud"
    location             = "local"
    max_server_processes = 4
    machine_model {{
      instance_type         = "local"
      processes_per_machine = 2
    }}
  }}

  # The pool's machines outlive the zone that uses them: destroy drains the zone first.
  depends_on = [fleetform_bare_metal_machine.rack]
}}

output "fleet_id" {{
  value = fleetform_fleet.game.id
}}

output "zone_id" {{
  value = fleetform_zone.eu.id
}}
"#,
        pool = pool_tf(),
        build = build_dir.display(),
    )
}

async fn place(client: &Client, fleet: &str, key: &str) -> Result<Session> {
    let session = client
        .place_session(
            fleet,
            &PlacementRequest {
                zone: "eu".into(),
                idempotency_key: Some(key.into()),
                wait_seconds: Some(60),
                ..PlacementRequest::default()
            },
        )
        .await?;
    until_on_game_server(&session).await?;
    Ok(session)
}

async fn machines_in(client: &Client, fleet: &str, data_center: &str) -> Result<Vec<Machine>> {
    Ok(client
        .fleet_machines_where(fleet, &[("data_center", data_center)])
        .await?
        .machines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_metal_fills_first_and_the_scaler_never_stops_it() -> Result<()> {
    let server = Fleetformd::start_with_config(CONFIG)?;
    let client = server.client();
    let build_dir = example_build_dir(server.dir.path());

    // The operator registers the machines, then installs their agents with the tokens.
    let tf = Terraform::new(&server, &pool_tf())?;
    tf.apply()?;
    let tokens: Vec<String> =
        serde_json::from_str(&tf.ok(&["output", "-json", "agent_tokens"])?.stdout)?;
    ensure!(tokens.len() == 2 && tokens.iter().all(|t| t.starts_with("fft_")));
    let mut agents = [
        OperatorAgent::start(&server, "fra-metal-0", &tokens[0])?,
        OperatorAgent::start(&server, "fra-metal-1", &tokens[1])?,
    ];
    // In the pool, serving no zone, the agents idle (and stay up).
    eventually(Duration::from_secs(20), "pool agents sync", || async {
        let pool = client.bare_metal_machines(Some("fra-metal")).await?;
        Ok(pool
            .iter()
            .all(|m| m.last_heartbeat_at.is_some() && m.machine_id.is_none())
            .then_some(()))
    })
    .await?;

    // The zone takes both pool machines; their 4 processes are the whole initial capacity,
    // so no VM is launched (bare metal first).
    tf.write_main(&zone_tf(&build_dir, 2))?;
    tf.apply()?;
    let fleet = tf.output("fleet_id")?;
    let zone = tf.output("zone_id")?;
    let status = until_idle_processes(&client, &zone, 4).await?;
    assert_eq!(status.machines.get("ACTIVE"), Some(&2), "{status:?}");
    assert!(machines_in(&client, &fleet, "cloud").await?.is_empty());
    let metal: BTreeSet<String> = machines_in(&client, &fleet, "metal")
        .await?
        .into_iter()
        .map(|m| {
            assert!(m.bare_metal_id.is_some(), "{m:?}");
            m.id
        })
        .collect();
    assert_eq!(metal.len(), 2);
    let (changes, plan) = tf.plan_has_changes()?;
    assert!(!changes, "second plan is clean:\n{}", plan.text());

    // Placements fill the bare metal first, then overflow to the VMs.
    let mut sessions = Vec::new();
    for key in ["s1", "s2", "s3", "s4"] {
        let session = place(&client, &fleet, key).await?;
        assert_eq!(session.data_center, "metal", "{session:?}");
        sessions.push(session);
    }
    let overflow = place(&client, &fleet, "s5").await?;
    assert_eq!(overflow.data_center, "cloud", "{overflow:?}");
    sessions.push(overflow);

    // Demand gone: the scaler stops the VM, never the bare metal.
    for session in &sessions {
        client.end_session(&session.id).await?;
    }
    eventually(Duration::from_secs(60), "the VM scaled in", || async {
        let cloud = machines_in(&client, &fleet, "cloud").await?;
        Ok(cloud
            .iter()
            .all(|m| m.status == MachineStatus::Terminated)
            .then_some(()))
    })
    .await?;
    until_idle_processes(&client, &zone, 4).await?;
    for machine in machines_in(&client, &fleet, "metal").await? {
        assert_eq!(machine.status, MachineStatus::Active, "{machine:?}");
        assert!(
            metal.contains(&machine.id),
            "the same machines: {machine:?}"
        );
    }
    let drained = client
        .fleet_events(
            &fleet,
            &EventQuery {
                text: Some("MACHINE_DRAINING".into()),
                ..EventQuery::default()
            },
        )
        .await?;
    assert!(
        drained
            .iter()
            .all(|e| !metal.contains(e.machine_id.as_deref().unwrap_or_default())),
        "no bare-metal machine was drained: {drained:#?}"
    );

    // One machine back to the pool: the idle one goes (drained first), the busy one stays
    // and keeps its session; the returned machine's agent idles, still up.
    let kept = place(&client, &fleet, "s6").await?;
    tf.write_main(&zone_tf(&build_dir, 1))?;
    tf.apply()?;
    let returned = eventually(
        Duration::from_secs(30),
        "a machine back in the pool",
        || async {
            let metal = machines_in(&client, &fleet, "metal").await?;
            let gone: Vec<Machine> = metal
                .into_iter()
                .filter(|m| m.status == MachineStatus::Terminated)
                .collect();
            Ok((gone.len() == 1).then(|| gone[0].clone()))
        },
    )
    .await?;
    assert_ne!(returned.id, kept.machine_id, "the busy machine stays");
    let session = client.get_session(&kept.id).await?;
    assert_eq!(session.status, SessionStatus::Active, "{session:?}");
    let live_on_returned = client
        .fleet_processes(&fleet)
        .await?
        .processes
        .into_iter()
        .filter(|p| {
            p.machine_id == returned.id
                && !matches!(p.status, ProcessStatus::Exited | ProcessStatus::Crashed)
        })
        .count();
    assert_eq!(live_on_returned, 0, "its game servers stopped");
    let pool = client.bare_metal_machines(Some("fra-metal")).await?;
    let free = pool
        .iter()
        .find(|m| Some(&m.id) == returned.bare_metal_id.as_ref())
        .context("the returned pool machine")?;
    assert_eq!(free.machine_id, None, "{free:?}");
    assert!(agents.iter_mut().all(OperatorAgent::running));
    let (changes, plan) = tf.plan_has_changes()?;
    assert!(!changes, "plan is clean after the change:\n{}", plan.text());

    // The pool machine that hosts a session cannot leave the pool.
    let busy = pool
        .iter()
        .find(|m| m.machine_id.as_deref() == Some(kept.machine_id.as_str()))
        .context("the busy pool machine")?;
    let refused = client
        .delete_bare_metal_machine(&busy.id)
        .await
        .expect_err("a pool machine hosting a session is not removed");
    assert_eq!(
        refused.status().map(|s| s.as_u16()),
        Some(409),
        "{refused:?}"
    );
    let session = client.get_session(&kept.id).await?;
    assert_eq!(session.status, SessionStatus::Active, "{session:?}");
    client.get_bare_metal_machine(&busy.id).await?;

    // Destroy: the zone goes first, then the pool machines, whose agents are revoked.
    tf.ok(&["destroy", "-auto-approve", "-no-color", "-input=false"])?;
    assert!(client.bare_metal_machines(None).await?.is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while agents.iter_mut().any(OperatorAgent::running) {
        ensure!(
            std::time::Instant::now() < deadline,
            "revoked agents still run"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let game_servers = pids_with_arg_containing(&server.data_dir().to_string_lossy())
        .into_iter()
        .filter(|pid| pids_named("example-game-server").contains(pid))
        .count();
    assert_eq!(game_servers, 0, "no game server left");
    Ok(())
}
