//! The `aws` driver against a real EC2 API endpoint: moto's server, behind our fault
//! proxy. moto boots nothing, so the harness's instance runner stands in for each
//! instance: it reads the instance's user data and starts a real `fleetform-agent` with
//! that machine's token, which runs real example game servers. The whole path — EC2 API,
//! agent registration, processes, placement — runs, and every assertion about instances
//! reads moto's own instance list.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use fleetform_api::*;
use fleetform_e2e::faults::{FaultError, FaultProxy};
use fleetform_e2e::moto::{InstanceRunner, Moto, MotoInstance};
use fleetform_e2e::*;

const REGION: &str = "us-east-1";
/// An image in moto's bundled list (its AMI validation is on).
const AMI: &str = "ami-1e749f67";
const CLUSTER: &str = "e2e";
const FIRST_MODEL: &str = "c5.large";
const SECOND_MODEL: &str = "m5.large";

/// moto, the fault proxy in front of it, fleetformd with one `aws` location pointed at
/// the proxy, and the instance runner. Dropped in this order: agents first.
struct World {
    runner: InstanceRunner,
    server: Fleetformd,
    proxy: FaultProxy,
    moto: Moto,
    _work: tempfile::TempDir,
}

/// The server configuration: static credentials and a loopback endpoint, always. The
/// attempt timeout is long: moto ignores `ClientToken`, so an SDK retry of a slow
/// `RunInstances` would buy a second instance (which the sweep then terminates), and a test
/// that holds the answer must not see one.
fn config(endpoint: &str, extra: &str) -> String {
    format!(
        r#"cluster = "{CLUSTER}"

[[location]]
name = "{REGION}"
driver = "aws"
region = "{REGION}"
ami = "{AMI}"
endpoint_url = "{endpoint}"
access_key_id = "test"
secret_access_key = "test"
tags = {{ team = "e2e" }}
boot_seconds = 2
inventory_seconds = 0.3
sweep_seconds = 1
{extra}

[location.retry]
max_attempts = 10
initial_backoff_ms = 20
max_backoff_ms = 200
attempt_timeout_ms = 30000
operation_timeout_ms = 60000
"#
    )
}

impl World {
    async fn start(extra: &str) -> Result<World> {
        let moto = Moto::start().await?;
        let proxy = FaultProxy::start(&moto.url).await?;
        let server = Fleetformd::start_with_config(&config(&proxy.url, extra))?;
        let work = tempfile::Builder::new()
            .prefix("fleetform-vms-")
            .tempdir()?;
        let runner = moto.runner(binary("fleetform-agent"), work.path().to_path_buf());
        Ok(World {
            runner,
            server,
            proxy,
            moto,
            _work: work,
        })
    }

    /// Instances moto runs (not shutting down or terminated) for this cluster.
    async fn live(&self) -> Result<Vec<MotoInstance>> {
        Ok(self
            .moto
            .live()
            .await?
            .into_iter()
            .filter(|i| i.tags.get("fleetform:cluster").map(String::as_str) == Some(CLUSTER))
            .collect())
    }

    /// Creates a build, a fleet and a fixed zone of `processes` processes in one data
    /// center `east` of this location, 2 processes per machine, models `models`.
    async fn fleet_and_zone(&self, processes: u32, models: &[&str]) -> Result<(Fleet, Zone)> {
        let client = self.server.client();
        let build_dir = example_build_dir(self.server.dir.path());
        let build = client
            .create_build(&fixtures::build(&build_dir, None))
            .await?;
        let fleet = client
            .create_fleet(&fixtures::fleet("aws-fleet", &build.id))
            .await?;
        let mut spec = fixtures::zone(&fleet.id, 2, processes).spec();
        let dc = &mut spec.data_centers[0];
        dc.name = "east".into();
        dc.location = REGION.into();
        dc.machine_models = models
            .iter()
            .map(|model| MachineModel {
                instance_type: model.to_string(),
                processes_per_machine: 2,
            })
            .collect();
        let zone = client.create_zone(&spec).await?;
        Ok((fleet, zone))
    }

    async fn wait_available(&self, zone_id: &str, timeout: Duration) -> Result<ZoneStatus> {
        let client = self.server.client();
        eventually(timeout, "zone AVAILABLE", || {
            let client = client.clone();
            let zone_id = zone_id.to_string();
            async move {
                let status = client.zone_status(&zone_id).await?;
                Ok((status.status == ResourceStatus::Available).then_some(status))
            }
        })
        .await
        .with_context(|| self.server.log())
    }

    async fn events(&self, code: &str) -> Result<Vec<Event>> {
        Ok(self
            .server
            .client()
            .events(&EventQuery {
                text: Some(code.into()),
                ..EventQuery::default()
            })
            .await?
            .into_iter()
            .filter(|event| event.code == code)
            .collect())
    }

    /// The fleet's machines that have not ended (TERMINATED or UNHEALTHY), by instance id.
    async fn machines_by_instance(&self, fleet_id: &str) -> Result<BTreeMap<String, Machine>> {
        Ok(self
            .server
            .client()
            .fleet_machines(fleet_id)
            .await?
            .machines
            .into_iter()
            .filter(|m| {
                !matches!(
                    m.status,
                    MachineStatus::Terminated | MachineStatus::Unhealthy
                )
            })
            .filter_map(|m| Some((m.driver_ref.clone()?, m)))
            .collect())
    }
}

/// No machine runs as two instances, and every live instance of the cluster is the
/// recorded instance of a live machine: nothing doubled, nothing leaked.
async fn assert_one_instance_per_machine(world: &World, fleet_id: &str) -> Result<()> {
    let live = world.live().await?;
    let machines = world.machines_by_instance(fleet_id).await?;
    let mut seen = BTreeSet::new();
    for instance in &live {
        let machine_id = instance
            .tags
            .get("fleetform:machine-id")
            .context("instance without machine id")?;
        ensure!(
            seen.insert(machine_id.clone()),
            "machine {machine_id} runs as two instances: {live:#?}"
        );
        let machine = machines
            .get(&instance.id)
            .with_context(|| format!("instance {} is no machine's: {machines:#?}", instance.id))?;
        ensure!(&machine.id == machine_id, "{machine:?} vs {instance:?}");
    }
    ensure!(
        live.len() == machines.len(),
        "{} live instances, {} machines: {live:#?} {machines:#?}",
        live.len(),
        machines.len()
    );
    Ok(())
}

/// Polls until `check` holds for the cluster's live instances.
async fn live_instances_until(
    world: &World,
    timeout: Duration,
    what: &str,
    check: impl Fn(&[MotoInstance]) -> bool,
) -> Result<Vec<MotoInstance>> {
    let deadline = Instant::now() + timeout;
    loop {
        let live = world.live().await?;
        if check(&live) {
            return Ok(live);
        }
        ensure!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; live: {live:#?}\n{}",
            world.server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn main_tf(build_dir: &std::path::Path, processes: u32) -> String {
    format!(
        r#"
terraform {{
  required_providers {{
    fleetform = {{ source = "fleetform/fleetform" }}
  }}
}}

provider "fleetform" {{}}

resource "fleetform_build" "game" {{
  name    = "example-game-server"
  version = "aws"
  source  = "file://{build}"
}}

resource "fleetform_fleet" "game" {{
  name              = "aws"
  build_id          = fleetform_build.game.id
  launch_path       = "example-game-server"
  launch_parameters = "--port {{port}}"
  force_destroy     = true
}}

resource "fleetform_zone" "east" {{
  fleet_id                 = fleetform_fleet.game.id
  name                     = "east"
  scaling_mode             = "fixed"
  initial_server_processes = {processes}

  data_center {{
    name                 = "use1-a"
    location             = "{REGION}"
    max_server_processes = {processes}

    machine_model {{
      instance_type         = "{FIRST_MODEL}"
      processes_per_machine = 2
    }}
    machine_model {{
      instance_type         = "{SECOND_MODEL}"
      processes_per_machine = 2
    }}
  }}
}}

output "fleet_id" {{
  value = fleetform_fleet.game.id
}}

output "zone_id" {{
  value = fleetform_zone.east.id
}}
"#,
        build = build_dir.display()
    )
}

/// apply → instances of the first model with the right tags → AVAILABLE → a placement
/// lands on a real game server → scale-in drains, then terminates → destroy → every
/// instance terminated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_apply_runs_ec2_instances_and_destroy_terminates_them() -> Result<()> {
    let world = World::start("").await?;
    let client = world.server.client();
    let build_dir = example_build_dir(world.server.dir.path());
    let tf = Terraform::new(&world.server, &main_tf(&build_dir, 4))?;

    let started = Instant::now();
    tf.apply()?;
    eprintln!("apply → AVAILABLE on EC2 (moto) in {:?}", started.elapsed());
    let fleet_id = tf.output("fleet_id")?;
    let zone_id = tf.output("zone_id")?;
    let status = client.zone_status(&zone_id).await?;
    assert_eq!(status.status, ResourceStatus::Available, "{status:?}");

    // 4 processes at 2 per machine: 2 instances of the first model, tagged.
    let live = world.live().await?;
    assert_eq!(live.len(), 2, "{live:#?}");
    let machines = world.machines_by_instance(&fleet_id).await?;
    for instance in &live {
        assert_eq!(instance.instance_type, FIRST_MODEL, "{instance:?}");
        let machine = &machines[&instance.id];
        let tag = |key: &str| instance.tags.get(key).map(String::as_str);
        assert_eq!(tag("fleetform:cluster"), Some(CLUSTER));
        assert_eq!(tag("fleetform:machine-id"), Some(machine.id.as_str()));
        assert_eq!(tag("fleetform:fleet"), Some(fleet_id.as_str()));
        assert_eq!(tag("fleetform:zone"), Some(zone_id.as_str()));
        assert_eq!(tag("fleetform:data-center"), Some("use1-a"));
        assert_eq!(tag("team"), Some("e2e"), "the location's own tags");
        assert_eq!(
            tag("Name"),
            Some(format!("fleetform-{}", machine.id).as_str())
        );
    }
    assert_eq!(world.runner.booted().len(), 2);
    assert_one_instance_per_machine(&world, &fleet_id).await?;

    // A placement lands on a game server an instance's agent runs.
    let session = client
        .place_session(
            &fleet_id,
            &PlacementRequest {
                zone: "east".into(),
                ..PlacementRequest::default()
            },
        )
        .await?;
    until_on_game_server(&session).await?;
    let busy_machine = session.machine_id.clone();

    // Scale-in to 2 processes: only the idle machine goes, drained first, recorded.
    tf.write_main(&main_tf(&build_dir, 2))?;
    tf.apply()?;
    let live = live_instances_until(&world, Duration::from_secs(60), "scale-in", |live| {
        live.len() == 1
    })
    .await?;
    let machines = world.machines_by_instance(&fleet_id).await?;
    assert_eq!(
        machines[&live[0].id].id, busy_machine,
        "the busy machine stays"
    );
    let terminated = eventually(Duration::from_secs(20), "a TERMINATED machine", || {
        let client = client.clone();
        let fleet_id = fleet_id.clone();
        async move {
            let terminated: Vec<Machine> = client
                .fleet_machines(&fleet_id)
                .await?
                .machines
                .into_iter()
                .filter(|m| m.status == MachineStatus::Terminated)
                .collect();
            Ok((!terminated.is_empty()).then_some(terminated))
        }
    })
    .await
    .with_context(|| world.server.log())?;
    assert_eq!(terminated.len(), 1, "{terminated:#?}");
    assert!(terminated[0].terminated_at.is_some(), "{terminated:#?}");
    assert_eq!(
        terminated[0].termination_reason.as_deref(),
        Some("machine terminated")
    );
    let draining = world.events("MACHINE_DRAINING").await?;
    let ended = world.events("MACHINE_TERMINATED").await?;
    assert_eq!(draining.len(), 1, "{draining:#?}");
    assert_eq!(ended.len(), 1, "{ended:#?}");
    assert!(draining[0].time <= ended[0].time);
    assert_eq!(draining[0].machine_id, Some(terminated[0].id.clone()));
    // The session was never interrupted.
    let still = client.get_session(&session.id).await?;
    assert_eq!(still.status, SessionStatus::Active, "{still:?}");

    // destroy: every instance terminated in moto, no agent left.
    tf.ok(&["destroy", "-auto-approve", "-input=false"])?;
    live_instances_until(&world, Duration::from_secs(60), "destroy", |live| {
        live.is_empty()
    })
    .await?;
    let all = world.moto.instances().await?;
    assert_eq!(all.len(), 2, "no other instance was ever started: {all:#?}");
    assert!(all.iter().all(|i| i.state == "terminated"), "{all:#?}");
    eventually(Duration::from_secs(20), "every agent stopped", || async {
        Ok(world
            .runner
            .booted()
            .iter()
            .all(|id| {
                world
                    .runner
                    .agent_pid(id)
                    .is_none_or(|pid| !process_alive(pid))
            })
            .then_some(()))
    })
    .await?;
    Ok(())
}

/// Capacity errors on the first model → instances of the second, with an event that says
/// why; no capacity at all → the data center is reported short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_errors_fall_back_to_the_next_model_and_say_why() -> Result<()> {
    let world = World::start("").await?;
    world.proxy.fail_when(
        "RunInstances",
        |params| params.get("InstanceType").map(String::as_str) == Some(FIRST_MODEL),
        FaultError::capacity(),
        usize::MAX,
    );
    let (fleet, zone) = world
        .fleet_and_zone(4, &[FIRST_MODEL, SECOND_MODEL])
        .await?;
    world
        .wait_available(&zone.id, Duration::from_secs(60))
        .await?;

    let live = world.live().await?;
    assert_eq!(live.len(), 2, "{live:#?}");
    assert!(
        live.iter().all(|i| i.instance_type == SECOND_MODEL),
        "{live:#?}"
    );
    assert_one_instance_per_machine(&world, &fleet.id).await?;
    let stats = world.proxy.action_stats("RunInstances");
    assert!(stats.faulted >= 1, "{stats:?}");
    // The SDK did not retry capacity errors: one refused call per attempt of a model.
    let events = world.events("MACHINE_MODEL_UNAVAILABLE").await?;
    assert_eq!(events.len(), stats.faulted, "{events:#?} {stats:?}");
    let event = &events[0];
    assert_eq!(event.level, EventLevel::Warning);
    assert_eq!(event.producer, EventProducer::Zone);
    assert_eq!(event.zone_id.as_deref(), Some(zone.id.as_str()));
    assert!(
        event.message.contains("InsufficientInstanceCapacity")
            && event.message.contains(FIRST_MODEL)
            && event.message.contains(&format!("trying {SECOND_MODEL}")),
        "{}",
        event.message
    );

    // Neither model has capacity: the zone's events say the data center is short.
    world
        .proxy
        .fail_when("RunInstances", |_| true, FaultError::capacity(), usize::MAX);
    let client = world.server.client();
    let mut bigger = client.get_zone(&zone.id).await?.spec;
    bigger.initial_server_processes = 6;
    bigger.data_centers[0].max_server_processes = Some(6);
    client.update_zone(&zone.id, &bigger.into()).await?;
    let short = eventually(
        Duration::from_secs(30),
        "DATA_CENTER_SHORT event",
        || async {
            let events = world.events("DATA_CENTER_SHORT").await?;
            Ok(events.into_iter().next())
        },
    )
    .await?;
    assert!(
        short.message.contains("east") && short.message.contains(SECOND_MODEL),
        "{}",
        short.message
    );
    assert_eq!(world.live().await?.len(), 2, "nothing more was bought");
    Ok(())
}

/// Throttling on every third EC2 call: the SDK backs off and the zone still converges,
/// with exactly one instance per machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_on_every_third_call_still_converges() -> Result<()> {
    let world = World::start("").await?;
    world.proxy.fail_every(None, 3, FaultError::throttled());
    let (fleet, zone) = world.fleet_and_zone(20, &[FIRST_MODEL]).await?;
    world
        .wait_available(&zone.id, Duration::from_secs(90))
        .await?;
    let live = live_instances_until(&world, Duration::from_secs(30), "10 instances", |live| {
        live.len() == 10
    })
    .await?;
    assert!(live.iter().all(|i| i.instance_type == FIRST_MODEL));
    assert_one_instance_per_machine(&world, &fleet.id).await?;
    let stats = world.proxy.stats();
    let throttled: usize = stats.values().map(|s| s.faulted).sum();
    let seen: usize = stats.values().map(|s| s.seen).sum();
    assert!(throttled >= 5, "throttled {throttled} of {seen}: {stats:?}");
    assert_eq!(throttled, seen / 3, "every third call: {stats:?}");
    assert_eq!(
        world.moto.instances().await?.len(),
        10,
        "no instance was bought twice"
    );
    eprintln!("converged through {throttled} throttled calls of {seen}");
    Ok(())
}

/// fleetformd is killed (-9) after moto ran an instance and before the answer reached
/// the store; after a restart the instance is adopted, never leaked and never doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_run_instances_and_the_store_write_leaks_nothing() -> Result<()> {
    let mut world = World::start("").await?;
    let mut held = world.proxy.hold_after_forward("RunInstances");
    let (fleet, zone) = world.fleet_and_zone(4, &[FIRST_MODEL]).await?;
    let answer = tokio::time::timeout(Duration::from_secs(30), held.forwarded())
        .await
        .context("RunInstances never reached moto")??;
    ensure!(answer.contains("<instanceId>"), "{answer}");
    // moto runs the instance; fleetformd never heard back. (The zone's other machine is
    // launched beside it: its answer may or may not have been recorded.)
    world.server.kill9();
    held.release();
    let orphan_id = answer
        .split("<instanceId>")
        .nth(1)
        .and_then(|rest| rest.split("</instanceId>").next())
        .context("the held answer names its instance")?
        .to_string();
    let orphaned = world.live().await?;
    let orphan = orphaned
        .iter()
        .find(|instance| instance.id == orphan_id)
        .with_context(|| format!("{orphan_id} runs: {orphaned:#?}"))?
        .clone();
    let orphan_machine = orphan.tags["fleetform:machine-id"].clone();

    world.server.restart()?;
    world
        .wait_available(&zone.id, Duration::from_secs(60))
        .await?;
    let live = live_instances_until(&world, Duration::from_secs(30), "2 instances", |live| {
        live.len() == 2
    })
    .await?;
    assert_one_instance_per_machine(&world, &fleet.id).await?;
    // The instance launched before the crash is that machine's instance now.
    let machines = world.machines_by_instance(&fleet.id).await?;
    assert!(
        live.iter().any(|i| i.id == orphan.id),
        "{live:#?}\n{:#?}\n{}",
        world.server.client().events(&EventQuery::default()).await?,
        world.server.log()
    );
    assert_eq!(machines[&orphan.id].id, orphan_machine);
    let adopted = world.events("MACHINE_ADOPTED").await?;
    assert!(
        adopted
            .iter()
            .any(|event| event.machine_id.as_deref() == Some(orphan_machine.as_str())),
        "{adopted:#?}"
    );
    assert_eq!(
        world.moto.instances().await?.len(),
        2,
        "nothing bought twice"
    );
    Ok(())
}

/// An instance started behind fleetform's back with its cluster tag is swept; one of
/// another cluster is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_of_the_cluster_that_no_machine_owns_are_swept() -> Result<()> {
    let world = World::start("").await?;
    let stray = world
        .moto
        .run_untracked_instance(AMI, "t3.micro", &[("fleetform:cluster", CLUSTER)])
        .await?;
    let forged = world
        .moto
        .run_untracked_instance(
            AMI,
            "t3.micro",
            &[
                ("fleetform:cluster", CLUSTER),
                (
                    "fleetform:machine-id",
                    "mch-0000000000000000000000000000dead",
                ),
            ],
        )
        .await?;
    let neighbour = world
        .moto
        .run_untracked_instance(AMI, "t3.micro", &[("fleetform:cluster", "someone-else")])
        .await?;
    live_instances_until(&world, Duration::from_secs(30), "sweep", |live| {
        live.is_empty()
    })
    .await?;
    let all = world.moto.instances().await?;
    let state = |id: &str| {
        all.iter()
            .find(|i| i.id == id)
            .map(|i| i.state.clone())
            .unwrap_or_default()
    };
    assert_eq!(state(&stray), "terminated");
    assert_eq!(state(&forged), "terminated");
    assert_eq!(state(&neighbour), "running", "another cluster's instance");
    let events = world.events("ORPHAN_TERMINATED").await?;
    assert_eq!(events.len(), 2, "{events:#?}");
    assert!(events.iter().any(|e| e.message.contains(&stray)));
    assert!(events
        .iter()
        .any(|e| e.message.contains(&forged) && e.message.contains("no machine")));
    assert!(events.iter().all(|e| e.level == EventLevel::Warning));
    Ok(())
}

/// A machine whose agent never registers is terminated and replaced.
///
/// Which instances never booted comes from the runner (it held them), not from when the
/// test first looked: on a loaded machine the first instance may already be replaced by
/// then, and a replacement launched while boots are held never boots either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_whose_agent_never_registers_is_replaced() -> Result<()> {
    let world = World::start("register_timeout_seconds = 3").await?;
    world.runner.hold_boots(true);
    let (fleet, zone) = world.fleet_and_zone(2, &[FIRST_MODEL]).await?;
    eventually(Duration::from_secs(30), "an instance held", || async {
        Ok((!world.runner.held().is_empty()).then_some(()))
    })
    .await?;
    let event = eventually(
        Duration::from_secs(30),
        "MACHINE_NOT_REGISTERED",
        || async {
            Ok(world
                .events("MACHINE_NOT_REGISTERED")
                .await?
                .into_iter()
                .next())
        },
    )
    .await?;
    assert!(
        event.message.contains("never registered"),
        "{}",
        event.message
    );
    world.runner.hold_boots(false);
    world
        .wait_available(&zone.id, Duration::from_secs(60))
        .await?;
    let held = world.runner.held();
    let live = world.live().await?;
    assert_eq!(live.len(), 1, "{live:#?}");
    assert!(
        !held.contains(&live[0].id),
        "replaced by an instance that booted: {} is one never booted ({held:?})",
        live[0].id
    );
    let all = world.moto.instances().await?;
    for id in &held {
        let old = all.iter().find(|i| &i.id == id).context("held instance")?;
        assert_eq!(old.state, "terminated", "{id} never booted");
    }
    assert_one_instance_per_machine(&world, &fleet.id).await?;
    Ok(())
}
