//! Machine health and operations: a machine whose agent dies (SIGKILL) or goes silent
//! (SIGSTOP) is marked UNHEALTHY within three heartbeat intervals (the harness runs
//! fleetformd with 1 s heartbeats), its sessions end LOST, and a replacement machine takes
//! its place; an operator's revoke does the same at once and says so, and a reboot loses
//! the sessions and restarts the processes of a machine that stays in service.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fleetform_api::*;
use fleetform_e2e::*;

/// Three heartbeat intervals of the harness's fleetformd, plus one reconcile pass.
const DETECTION: Duration = Duration::from_millis(4_000);

struct Setup {
    server: Fleetformd,
    fleet: Fleet,
    zone: Zone,
}

/// A fixed zone of 2 local machines, 1 process each, all ready.
async fn setup() -> Result<Setup> {
    let server = Fleetformd::start()?;
    let client = server.client();
    let build_dir = example_build_dir(server.dir.path());
    let build = client
        .create_build(&fixtures::build(&build_dir, None))
        .await?;
    let fleet = client
        .create_fleet(&fixtures::fleet("unhealthy", &build.id))
        .await?;
    let zone = client
        .create_zone(&fixtures::zone(&fleet.id, 1, 2).spec())
        .await?;
    until_idle_processes(&client, &zone.id, 2).await?;
    Ok(Setup {
        server,
        fleet,
        zone,
    })
}

/// Places a session and waits until its game server has it.
async fn placed(setup: &Setup) -> Result<Session> {
    let client = setup.server.client();
    let session = client
        .place_session(
            &setup.fleet.id,
            &PlacementRequest {
                zone: setup.zone.spec.name.clone(),
                ..PlacementRequest::default()
            },
        )
        .await?;
    until_on_game_server(&session).await?;
    Ok(session)
}

/// A local machine's agent pid (its driver reference).
fn agent_pid(machine: &Machine) -> Result<i32> {
    Ok(machine
        .driver_ref
        .as_deref()
        .context("local machine has its agent's pid")?
        .parse()?)
}

async fn machine(setup: &Setup, id: &str) -> Result<Machine> {
    setup
        .server
        .client()
        .fleet_machines(&setup.fleet.id)
        .await?
        .machines
        .into_iter()
        .find(|m| m.id == id)
        .context("machine listed")
}

/// Waits for `machine_id` to be UNHEALTHY with `session` LOST; returns how long it took.
async fn until_unhealthy(
    setup: &Setup,
    machine_id: &str,
    session: &Session,
    since: Instant,
) -> Result<Duration> {
    let client = setup.server.client();
    eventually(Duration::from_secs(20), "machine UNHEALTHY", || async {
        let machine = machine(setup, machine_id).await?;
        Ok((machine.status == MachineStatus::Unhealthy).then_some(()))
    })
    .await
    .with_context(|| setup.server.log())?;
    let took = since.elapsed();
    let lost = client.get_session(&session.id).await?;
    assert_eq!(lost.status, SessionStatus::Lost, "{lost:?}");
    let machine = machine(setup, machine_id).await?;
    assert!(machine.terminated_at.is_some(), "{machine:?}");
    Ok(took)
}

/// The zone runs 2 ACTIVE machines again, none of them `old`.
async fn until_replaced(setup: &Setup, old: &str) -> Result<Duration> {
    let started = Instant::now();
    let client = setup.server.client();
    eventually(Duration::from_secs(30), "a replacement ACTIVE", || async {
        let machines = client.fleet_machines(&setup.fleet.id).await?.machines;
        let active: Vec<&Machine> = machines
            .iter()
            .filter(|m| m.status == MachineStatus::Active)
            .collect();
        Ok((active.len() == 2 && active.iter().all(|m| m.id != old)).then_some(()))
    })
    .await?;
    Ok(started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_makes_its_machine_unhealthy_and_replaced() -> Result<()> {
    let setup = setup().await?;
    let session = placed(&setup).await?;
    let victim = machine(&setup, &session.machine_id).await?;
    let pid = agent_pid(&victim)?;
    let killed_at = Instant::now();
    // SAFETY: kill(2) on the agent pid fleetformd recorded for this machine.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let detected = until_unhealthy(&setup, &victim.id, &session, killed_at).await?;
    assert!(detected <= DETECTION, "UNHEALTHY after {detected:?}");
    let replaced = until_replaced(&setup, &victim.id).await?;
    eprintln!("SIGKILL → UNHEALTHY in {detected:?}, replacement ACTIVE {replaced:?} later");

    // The operations view: machines filtered by status, data center, id; bad filters name
    // their parameter.
    let client = setup.server.client();
    let unhealthy = client
        .fleet_machines_where(&setup.fleet.id, &[("status", "UNHEALTHY")])
        .await?
        .machines;
    assert_eq!(unhealthy.len(), 1, "{unhealthy:#?}");
    assert_eq!(unhealthy[0].id, victim.id);
    let active = client
        .fleet_machines_where(
            &setup.fleet.id,
            &[("status", "ACTIVE"), ("data_center", "local-1")],
        )
        .await?
        .machines;
    assert_eq!(active.len(), 2, "{active:#?}");
    let by_id = client
        .fleet_machines_where(&setup.fleet.id, &[("id", &victim.id), ("status", "ACTIVE")])
        .await?
        .machines;
    assert!(by_id.is_empty(), "{by_id:#?}");
    for (key, value) in [("status", "ASLEEP"), ("colour", "red")] {
        let error = client
            .fleet_machines_where(&setup.fleet.id, &[(key, value)])
            .await
            .expect_err("a bad filter is refused");
        assert!(
            error.status().is_some_and(|s| s.is_client_error()),
            "{error:?}"
        );
        assert_eq!(error.field(), Some(key), "{error:?}");
    }
    let events = setup
        .server
        .client()
        .events(&EventQuery {
            machine: Some(victim.id.clone()),
            ..EventQuery::default()
        })
        .await?;
    assert!(
        events.iter().any(|e| e.code == "MACHINE_UNHEALTHY"),
        "{events:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_misses_its_heartbeats_and_is_replaced() -> Result<()> {
    let setup = setup().await?;
    let session = placed(&setup).await?;
    let victim = machine(&setup, &session.machine_id).await?;
    let pid = agent_pid(&victim)?;
    // Stopped, the agent is alive to its driver but sends nothing.
    let stopped_at = Instant::now();
    // SAFETY: kill(2) on the agent pid fleetformd recorded for this machine.
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    let detected = until_unhealthy(&setup, &victim.id, &session, stopped_at).await;
    // SAFETY: as above; let it run again whatever the outcome.
    unsafe {
        libc::kill(pid, libc::SIGCONT);
    }
    let detected = detected?;
    // Three intervals after its last heartbeat, which came up to one interval before the
    // SIGSTOP.
    assert!(
        detected >= Duration::from_secs(2),
        "not before three missed heartbeats: {detected:?}"
    );
    assert!(
        detected <= DETECTION + Duration::from_secs(1),
        "{detected:?}"
    );
    let events = setup
        .server
        .client()
        .events(&EventQuery {
            machine: Some(victim.id.clone()),
            ..EventQuery::default()
        })
        .await?;
    assert!(
        events
            .iter()
            .any(|e| e.code == "MACHINE_UNHEALTHY" && e.message.contains("no heartbeat")),
        "{events:#?}"
    );
    until_replaced(&setup, &victim.id).await?;
    // Woken, the old agent is told it is gone (or was terminated) and exits.
    eventually(
        Duration::from_secs(20),
        "the silent agent exits",
        || async { Ok((!process_alive(pid)).then_some(())) },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_machine_loses_its_sessions_at_once_and_is_replaced() -> Result<()> {
    let setup = setup().await?;
    let client = setup.server.client();
    let session = placed(&setup).await?;
    let revoked = client.revoke_machine(&session.machine_id).await?;
    assert_eq!(revoked.sessions_lost, 1, "{revoked:?}");
    assert_eq!(revoked.machine.status, MachineStatus::Terminating);
    // LOST at once, not when the machine is gone.
    let lost = client.get_session(&session.id).await?;
    assert_eq!(lost.status, SessionStatus::Lost, "{lost:?}");
    let events = client
        .events(&EventQuery {
            machine: Some(session.machine_id.clone()),
            ..EventQuery::default()
        })
        .await?;
    let event = events
        .iter()
        .find(|e| e.code == "MACHINE_REVOKED")
        .with_context(|| format!("{events:#?}"))?;
    assert!(
        event.message.contains("1 sessions LOST"),
        "{}",
        event.message
    );

    until_replaced(&setup, &session.machine_id).await?;
    let machine = eventually(
        Duration::from_secs(30),
        "revoked machine TERMINATED",
        || async {
            let machine = machine(&setup, &session.machine_id).await?;
            Ok((machine.status == MachineStatus::Terminated).then_some(machine))
        },
    )
    .await?;
    assert_eq!(
        machine.termination_reason.as_deref(),
        Some("machine revoked by an operator")
    );
    let again = client
        .revoke_machine(&session.machine_id)
        .await
        .expect_err("an ended machine cannot be revoked");
    assert_eq!(again.status().map(|s| s.as_u16()), Some(409), "{again:?}");
    let unknown = client
        .revoke_machine("mch-nope")
        .await
        .expect_err("unknown machine");
    assert!(unknown.is_not_found(), "{unknown:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebooted_machine_restarts_its_processes_and_keeps_serving() -> Result<()> {
    let setup = setup().await?;
    let client = setup.server.client();
    let session = placed(&setup).await?;
    let before: Vec<Process> =
        live_processes(&client, &setup.fleet.id, &session.machine_id).await?;
    assert_eq!(before.len(), 1, "{before:#?}");
    let old_pid = before[0].pid.context("pid")?;

    let rebooted = client.reboot_machine(&session.machine_id).await?;
    assert_eq!(rebooted.sessions_lost, 1, "{rebooted:?}");
    assert_eq!(
        rebooted.machine.status,
        MachineStatus::Active,
        "it stays in service"
    );
    let lost = client.get_session(&session.id).await?;
    assert_eq!(lost.status, SessionStatus::Lost, "LOST at once: {lost:?}");
    assert_eq!(
        lost.reason.as_deref(),
        Some("machine rebooted by an operator")
    );

    // The same machine runs a fresh process (a new OS process), which takes sessions.
    let fresh = eventually(Duration::from_secs(30), "a fresh READY process", || async {
        let live = live_processes(&client, &setup.fleet.id, &session.machine_id).await?;
        Ok(live
            .into_iter()
            .find(|p| p.status == ProcessStatus::Ready && p.id != before[0].id))
    })
    .await?;
    assert_ne!(fresh.pid, Some(old_pid));
    eventually(
        Duration::from_secs(15),
        "the old game server exits",
        || async { Ok((!process_alive(old_pid as i32)).then_some(())) },
    )
    .await?;
    let machine = machine(&setup, &session.machine_id).await?;
    assert_eq!(machine.status, MachineStatus::Active, "{machine:?}");
    let events = client
        .events(&EventQuery {
            machine: Some(session.machine_id.clone()),
            ..EventQuery::default()
        })
        .await?;
    assert!(
        events
            .iter()
            .any(|e| e.code == "MACHINE_REBOOTED" && e.message.contains("1 sessions LOST")),
        "{events:#?}"
    );

    // An idle machine's processes restart too (in simple mode a process that hosted a
    // session is replaced anyway; one that never did is replaced only by the reboot).
    let idle = client
        .fleet_machines(&setup.fleet.id)
        .await?
        .machines
        .into_iter()
        .find(|m| m.id != session.machine_id && m.status == MachineStatus::Active)
        .context("the other machine")?;
    let idle_before = live_processes(&client, &setup.fleet.id, &idle.id).await?;
    assert_eq!(idle_before.len(), 1, "{idle_before:#?}");
    let rebooted = client.reboot_machine(&idle.id).await?;
    assert_eq!(rebooted.sessions_lost, 0, "{rebooted:?}");
    eventually(
        Duration::from_secs(30),
        "the idle machine's process replaced",
        || async {
            let live = live_processes(&client, &setup.fleet.id, &idle.id).await?;
            Ok((live.len() == 1
                && live[0].id != idle_before[0].id
                && live[0].status == ProcessStatus::Ready)
                .then_some(()))
        },
    )
    .await?;

    let unknown = client
        .reboot_machine("mch-nope")
        .await
        .expect_err("unknown machine");
    assert!(unknown.is_not_found(), "{unknown:?}");
    Ok(())
}

/// The processes of a machine that still run.
async fn live_processes(client: &Client, fleet: &str, machine_id: &str) -> Result<Vec<Process>> {
    Ok(client
        .fleet_processes(fleet)
        .await?
        .processes
        .into_iter()
        .filter(|p| {
            p.machine_id == machine_id
                && !matches!(p.status, ProcessStatus::Exited | ProcessStatus::Crashed)
        })
        .collect())
}
