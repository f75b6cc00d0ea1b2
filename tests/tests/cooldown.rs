//! A zone of two VM data centers of different priority with a cooldown, through the real
//! `terraform`: apply → the preferred data center fills first → past the cooldown the zone
//! runs no machine and says AVAILABLE_COOLDOWN → a placement with `wait_seconds` wakes it
//! and lands on a real game server.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use fleetform_api::*;
use fleetform_e2e::*;

fn main_tf(build_dir: &std::path::Path) -> String {
    format!(
        r#"
terraform {{
  required_providers {{
    fleetform = {{ source = "fleetform/fleetform" }}
  }}
}}

resource "fleetform_build" "game" {{
  name   = "example-game-server"
  source = "file://{build}"
}}

resource "fleetform_fleet" "game" {{
  name              = "cooldown"
  build_id          = fleetform_build.game.id
  launch_path       = "example-game-server"
  launch_parameters = "--port {{port}}"
  force_destroy     = true
}}

resource "fleetform_zone" "eu" {{
  fleet_id                 = fleetform_fleet.game.id
  name                     = "eu"
  initial_server_processes = 4
  cooldown_minutes         = 1

  buffer_rule {{
    available_servers = 1
  }}

  data_center {{
    name                 = "overflow"
    location             = "local"
    priority             = 1
    max_server_processes = 4
    machine_model {{
      instance_type         = "local"
      processes_per_machine = 2
    }}
  }}

  data_center {{
    name                 = "preferred"
    location             = "local"
    priority             = 0
    max_server_processes = 2
    machine_model {{
      instance_type         = "local"
      processes_per_machine = 2
    }}
  }}
}}

output "fleet_id" {{
  value = fleetform_fleet.game.id
}}

output "zone_id" {{
  value = fleetform_zone.eu.id
}}
"#,
        build = build_dir.display()
    )
}

fn per_data_center(machines: &[Machine]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for machine in machines.iter().filter(|m| {
        !matches!(
            m.status,
            MachineStatus::Terminating | MachineStatus::Terminated
        )
    }) {
        *counts.entry(machine.data_center.clone()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooldown_scales_to_zero_and_a_placement_wakes_the_zone() -> Result<()> {
    let server = Fleetformd::start()?;
    let client = server.client();
    let build_dir = example_build_dir(server.dir.path());
    let tf = Terraform::new(&server, &main_tf(&build_dir))?;
    tf.apply()?;
    let fleet_id = tf.output("fleet_id")?;
    let zone_id = tf.output("zone_id")?;

    // 4 processes at 2 per machine: the preferred data center's one machine first, the
    // rest overflows to the other.
    let status = client.zone_status(&zone_id).await?;
    assert_eq!(status.status, ResourceStatus::Available, "{status:?}");
    assert!(status.processes_idle >= 4, "{status:?}");
    let machines = client.fleet_machines(&fleet_id).await?.machines;
    assert_eq!(
        per_data_center(&machines),
        BTreeMap::from([("overflow".into(), 1), ("preferred".into(), 1)]),
        "{machines:#?}"
    );

    // Past the cooldown with no session: VM capacity goes to 0.
    let cooled = eventually(Duration::from_secs(120), "cooldown", || {
        let client = client.clone();
        let zone = zone_id.clone();
        async move {
            let status = client.zone_status(&zone).await?;
            let running =
                status.processes_idle + status.processes_active + status.processes_starting;
            let machines: u32 = status
                .machines
                .iter()
                .filter(|(state, _)| state.as_str() != "TERMINATED")
                .map(|(_, count)| count)
                .sum();
            Ok((status.status == ResourceStatus::AvailableCooldown
                && running == 0
                && machines == 0)
                .then_some(status))
        }
    })
    .await?;
    assert_eq!(cooled.processes_desired, 0, "{cooled:?}");
    eventually(Duration::from_secs(30), "agents stopped", || {
        let left = server.agent_pids();
        async move { Ok(left.is_empty().then_some(())) }
    })
    .await?;
    // A plan over a cooled zone is still clean: status is not part of the resource state.
    let (changes, plan) = tf.plan_has_changes()?;
    assert!(!changes, "{}", plan.text());

    // A placement with wait_seconds wakes the zone and is answered once a process is ready.
    let session = client
        .place_session(
            &fleet_id,
            &PlacementRequest {
                zone: "eu".into(),
                wait_seconds: Some(60),
                ..PlacementRequest::default()
            },
        )
        .await?;
    // (Either data center: the placement takes the first process that becomes ready while
    // it waits; which data centers are preferred is checked on the machines above.)
    assert!(
        ["preferred", "overflow"].contains(&session.data_center.as_str()),
        "{session:?}"
    );
    let game = eventually(
        Duration::from_secs(10),
        "session on its game server",
        || {
            let session = session.clone();
            async move {
                let game = probe_game_server(&session.address, session.port).await?;
                Ok((game.session_id.as_deref() == Some(session.id.as_str())).then_some(game))
            }
        },
    )
    .await?;
    assert_eq!(game.process_id, session.process_id);
    let woken = client.zone_status(&zone_id).await?;
    assert_ne!(woken.status, ResourceStatus::AvailableCooldown, "{woken:?}");
    tf.ok(&["destroy", "-auto-approve", "-no-color", "-input=false"])?;
    Ok(())
}
