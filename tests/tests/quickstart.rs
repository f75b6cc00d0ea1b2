//! The quickstart through the real `terraform`, step by step like the provider
//! scaffolding's acceptance tests: create → plan is empty → import and verify → drift →
//! update → replace → destroy, with real agents and game servers under it.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use fleetform_api::*;
use fleetform_e2e::*;

const RESOURCES: [&str; 3] = [
    "fleetform_build.game",
    "fleetform_fleet.game",
    "fleetform_zone.local",
];

fn vars(build_dir: &std::path::Path) -> String {
    format!("build_dir=\"{}\"\n", build_dir.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_lifecycle_through_terraform() -> Result<()> {
    let server = Fleetformd::start()?;
    let client = server.client();
    let build_dir = example_build_dir(server.dir.path());
    let main_tf = quickstart_main_tf();
    let tf = Terraform::new(&server, &main_tf)?;
    std::fs::write(tf.dir.path().join("terraform.tfvars"), vars(&build_dir))?;

    // -- create: the apply returns once the zone is AVAILABLE.
    let started = Instant::now();
    tf.apply()?;
    let apply_time = started.elapsed();
    let fleet_id = tf.output("fleet_id")?;
    let zone_id = tf.output("zone_id")?;
    let status = client.zone_status(&zone_id).await?;
    assert_eq!(status.status, ResourceStatus::Available, "{status:?}");
    assert_eq!(status.processes_idle, 2, "{status:?}");
    eprintln!("quickstart apply → AVAILABLE in {apply_time:?}");

    // Each READY process is a real OS process answering on its own port.
    let processes = client.fleet_processes(&fleet_id).await?.processes;
    let ready: Vec<&Process> = processes
        .iter()
        .filter(|p| p.status == ProcessStatus::Ready)
        .collect();
    assert_eq!(ready.len(), 2, "{processes:#?}");
    assert_ne!(ready[0].port, ready[1].port);
    for process in &ready {
        let pid = process.pid.context("process has a pid")? as i32;
        assert!(
            process_alive(pid),
            "process {} (pid {pid}) is not running",
            process.id
        );
        let game = probe_game_server("127.0.0.1", process.port).await?;
        assert_eq!(game.process_id, process.id);
        assert_eq!(game.session_id, None);
    }

    // -- a placement lands on a process that really hosts it.
    let fleet = client.get_fleet(&fleet_id).await?;
    let session = client
        .place_session(
            &fleet.id,
            &PlacementRequest {
                zone: "local".into(),
                ..PlacementRequest::default()
            },
        )
        .await?;
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

    // -- ending it frees the slot: in simple mode its process restarts.
    client.end_session(&session.id).await?;
    eventually(Duration::from_secs(30), "the process restarted", || {
        let client = client.clone();
        let fleet = fleet_id.clone();
        let old = session.process_id.clone();
        let zone = zone_id.clone();
        async move {
            let list = client.fleet_processes(&fleet).await?.processes;
            let exited = list
                .iter()
                .any(|p| p.id == old && p.status == ProcessStatus::Exited);
            let idle = client.zone_status(&zone).await?.processes_idle;
            Ok((exited && idle >= 2).then_some(()))
        }
    })
    .await?;

    // -- a second plan is empty.
    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(!changes, "second plan is not empty:\n{}", plan.text());
    assert!(plan.stdout.contains("No changes"), "{}", plan.stdout);

    // -- `terraform import` of every resource into a fresh state, then an empty plan.
    let ids = [
        client.get_fleet(&fleet_id).await?.build_id,
        fleet_id.clone(),
        zone_id.clone(),
    ];
    let imported = Terraform::new(&server, &main_tf)?;
    std::fs::write(
        imported.dir.path().join("terraform.tfvars"),
        vars(&build_dir),
    )?;
    for (address, id) in RESOURCES.iter().zip(&ids) {
        imported.ok(&["import", "-no-color", "-input=false", address, id])?;
    }
    let (changes, plan) = imported.plan_has_changes()?;
    ensure!(!changes, "plan after import is not empty:\n{}", plan.text());

    // -- and `import {}` blocks do the same.
    let blocks: String = RESOURCES
        .iter()
        .zip(&ids)
        .map(|(address, id)| format!("import {{\n  to = {address}\n  id = \"{id}\"\n}}\n"))
        .collect();
    let with_blocks = Terraform::new(&server, &format!("{main_tf}\n{blocks}"))?;
    std::fs::write(
        with_blocks.dir.path().join("terraform.tfvars"),
        vars(&build_dir),
    )?;
    let plan = with_blocks.ok(&["plan", "-no-color", "-input=false"])?;
    assert!(
        plan.stdout
            .contains("3 to import, 0 to add, 0 to change, 0 to destroy"),
        "{}",
        plan.stdout
    );

    // -- drift: a change made behind Terraform's back shows in the next plan.
    let mut spec = client.get_fleet(&fleet_id).await?.spec();
    spec.description = Some("changed by hand".into());
    client.update_fleet(&fleet_id, &spec).await?;
    let (changes, plan) = tf.plan_has_changes()?;
    assert!(changes, "{}", plan.stdout);
    assert!(plan.stdout.contains("changed by hand"), "{}", plan.stdout);
    assert!(plan.stdout.contains("1 to change"), "{}", plan.stdout);
    // ... and so does a resource deleted behind its back: it is planned for re-creation.
    client.delete_zone(&zone_id).await?;
    eventually(Duration::from_secs(30), "zone deleted", || {
        let client = client.clone();
        let zone = zone_id.clone();
        async move {
            Ok(client
                .get_zone(&zone)
                .await
                .err()
                .filter(|e| e.is_not_found()))
        }
    })
    .await?;
    let (_, plan) = tf.plan_has_changes()?;
    assert!(
        plan.stdout.contains("fleetform_zone.local will be created"),
        "{}",
        plan.stdout
    );
    tf.apply()?;
    let zone_id = tf.output("zone_id")?;
    assert_eq!(
        client.zone_status(&zone_id).await?.status,
        ResourceStatus::Available
    );

    // -- changing `description` updates in place.
    tf.write_main(&main_tf.replace(
        "description       = \"fleetform quickstart fleet\"",
        "description       = \"a new description\"",
    ))?;
    let (changes, plan) = tf.plan_has_changes()?;
    assert!(changes);
    assert!(plan.stdout.contains("updated in-place"), "{}", plan.stdout);
    assert!(
        plan.stdout.contains("0 to add, 1 to change, 0 to destroy"),
        "{}",
        plan.stdout
    );
    tf.apply()?;
    let fleet = client.get_fleet(&fleet_id).await?;
    assert_eq!(fleet.description.as_deref(), Some("a new description"));

    // -- changing `name` replaces the fleet (and the zone that belongs to it).
    let renamed = main_tf
        .replace(
            "description       = \"fleetform quickstart fleet\"",
            "description       = \"a new description\"",
        )
        .replace(
            "name              = \"quickstart\"",
            "name              = \"quickstart-2\"",
        );
    tf.write_main(&renamed)?;
    let (_, plan) = tf.plan_has_changes()?;
    assert!(plan.stdout.contains("must be replaced"), "{}", plan.stdout);
    assert!(
        plan.stdout.contains("forces replacement"),
        "{}",
        plan.stdout
    );
    tf.apply()?;
    let new_fleet_id = tf.output("fleet_id")?;
    assert_ne!(new_fleet_id, fleet_id);
    assert!(client
        .get_fleet(&fleet_id)
        .await
        .unwrap_err()
        .is_not_found());
    assert_eq!(client.get_fleet(&new_fleet_id).await?.name, "quickstart-2");

    // -- destroy, with a session still running (the quickstart sets force_destroy): no
    // agent or game server left, and no rows for either fleet.
    client
        .place_session(
            &new_fleet_id,
            &PlacementRequest {
                zone: "local".into(),
                wait_seconds: Some(30),
                ..PlacementRequest::default()
            },
        )
        .await?;
    let agents: Vec<i32> = server.agent_pids();
    assert!(!agents.is_empty());
    let game_servers: Vec<i32> = pids_named("example-game-server")
        .into_iter()
        .filter(|pid| parent_pid(*pid).is_some_and(|parent| agents.contains(&parent)))
        .collect();
    assert!(!game_servers.is_empty());
    tf.ok(&["destroy", "-auto-approve", "-no-color", "-input=false"])?;
    eventually(
        Duration::from_secs(20),
        "every machine process gone",
        || {
            let agents = agents.clone();
            let games = game_servers.clone();
            let left = server.agent_pids();
            async move {
                let alive: Vec<i32> = agents
                    .iter()
                    .chain(&games)
                    .copied()
                    .filter(|pid| process_alive(*pid))
                    .collect();
                Ok((alive.is_empty() && left.is_empty()).then_some(()))
            }
        },
    )
    .await?;
    for fleet in [&fleet_id, &new_fleet_id] {
        for table in ["fleets", "zones", "machines", "processes", "sessions"] {
            let column = if table == "fleets" { "id" } else { "fleet_id" };
            let rows = count_rows(
                &server,
                &format!("SELECT COUNT(*) FROM {table} WHERE {column} = ?"),
                fleet,
            )
            .await?;
            assert_eq!(rows, 0, "{rows} row(s) left in {table} for {fleet}");
        }
    }
    Ok(())
}
