//! Shipping a new build during play, through real agents and example game servers: a soft
//! update interrupts no session and sends new sessions only to the new build, and the old
//! build's processes go once their sessions end; a forced update moves every process now,
//! its sessions LOST, and says how many.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use fleetform_api::*;
use fleetform_e2e::*;

/// Builds of live processes of the fleet (not exited or crashed).
async fn live_builds(client: &Client, fleet: &str) -> Result<BTreeSet<String>> {
    Ok(client
        .fleet_processes(fleet)
        .await?
        .processes
        .into_iter()
        .filter(|p| !matches!(p.status, ProcessStatus::Exited | ProcessStatus::Crashed))
        .map(|p| p.build_id)
        .collect())
}

async fn build_at(client: &Client, parent: &std::path::Path, version: &str) -> Result<Build> {
    let dir = example_build_dir(&parent.join(version));
    let mut spec = fixtures::build(&dir, None);
    spec.version = Some(version.into());
    Ok(client.create_build(&spec).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_then_forced_build_updates_during_play() -> Result<()> {
    let server = Fleetformd::start()?;
    let client = server.client();
    let builds = server.dir.path().join("builds");
    let v1 = build_at(&client, &builds, "v1").await?;
    let mut spec = fixtures::fleet("updates", &v1.id);
    spec.session_mode = SessionMode::Parallel;
    spec.sessions_per_process = 2;
    let fleet = client.create_fleet(&spec).await?;
    let zone = client
        .create_zone(&fixtures::zone(&fleet.id, 2, 2).spec())
        .await?;
    until_idle_processes(&client, &zone.id, 2).await?;
    let place = |key: &'static str| {
        let client = client.clone();
        let fleet = fleet.id.clone();
        async move {
            client
                .place_session(
                    &fleet,
                    &PlacementRequest {
                        zone: "eu".into(),
                        idempotency_key: Some(key.into()),
                        wait_seconds: Some(20),
                        ..PlacementRequest::default()
                    },
                )
                .await
        }
    };
    let old = place("old").await?;
    until_on_game_server(&old).await?;
    assert_eq!(old.build_id, v1.id);

    // -- soft: v2 ships while `old` plays on v1.
    let v2 = build_at(&client, &builds, "v2").await?;
    spec.build_id = v2.id.clone();
    client.update_fleet(&fleet.id, &spec).await?;
    let fresh = place("fresh").await?;
    assert_eq!(fresh.build_id, v2.id, "new sessions land on the new build");
    until_on_game_server(&fresh).await?;
    let more = place("more").await?;
    assert_eq!(more.build_id, v2.id);
    // The old session was never interrupted: still ACTIVE, still on its game server.
    assert_eq!(
        client.get_session(&old.id).await?.status,
        SessionStatus::Active
    );
    let game = probe_game_server(&old.address, old.port).await?;
    assert!(game.sessions.contains(&old.id), "{game:?}");
    assert!(live_builds(&client, &fleet.id).await?.contains(&v1.id));
    // The zone's status shows the update's progress: processes per build.
    let status = eventually(Duration::from_secs(10), "v2 processes counted", || async {
        let status = client.zone_status(&zone.id).await?;
        Ok((status.processes_by_build.get(&v2.id) >= Some(&1)).then_some(status))
    })
    .await
    .with_context(|| format!("v1 {} v2 {}", v1.id, v2.id))?;
    assert_eq!(
        status.processes_by_build.get(&v1.id),
        Some(&1),
        "{status:?}"
    );
    // The machine of the old session waits for it to end before it is all on v2.
    assert_eq!(
        status.machines.get("WAITING_UPDATE"),
        Some(&1),
        "{status:?}"
    );
    let waiting = client
        .fleet_machines_where(&fleet.id, &[("status", "WAITING_UPDATE")])
        .await?
        .machines;
    assert_eq!(waiting.len(), 1, "{waiting:#?}");
    assert_eq!(waiting[0].id, old.machine_id);
    // Once it ends, no process of v1 remains, and no machine waits.
    client.end_session(&old.id).await?;
    eventually(Duration::from_secs(30), "no v1 process left", || async {
        let builds = live_builds(&client, &fleet.id).await?;
        Ok((builds == BTreeSet::from([v2.id.clone()])).then_some(()))
    })
    .await
    .with_context(|| server.log())?;
    let status = client.zone_status(&zone.id).await?;
    assert_eq!(status.machines.get("WAITING_UPDATE"), None, "{status:?}");
    // The fleet's events tell the update's start and end.
    let update_events = |code: &'static str| {
        let client = client.clone();
        let fleet = fleet.id.clone();
        async move {
            client
                .fleet_events(
                    &fleet,
                    &EventQuery {
                        text: Some(code.into()),
                        ..EventQuery::default()
                    },
                )
                .await
        }
    };
    let started = update_events("BUILD_UPDATE_STARTED").await?;
    assert_eq!(started.len(), 1, "{started:#?}");
    assert!(
        started[0].message.contains(&v2.id) && started[0].message.contains("soft"),
        "{}",
        started[0].message
    );
    let completed = eventually(Duration::from_secs(10), "update complete", || async {
        let events = update_events("BUILD_UPDATE_COMPLETED").await?;
        Ok((!events.is_empty()).then_some(events))
    })
    .await?;
    assert_eq!(completed.len(), 1, "{completed:#?}");
    assert!(
        completed[0].message.contains(&v2.id),
        "{}",
        completed[0].message
    );

    // -- force: v3 moves every process now; the sessions on v2 are LOST and counted.
    let v3 = build_at(&client, &builds, "v3").await?;
    spec.build_id = v3.id.clone();
    spec.update_mode = UpdateMode::Force;
    client.update_fleet(&fleet.id, &spec).await?;
    for session in [&fresh, &more] {
        let lost = eventually(Duration::from_secs(10), "session LOST", || async {
            let s = client.get_session(&session.id).await?;
            Ok((s.status == SessionStatus::Lost).then_some(s))
        })
        .await?;
        assert!(
            lost.reason.as_deref().is_some_and(|r| r.contains("force")),
            "{lost:?}"
        );
    }
    let events = client
        .fleet_events(
            &fleet.id,
            &EventQuery {
                text: Some("BUILD_UPDATE_FORCED".into()),
                ..EventQuery::default()
            },
        )
        .await?;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert!(
        events[0].message.contains("2 sessions"),
        "{}",
        events[0].message
    );
    eventually(Duration::from_secs(20), "every process on v3", || async {
        let builds = live_builds(&client, &fleet.id).await?;
        Ok((builds == BTreeSet::from([v3.id.clone()])).then_some(()))
    })
    .await?;
    let after = place("after").await?;
    assert_eq!(after.build_id, v3.id);
    until_on_game_server(&after).await?;
    Ok(())
}
