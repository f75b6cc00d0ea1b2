//! kill -9 of fleetformd while sessions are active loses nothing and starts nothing twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use fleetform_api::*;
use fleetform_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_active_sessions_keeps_sessions_and_processes() -> Result<()> {
    let mut server = Fleetformd::start()?;
    let client = server.client();
    let build_dir = example_build_dir(server.dir.path());
    let build = client
        .create_build(&fixtures::build(&build_dir, None))
        .await?;
    let fleet = client
        .create_fleet(&fixtures::fleet("restart", &build.id))
        .await?;
    let zone = client
        .create_zone(&fixtures::zone(&fleet.id, 2, 4).auto(4, 1).spec())
        .await?;
    eventually(Duration::from_secs(60), "4 ready processes", || {
        let client = client.clone();
        let id = zone.id.clone();
        async move {
            let status = client.zone_status(&id).await?;
            Ok((status.processes_idle == 4).then_some(()))
        }
    })
    .await?;
    let request = PlacementRequest {
        zone: "eu".into(),
        ..PlacementRequest::default()
    };
    let first = client.place_session(&fleet.id, &request).await?;
    let second = client.place_session(&fleet.id, &request).await?;
    for session in [&first, &second] {
        eventually(
            Duration::from_secs(10),
            "session reaches its game server",
            || {
                let session = session.clone();
                async move {
                    let game = probe_game_server(&session.address, session.port).await?;
                    Ok((game.session_id.as_deref() == Some(session.id.as_str())).then_some(()))
                }
            },
        )
        .await?;
    }
    let processes_before = live_processes(&client, &fleet.id).await?;
    let agents_before = sorted(server.agent_pids());
    let rows_before = count_rows(
        &server,
        "SELECT COUNT(*) FROM processes WHERE fleet_id = ?",
        &fleet.id,
    )
    .await?;
    assert_eq!(processes_before.len(), 4);
    assert_eq!(agents_before.len(), 2);

    let killed_at_ms = now_ms();
    server.kill9();
    // While the control plane is down the machines and games go on.
    for session in [&first, &second] {
        let game = probe_game_server(&session.address, session.port).await?;
        assert_eq!(game.session_id.as_deref(), Some(session.id.as_str()));
    }
    server.restart()?;
    let client = server.client();
    let restarted_at = Instant::now();

    // Agents re-sync with the new server (two heartbeats), and nothing else happens.
    eventually(Duration::from_secs(30), "agents heard again", || {
        let client = client.clone();
        let fleet = fleet.id.clone();
        async move {
            let machines = client.fleet_machines(&fleet).await?.machines;
            let fresh = machines.iter().all(|m| {
                m.last_heartbeat_at
                    .as_deref()
                    .and_then(time_ms)
                    .is_some_and(|t| t > killed_at_ms)
            });
            Ok(fresh.then_some(()))
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(restarted_at.elapsed())).await;

    for session in [&first, &second] {
        let after = client.get_session(&session.id).await?;
        assert_eq!(after.status, SessionStatus::Active, "{after:?}");
        assert_eq!(after.process_id, session.process_id);
        let game = probe_game_server(&session.address, session.port).await?;
        assert_eq!(game.session_id.as_deref(), Some(session.id.as_str()));
    }
    let processes_after = live_processes(&client, &fleet.id).await?;
    assert_eq!(
        processes_before, processes_after,
        "the same processes, with the same pids, must still run"
    );
    assert_eq!(
        sorted(server.agent_pids()),
        agents_before,
        "no machine relaunched"
    );
    let rows_after = count_rows(
        &server,
        "SELECT COUNT(*) FROM processes WHERE fleet_id = ?",
        &fleet.id,
    )
    .await?;
    assert_eq!(rows_before, rows_after, "no process was started again");
    // And the restarted server places on the remaining capacity.
    let third = client.place_session(&fleet.id, &request).await?;
    assert!(third.process_id != first.process_id && third.process_id != second.process_id);
    Ok(())
}

fn sorted(mut pids: Vec<i32>) -> Vec<i32> {
    pids.sort_unstable();
    pids
}

/// Live process id → (pid, port).
async fn live_processes(
    client: &Client,
    fleet: &str,
) -> Result<BTreeMap<String, (Option<u32>, u16)>> {
    Ok(client
        .fleet_processes(fleet)
        .await?
        .processes
        .into_iter()
        .filter(|p| !matches!(p.status, ProcessStatus::Exited | ProcessStatus::Crashed))
        .map(|p| (p.id, (p.pid, p.port)))
        .collect())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Milliseconds of an RFC 3339 timestamp.
fn time_ms(text: &str) -> Option<i64> {
    let instant =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some((instant.unix_timestamp_nanos() / 1_000_000) as i64)
}
