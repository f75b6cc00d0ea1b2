//! Placement against a real fleetformd, real agents and real example game servers, set up
//! through the admin API (the Terraform path is covered by `quickstart.rs`).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use fleetform_api::*;
use fleetform_e2e::*;

/// Creates build, fleet and a fixed zone of `machines` local machines with 2 processes each.
async fn setup(server: &Fleetformd, name: &str, machines: u32) -> Result<(Fleet, Zone)> {
    let client = server.client();
    let build_dir = example_build_dir(server.dir.path());
    let build = client
        .create_build(&fixtures::build(&build_dir, None))
        .await?;
    let fleet = client
        .create_fleet(&fixtures::fleet(name, &build.id))
        .await?;
    let zone = client
        .create_zone(&fixtures::zone(&fleet.id, 2, machines * 2).spec())
        .await?;
    Ok((fleet, zone))
}

async fn wait_idle(server: &Fleetformd, zone: &Zone, idle: u32) -> Result<ZoneStatus> {
    let client = server.client();
    eventually(Duration::from_secs(60), "ready processes", || {
        let client = client.clone();
        let id = zone.id.clone();
        async move {
            let status = client.zone_status(&id).await?;
            Ok(
                (status.processes_idle >= idle && status.status == ResourceStatus::Available)
                    .then_some(status),
            )
        }
    })
    .await
}

fn request(zone: &str) -> PlacementRequest {
    PlacementRequest {
        zone: zone.into(),
        ..PlacementRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_ready_process_is_503_with_retry_after_then_concurrent_placements_never_share_a_process(
) -> Result<()> {
    let server = Fleetformd::start()?;
    let (fleet, zone) = setup(&server, "concurrency", 3).await?;
    let client = server.client();

    // Nothing is ready yet: 503 with Retry-After, at once.
    match client.place_session(&fleet.id, &request("eu")).await {
        Err(ClientError::Api {
            status,
            body,
            retry_after_secs,
        }) => {
            assert_eq!(status.as_u16(), 503, "{body:?}");
            assert_eq!(body.error.code, "no_capacity");
            assert!(retry_after_secs.is_some_and(|s| s > 0));
        }
        other => panic!("expected 503, got {other:?}\n{}", server.log()),
    }

    wait_idle(&server, &zone, 6).await?;

    // 40 placements at once for 6 processes: exactly 6 succeed, on 6 distinct processes.
    let attempts = futures::future::join_all((0..40).map(|i| {
        let client = client.clone();
        let fleet = fleet.id.clone();
        async move {
            let mut body = request("eu");
            body.properties = Some([("attempt".to_string(), i.to_string())].into());
            client.place_session(&fleet, &body).await
        }
    }))
    .await;
    let mut placed = Vec::new();
    for attempt in attempts {
        match attempt {
            Ok(session) => placed.push(session),
            Err(error) => assert_eq!(
                error.status().map(|s| s.as_u16()),
                Some(503),
                "unexpected error {error}"
            ),
        }
    }
    assert_eq!(placed.len(), 6, "{placed:#?}");
    let processes: BTreeSet<&str> = placed.iter().map(|s| s.process_id.as_str()).collect();
    assert_eq!(
        processes.len(),
        6,
        "two sessions share a process: {placed:#?}"
    );

    // Each session really reached the process it was placed on.
    for session in &placed {
        let probed = eventually(Duration::from_secs(10), "session on game server", || {
            let session = session.clone();
            async move {
                let game = probe_game_server(&session.address, session.port).await?;
                Ok((game.session_id.as_deref() == Some(session.id.as_str())).then_some(game))
            }
        })
        .await?;
        assert_eq!(probed.process_id, session.process_id);
    }

    // The same idempotency key returns the first answer, not a second session.
    let status = wait_idle(&server, &zone, 0).await?;
    assert_eq!(status.active_sessions, 6);
    for session in &placed {
        client.end_session(&session.id).await?;
    }
    wait_idle(&server, &zone, 1).await?;
    let mut keyed = request("eu");
    keyed.idempotency_key = Some("match-42".into());
    let first = client.place_session(&fleet.id, &keyed).await?;
    let again = client.place_session(&fleet.id, &keyed).await?;
    assert_eq!(first, again);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_seconds_holds_a_placement_until_a_process_is_ready() -> Result<()> {
    let server = Fleetformd::start()?;
    let (fleet, _zone) = setup(&server, "waiting", 1).await?;
    let mut body = request("eu");
    body.wait_seconds = Some(60);
    // Issued before any process is up: answered once one is.
    let session = server.client().place_session(&fleet.id, &body).await?;
    let game = eventually(Duration::from_secs(10), "session on game server", || {
        let session = session.clone();
        async move {
            let game = probe_game_server(&session.address, session.port).await?;
            Ok(game.session_id.is_some().then_some(game))
        }
    })
    .await?;
    assert_eq!(game.session_id.as_deref(), Some(session.id.as_str()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_session_restarts_its_process_in_simple_mode() -> Result<()> {
    let server = Fleetformd::start()?;
    let (fleet, zone) = setup(&server, "restart-after-session", 1).await?;
    let client = server.client();
    wait_idle(&server, &zone, 2).await?;
    let session = client.place_session(&fleet.id, &request("eu")).await?;
    // Ended by the matchmaker at once, possibly before the agent even heard of it: either
    // way the process that took it must be replaced, never left idle and unplaceable.
    let ended = client.end_session(&session.id).await?;
    assert_eq!(ended.status, SessionStatus::Ended);
    // The process that hosted it goes away and a fresh one takes its place.
    let processes = eventually(Duration::from_secs(30), "replacement process", || {
        let client = client.clone();
        let fleet = fleet.id.clone();
        let old = session.process_id.clone();
        async move {
            let list = client.fleet_processes(&fleet).await?.processes;
            let old_gone = list
                .iter()
                .any(|p| p.id == old && p.status == ProcessStatus::Exited);
            let ready = list
                .iter()
                .filter(|p| p.status == ProcessStatus::Ready)
                .count();
            Ok((old_gone && ready == 2).then_some(list))
        }
    })
    .await?;
    assert!(processes.iter().all(|p| p.active_sessions == 0));
    // And the second session, seen by its game server before it ends, goes the same way.
    let second = client.place_session(&fleet.id, &request("eu")).await?;
    eventually(
        Duration::from_secs(10),
        "session on its game server",
        || {
            let session = second.clone();
            async move {
                let game = probe_game_server(&session.address, session.port).await?;
                Ok((game.session_id.as_deref() == Some(session.id.as_str())).then_some(()))
            }
        },
    )
    .await?;
    client.end_session(&second.id).await?;
    eventually(Duration::from_secs(30), "second replacement", || {
        let client = client.clone();
        let fleet = fleet.id.clone();
        let old = second.process_id.clone();
        async move {
            let list = client.fleet_processes(&fleet).await?.processes;
            let old_gone = list
                .iter()
                .any(|p| p.id == old && p.status == ProcessStatus::Exited);
            let ready = list
                .iter()
                .filter(|p| p.status == ProcessStatus::Ready)
                .count();
            Ok((old_gone && ready == 2).then_some(()))
        }
    })
    .await?;
    Ok(())
}

/// Creates a fleet of one process on one machine from `build`.
async fn fleet_from(server: &Fleetformd, name: &str, build: &Build) -> Result<(Fleet, Zone)> {
    let client = server.client();
    let fleet = client
        .create_fleet(&fixtures::fleet(name, &build.id))
        .await?;
    let zone = client
        .create_zone(&fixtures::zone(&fleet.id, 1, 1).spec())
        .await?;
    Ok((fleet, zone))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tar_gz_builds_are_checked_against_their_sha256() -> Result<()> {
    let server = Fleetformd::start()?;
    let client = server.client();
    let build_dir = example_build_dir(server.dir.path());
    let archive = server.dir.path().join("game.tar.gz");
    let tar = std::process::Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg("-C")
        .arg(&build_dir)
        .arg("example-game-server")
        .status()?;
    assert!(tar.success());
    let digest = std::process::Command::new("sha256sum")
        .arg(&archive)
        .output()?;
    let digest = String::from_utf8(digest.stdout)?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let spec = |sha256: &str| fixtures::build(&archive, Some(sha256.into()));
    let good = client.create_build(&spec(&digest)).await?;
    let bad = client.create_build(&spec(&"0".repeat(64))).await?;
    let (_, good_zone) = fleet_from(&server, "good", &good).await?;
    let (_, bad_zone) = fleet_from(&server, "bad", &bad).await?;

    // The right digest: extracted, started, ready.
    wait_idle(&server, &good_zone, 1).await?;
    // The wrong one: the machine reports the mismatch and runs nothing.
    eventually(Duration::from_secs(30), "checksum error reported", || {
        let server = &server;
        let zone = bad_zone.id.clone();
        async move {
            let rows = count_rows(
                server,
                "SELECT COUNT(*) FROM machines WHERE zone_id = ? AND agent_error LIKE '%sha%'",
                &zone,
            )
            .await?;
            Ok((rows > 0).then_some(()))
        }
    })
    .await?;
    let status = client.zone_status(&bad_zone.id).await?;
    assert_eq!(
        status.processes_idle + status.processes_starting,
        0,
        "{status:?}"
    );
    assert_ne!(status.status, ResourceStatus::Available);
    Ok(())
}
