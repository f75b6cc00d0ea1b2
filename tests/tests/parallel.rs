//! Parallel session mode through real agents and example game servers: a process takes up
//! to `sessions_per_process` sessions at once (pack fills one before the next), a freed
//! slot takes the next session, and the process is not restarted between sessions.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Result};
use fleetform_api::*;
use fleetform_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_sessions_share_a_process_and_a_freed_slot_takes_the_next() -> Result<()> {
    let server = Fleetformd::start()?;
    let client = server.client();
    let build_dir = example_build_dir(server.dir.path());
    let build = client
        .create_build(&fixtures::build(&build_dir, None))
        .await?;
    let mut spec = fixtures::fleet("parallel", &build.id);
    spec.session_mode = SessionMode::Parallel;
    spec.sessions_per_process = 4;
    let fleet = client.create_fleet(&spec).await?;
    // One machine of two processes.
    let zone = client
        .create_zone(&fixtures::zone(&fleet.id, 2, 2).spec())
        .await?;
    until_idle_processes(&client, &zone.id, 2).await?;
    let place = |name: &'static str| {
        let client = client.clone();
        let fleet = fleet.id.clone();
        async move {
            client
                .place_session(
                    &fleet,
                    &PlacementRequest {
                        zone: "eu".into(),
                        idempotency_key: Some(name.into()),
                        ..PlacementRequest::default()
                    },
                )
                .await
        }
    };

    // Four at once: all on one process (pack).
    let first_four = futures::future::try_join_all(["a", "b", "c", "d"].map(place)).await?;
    let processes: BTreeSet<&str> = first_four.iter().map(|s| s.process_id.as_str()).collect();
    assert_eq!(processes.len(), 1, "{first_four:#?}");
    let packed = first_four[0].clone();
    let ids: BTreeSet<String> = first_four.iter().map(|s| s.id.clone()).collect();
    eventually(
        Duration::from_secs(10),
        "the game server hosts all four",
        || {
            let packed = packed.clone();
            let ids = ids.clone();
            async move {
                let game = probe_game_server(&packed.address, packed.port).await?;
                let hosted: BTreeSet<String> = game.sessions.into_iter().collect();
                Ok((hosted == ids).then_some(()))
            }
        },
    )
    .await?;
    let pid_before = process_pid(&client, &fleet.id, &packed.process_id).await?;

    // The fifth goes to the other process.
    let fifth = place("e").await?;
    assert_ne!(fifth.process_id, packed.process_id, "{fifth:?}");

    // Ending one frees its slot, and the next session takes it, on the same process.
    client.end_session(&first_four[0].id).await?;
    let sixth = place("f").await?;
    assert_eq!(sixth.process_id, packed.process_id, "{sixth:?}");
    eventually(
        Duration::from_secs(10),
        "the freed slot hosts the sixth",
        || {
            let sixth = sixth.clone();
            let ended = first_four[0].id.clone();
            async move {
                let game = probe_game_server(&sixth.address, sixth.port).await?;
                Ok(
                    (game.sessions.contains(&sixth.id) && !game.sessions.contains(&ended))
                        .then_some(()),
                )
            }
        },
    )
    .await?;
    let pid_after = process_pid(&client, &fleet.id, &packed.process_id).await?;
    assert_eq!(pid_before, pid_after, "not restarted between sessions");
    assert!(process_alive(pid_after as i32));
    Ok(())
}

async fn process_pid(client: &Client, fleet: &str, process_id: &str) -> Result<u32> {
    let processes = client.fleet_processes(fleet).await?.processes;
    let process = processes.iter().find(|p| p.id == process_id);
    ensure!(process.is_some(), "{process_id} not in {processes:#?}");
    process
        .and_then(|p| p.pid)
        .ok_or_else(|| anyhow::anyhow!("{process_id} has no pid"))
}
