//! `examples/stack`, the `title` module's example, through the real `terraform`: one apply
//! stands up a whole title across a `local` and a `sim` zone, a placement at the module's
//! `placement_url` works in every zone, a second plan is empty, and `destroy` leaves
//! nothing behind (no rows, no machine processes).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use fleetform_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_stands_up_a_title_in_every_zone_and_destroys_it() -> Result<()> {
    // The server's embedded default: its `local` machines and `sim` simulated cloud.
    let server = Fleetformd::start()?;
    let build_dir = example_build_dir(server.dir.path());
    let tf = Terraform::new(&server, "")?;
    // The example and the module, laid out as in the repository (`../../modules/title`).
    let root = tf.dir.path().join("repo");
    copy_tree(&repo_root().join("modules"), &root.join("modules"))?;
    copy_tree(
        &repo_root().join("examples/stack"),
        &root.join("examples/stack"),
    )?;
    let stack = root.join("examples/stack");
    std::fs::write(
        stack.join("terraform.tfvars"),
        format!(
            "build_dir = \"{}\"\nendpoint = \"{}\"\n",
            build_dir.display(),
            server.url
        ),
    )?;
    let chdir = format!("-chdir={}", stack.display());
    // The module is installed by `get` (`init` would look the dev-overridden provider up
    // in the registry, which is not reachable here).
    tf.ok(&[&chdir, "get", "-no-color"])?;
    tf.ok(&[
        &chdir,
        "apply",
        "-auto-approve",
        "-no-color",
        "-input=false",
    ])?;

    let output = |name: &str| -> Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &tf.ok(&[&chdir, "output", "-json", name])?.stdout,
        )?)
    };
    let fleet_id = output("fleet_id")?
        .as_str()
        .context("fleet_id")?
        .to_string();
    let zones: BTreeMap<String, String> = serde_json::from_value(output("zone_names")?)?;
    ensure!(
        zones
            == BTreeMap::from([
                ("local".to_string(), "arena-local".to_string()),
                ("sim".to_string(), "arena-sim".to_string()),
            ]),
        "{zones:?}"
    );
    let placement_url = output("placement_url")?
        .as_str()
        .context("placement_url")?
        .to_string();
    ensure!(
        placement_url == format!("{}/v1/fleets/{fleet_id}/sessions", server.url),
        "{placement_url}"
    );

    // A placement in every zone, as a matchmaker makes it: a POST to the placement URL.
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut placed = Vec::new();
    for zone in zones.values() {
        let answer = http
            .post(&placement_url)
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({ "zone": zone, "wait_seconds": 30 }))
            .send()
            .await?;
        let status = answer.status();
        let body: serde_json::Value = answer.json().await?;
        ensure!(
            status.as_u16() == 201,
            "placement in {zone}: {status} {body}"
        );
        ensure!(body["zone"] == zone.as_str(), "placed elsewhere: {body}");
        placed.push(body["id"].as_str().context("session id")?.to_string());
    }
    ensure!(placed.len() == 2, "{placed:?}");

    let (changes, plan) = {
        let output = tf.run(&[
            &chdir,
            "plan",
            "-detailed-exitcode",
            "-no-color",
            "-input=false",
        ])?;
        (output.code, output)
    };
    ensure!(
        changes == 0,
        "the applied stack plans changes:\n{}",
        plan.text()
    );

    let agents = server.agent_pids();
    ensure!(!agents.is_empty(), "no agent runs the local zone");
    tf.ok(&[
        &chdir,
        "destroy",
        "-auto-approve",
        "-no-color",
        "-input=false",
    ])?;
    eventually(
        Duration::from_secs(20),
        "every machine process gone",
        || {
            let agents = agents.clone();
            let left = server.agent_pids();
            async move {
                let alive = agents.iter().any(|pid| process_alive(*pid));
                Ok((!alive && left.is_empty()).then_some(()))
            }
        },
    )
    .await?;
    for (table, column) in [
        ("builds", "name"),
        ("fleets", "id"),
        ("zones", "fleet_id"),
        ("machines", "fleet_id"),
        ("processes", "fleet_id"),
        ("sessions", "fleet_id"),
    ] {
        let key = if table == "builds" {
            "arena"
        } else {
            fleet_id.as_str()
        };
        let rows = count_rows(
            &server,
            &format!("SELECT COUNT(*) FROM {table} WHERE {column} = ?"),
            key,
        )
        .await?;
        ensure!(rows == 0, "{rows} row(s) left in {table}");
    }
    Ok(())
}
