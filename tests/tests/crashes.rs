//! Crashes end to end: a real fleetformd, local agents and the example game server with
//! its crash flags. Crashes are listed with their exit code or signal, the server's last
//! output lines and (where this host writes core files) the core file; a server that
//! crashes at start puts its fleet in `UNAVAILABLE` with a `CRASH_LOOP` event, the agent
//! backs off instead of restarting it hot, and fixing the build through `terraform apply`
//! brings the fleet back to `AVAILABLE` with `FLEET_RECOVERED`.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use fleetform_api::*;
use fleetform_e2e::*;

/// A build of the example server in its own directory under `parent`, a fleet running it
/// with `launch_parameters`, and a fixed zone of one local machine with `processes`.
async fn setup(
    server: &Fleetformd,
    name: &str,
    launch_parameters: &str,
    processes: u32,
) -> Result<(Build, Fleet, Zone)> {
    let client = server.client();
    let build_dir = example_build_dir(&server.dir.path().join(name));
    let build = client
        .create_build(&fixtures::build(&build_dir, None))
        .await?;
    let mut spec = fixtures::fleet(name, &build.id);
    spec.launch_parameters = Some(launch_parameters.into());
    let fleet = client.create_fleet(&spec).await?;
    let zone = client
        .create_zone(&fixtures::zone(&fleet.id, processes, processes).spec())
        .await?;
    Ok((build, fleet, zone))
}

/// The fleet's crashes once there are at least `count`.
async fn crashes_of(server: &Fleetformd, fleet: &Fleet, count: usize) -> Result<Vec<Crash>> {
    let client = server.client();
    eventually(
        Duration::from_secs(60),
        &format!("{count} crash(es) of fleet {}", fleet.name),
        || {
            let client = client.clone();
            let fleet = fleet.id.clone();
            async move {
                let crashes = client.fleet_crashes(&fleet, &CrashQuery::default()).await?;
                Ok((crashes.len() >= count).then_some(crashes))
            }
        },
    )
    .await
    .with_context(|| server.log())
}

/// Whether this host's core settings let the agent find a core file: the kernel default
/// pattern (`core`, relative to the process's working directory) and a hard core-size
/// limit above 0. A pattern starting with `|` pipes cores to a program (systemd-coredump,
/// apport): no file for the agent. Other patterns are not asserted on.
fn host_writes_core_files() -> Option<bool> {
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").ok()?;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut limit) };
    let pattern = pattern.trim();
    if pattern.starts_with('|') || limit.rlim_max == 0 {
        Some(false)
    } else if pattern == "core" {
        Some(true)
    } else {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashes_are_listed_with_exit_code_or_signal_output_and_core() -> Result<()> {
    let server = Fleetformd::start()?;
    let client = server.client();
    // Two fleets side by side: one exits 3 after 2 s, one dies by SIGSEGV after 1 s.
    let (build, exits, zone) =
        setup(&server, "exits", "--port {port} --crash-after-secs 2", 1).await?;
    let (segv_build, segv, _) = setup(
        &server,
        "segv",
        "--port {port} --crash-after-secs 1 --crash-signal",
        1,
    )
    .await?;

    // -- exit code 3, with the server's last output lines.
    let crashes = crashes_of(&server, &exits, 2).await?;
    let machines = client.fleet_machines(&exits.id).await?.machines;
    ensure!(machines.len() == 1, "{machines:#?}");
    for crash in &crashes {
        assert!(crash.id.starts_with("crash-"), "{crash:?}");
        assert_eq!(
            (
                crash.fleet_id.as_str(),
                crash.zone_id.as_str(),
                crash.machine_id.as_str(),
                crash.build_id.as_str()
            ),
            (
                exits.id.as_str(),
                zone.id.as_str(),
                machines[0].id.as_str(),
                build.id.as_str()
            )
        );
        assert_eq!(
            (crash.exit_code, crash.signal),
            (Some(3), None),
            "{crash:?}"
        );
        assert!(crash.process_id.starts_with("proc-"), "{crash:?}");
        assert!(
            time::OffsetDateTime::parse(
                &crash.time,
                &time::format_description::well_known::Rfc3339
            )
            .is_ok(),
            "{crash:?}"
        );
        // The output is the process's own, ending with why it died.
        let tail = &crash.output_tail;
        assert!(
            tail.iter().any(|line| line.contains(&crash.process_id)),
            "{tail:?}"
        );
        assert!(tail.iter().any(|line| line.ends_with("ready")), "{tail:?}");
        assert_eq!(
            tail.last().map(String::as_str),
            Some("example-game-server: crashing with exit status 3 (--crash-after-secs)"),
            "{tail:?}"
        );
        assert_eq!(crash.core_dump, None, "an exit writes no core");
    }
    let processes: std::collections::BTreeSet<&str> =
        crashes.iter().map(|c| c.process_id.as_str()).collect();
    assert_eq!(processes.len(), crashes.len(), "one crash per process");
    // Newest first.
    let times: Vec<&str> = crashes.iter().map(|c| c.time.as_str()).collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted);

    // Filters: by zone, machine and build on the global route, by fleet name, and limit.
    for query in [
        CrashQuery {
            zone: Some(zone.id.clone()),
            ..CrashQuery::default()
        },
        CrashQuery {
            machine: Some(machines[0].id.clone()),
            ..CrashQuery::default()
        },
        CrashQuery {
            build: Some(build.id.clone()),
            ..CrashQuery::default()
        },
        CrashQuery {
            fleet: Some(exits.name.clone()),
            ..CrashQuery::default()
        },
    ] {
        let found = client.crashes(&query).await?;
        assert!(
            !found.is_empty() && found.iter().all(|c| c.fleet_id == exits.id),
            "{query:?}: {found:#?}"
        );
    }
    let one = client
        .fleet_crashes(
            &exits.name,
            &CrashQuery {
                limit: Some(1),
                ..CrashQuery::default()
            },
        )
        .await?;
    assert_eq!(one.len(), 1);
    // Its processes became READY before crashing: no crash loop, the fleet is not
    // UNAVAILABLE.
    let events = client
        .fleet_events(
            &exits.id,
            &EventQuery {
                text: Some("CRASH_LOOP".into()),
                ..EventQuery::default()
            },
        )
        .await?;
    assert!(events.is_empty(), "{events:#?}");
    assert_ne!(
        client.get_fleet(&exits.id).await?.status,
        ResourceStatus::Unavailable
    );

    // -- SIGSEGV: signal 11, and the core file where this host writes one.
    let crashes = crashes_of(&server, &segv, 1).await?;
    let crash = &crashes[0];
    assert_eq!(
        (crash.exit_code, crash.signal),
        (None, Some(11)),
        "{crash:?}"
    );
    assert_eq!(crash.build_id, segv_build.id);
    assert_eq!(
        crash.output_tail.last().map(String::as_str),
        Some("example-game-server: crashing with SIGSEGV (--crash-signal)"),
        "{crash:?}"
    );
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern")?;
    match host_writes_core_files() {
        Some(true) => {
            let core = crash
                .core_dump
                .as_deref()
                .with_context(|| format!("no core_dump with core_pattern {core_pattern:?}"))?;
            // Moved out of the build directory, next to the process's log.
            assert!(
                core.ends_with(&format!("logs/{}.core", crash.process_id)),
                "{core}"
            );
            let bytes = std::fs::read(core).with_context(|| core.to_string())?;
            assert_eq!(&bytes[..4], b"\x7fELF", "{core} is an ELF core file");
            let build_dir = server.dir.path().join("segv/build");
            assert!(
                !build_dir.join("core").exists(),
                "the core was moved out of the build"
            );
        }
        Some(false) => assert_eq!(
            crash.core_dump, None,
            "core_pattern {core_pattern:?}: cores are not files the agent can see"
        ),
        None => eprintln!(
            "core_pattern {core_pattern:?}: core_dump {:?} not asserted",
            crash.core_dump
        ),
    }
    Ok(())
}

/// The fleet, build and zone of the crash-loop test, driven through terraform: two builds
/// of the example server, the fleet on `var.build` with `var.launch_parameters`.
fn crash_loop_main_tf(build_dir: &Path) -> String {
    format!(
        r#"
terraform {{
  required_providers {{
    fleetform = {{ source = "fleetform/fleetform" }}
  }}
}}

provider "fleetform" {{}}

variable "build" {{
  type = string
}}

variable "launch_parameters" {{
  type = string
}}

resource "fleetform_build" "broken" {{
  name    = "example-game-server"
  version = "1.0-crashes-at-start"
  source  = "file://{dir}"
}}

resource "fleetform_build" "fixed" {{
  name    = "example-game-server"
  version = "1.1"
  source  = "file://{dir}"
}}

locals {{
  builds = {{
    broken = fleetform_build.broken.id
    fixed  = fleetform_build.fixed.id
  }}
}}

resource "fleetform_fleet" "game" {{
  name              = "crash-loop"
  build_id          = local.builds[var.build]
  launch_path       = "example-game-server"
  launch_parameters = var.launch_parameters
  force_destroy     = true
}}

resource "fleetform_zone" "local" {{
  fleet_id                 = fleetform_fleet.game.id
  name                     = "local"
  scaling_mode             = "fixed"
  initial_server_processes = 2
  # The broken build never gets a process READY: do not wait for capacity.
  wait_for_capacity        = false

  data_center {{
    name                 = "local-1"
    location             = "local"
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

output "broken_build_id" {{
  value = fleetform_build.broken.id
}}

output "fixed_build_id" {{
  value = fleetform_build.fixed.id
}}
"#,
        dir = build_dir.display()
    )
}

fn tf_vars(build: &str, launch_parameters: &str) -> String {
    format!("build = \"{build}\"\nlaunch_parameters = \"{launch_parameters}\"\n")
}

/// Events of a fleet with `code`.
async fn events_with_code(client: &Client, fleet_id: &str, code: &str) -> Result<Vec<Event>> {
    Ok(client
        .fleet_events(
            fleet_id,
            &EventQuery {
                text: Some(code.into()),
                ..EventQuery::default()
            },
        )
        .await?
        .into_iter()
        .filter(|event| event.code == code)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_loop_makes_the_fleet_unavailable_until_the_build_is_fixed() -> Result<()> {
    let server = Fleetformd::start()?;
    let client = server.client();
    let build_dir = example_build_dir(server.dir.path());
    let tf = Terraform::new(&server, &crash_loop_main_tf(&build_dir))?;
    let vars = tf.dir.path().join("terraform.tfvars");

    // -- a server that crashes at start (before `ready`).
    std::fs::write(
        &vars,
        tf_vars("broken", "--port {port} --crash-after-secs 0"),
    )?;
    tf.apply()?;
    let fleet_id = tf.output("fleet_id")?;
    let broken = tf.output("broken_build_id")?;
    let fixed = tf.output("fixed_build_id")?;

    let looped = eventually(
        Duration::from_secs(60),
        "fleet UNAVAILABLE with a CRASH_LOOP event",
        || {
            let client = client.clone();
            let fleet_id = fleet_id.clone();
            async move {
                let fleet = client.get_fleet(&fleet_id).await?;
                let events = events_with_code(&client, &fleet_id, "CRASH_LOOP").await?;
                Ok(
                    (fleet.status == ResourceStatus::Unavailable && !events.is_empty())
                        .then_some(events),
                )
            }
        },
    )
    .await
    .with_context(|| server.log())?;
    assert_eq!(looped.len(), 1, "one event per verdict: {looped:#?}");
    let event = &looped[0];
    assert_eq!(
        (event.level, event.producer),
        (EventLevel::Error, EventProducer::Fleet)
    );
    assert_eq!(event.fleet_id.as_deref(), Some(fleet_id.as_str()));
    for part in [broken.as_str(), "crash-looping", "exit code 3"] {
        assert!(event.message.contains(part), "{part}: {}", event.message);
    }
    // Its crashes say why: the server's own last words, before it ever was READY.
    let crashes = client
        .fleet_crashes(&fleet_id, &CrashQuery::default())
        .await?;
    assert!(crashes.len() >= 3, "{crashes:#?}");
    for crash in &crashes {
        assert_eq!(
            (crash.exit_code, crash.build_id.as_str()),
            (Some(3), broken.as_str())
        );
        let tail = &crash.output_tail;
        assert_eq!(tail.len(), 2, "{crash:?}");
        assert!(
            tail[0].starts_with(&format!(
                "example-game-server: starting as {} on port ",
                crash.process_id
            )),
            "{crash:?}"
        );
        assert_eq!(
            tail[1],
            "example-game-server: crashing with exit status 3 (--crash-after-secs)"
        );
    }
    // The status is the fleet's, for data sources and the API alike; the zone never got
    // a process up.
    let processes = client.fleet_processes(&fleet_id).await?.processes;
    assert!(
        processes.iter().all(|p| p.status != ProcessStatus::Ready),
        "{processes:#?}"
    );

    // -- no hot loop: the agent backs off (1 s doubling to 30 s), so over 10 s only a few
    // more starts crash (a hot loop would crash dozens of times).
    let before = client
        .fleet_crashes(&fleet_id, &CrashQuery::default())
        .await?
        .len();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = client
        .fleet_crashes(&fleet_id, &CrashQuery::default())
        .await?
        .len();
    eprintln!("crashes: {before} when UNAVAILABLE, {after} ten seconds later");
    assert!(
        after - before <= 6,
        "{} crashes in 10 s: restarts are not backed off",
        after - before
    );
    assert_eq!(
        events_with_code(&client, &fleet_id, "CRASH_LOOP")
            .await?
            .len(),
        1,
        "the verdict holds while the build keeps crashing, without new events"
    );
    assert_eq!(
        client.get_fleet(&fleet_id).await?.status,
        ResourceStatus::Unavailable
    );

    // -- fix the build (apply): FLEET_RECOVERED, then AVAILABLE once its processes are up.
    std::fs::write(&vars, tf_vars("fixed", "--port {port}"))?;
    tf.apply()?;
    let recovered = events_with_code(&client, &fleet_id, "FLEET_RECOVERED").await?;
    assert_eq!(recovered.len(), 1, "{recovered:#?}");
    assert_eq!(recovered[0].level, EventLevel::Info);
    assert!(
        recovered[0].message.contains(&broken) && recovered[0].message.contains(&fixed),
        "{}",
        recovered[0].message
    );
    assert_ne!(
        client.get_fleet(&fleet_id).await?.status,
        ResourceStatus::Unavailable,
        "the build change lifts the verdict at once"
    );
    eventually(Duration::from_secs(60), "fleet AVAILABLE", || {
        let client = client.clone();
        let fleet_id = fleet_id.clone();
        async move {
            let fleet = client.get_fleet(&fleet_id).await?;
            Ok((fleet.status == ResourceStatus::Available).then_some(()))
        }
    })
    .await
    .with_context(|| server.log())?;
    let processes = client.fleet_processes(&fleet_id).await?.processes;
    let ready: Vec<&Process> = processes
        .iter()
        .filter(|p| p.status == ProcessStatus::Ready)
        .collect();
    assert_eq!(ready.len(), 2, "{processes:#?}");
    assert!(ready.iter().all(|p| p.build_id == fixed), "{processes:#?}");
    // The fixed build does not crash.
    let fixed_crashes = client
        .crashes(&CrashQuery {
            build: Some(fixed.clone()),
            ..CrashQuery::default()
        })
        .await?;
    assert!(fixed_crashes.is_empty(), "{fixed_crashes:#?}");
    // A second plan is clean: status is not part of the resources' state.
    let (changes, plan) = tf.plan_has_changes()?;
    assert!(!changes, "{}", plan.text());
    Ok(())
}
