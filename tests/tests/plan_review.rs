//! Plans a reviewer can trust: inserting, removing or changing one data center or one
//! buffer rule shows exactly that change in `terraform plan` (data centers are keyed by
//! name, buffer rules are a set); `terraform show -json` of a plan leaves unknown only what
//! cannot be known at plan; and a state from schema version 0 (data centers a list) is
//! upgraded without a change.

use anyhow::{ensure, Context, Result};
use fleetform_e2e::*;
use serde_json::Value as Json;

const PROVIDER: &str = r#"terraform {
  required_providers {
    fleetform = { source = "fleetform/fleetform" }
  }
}

resource "fleetform_build" "b" {
  name   = "arena"
  source = "file:///opt/builds/arena"
}

resource "fleetform_fleet" "f" {
  name        = "arena"
  build_id    = fleetform_build.b.id
  launch_path = "bin/arena"
}
"#;

fn data_center(name: &str, priority: u32) -> String {
    format!(
        r#"
  data_center {{
    name                 = "{name}"
    location             = "local"
    priority             = {priority}
    max_server_processes = 2
    machine_model {{
      instance_type         = "local"
      processes_per_machine = 1
    }}
  }}
"#
    )
}

fn rule(min: u32, servers: u32) -> String {
    format!(
        "\n  buffer_rule {{\n    min_active_sessions = {min}\n    available_servers   = {servers}\n  }}\n"
    )
}

/// The configuration with the zone's blocks in the order given.
fn main_tf(blocks: &[String]) -> String {
    format!(
        r#"{PROVIDER}
resource "fleetform_zone" "z" {{
  fleet_id                 = fleetform_fleet.f.id
  name                     = "eu"
  initial_server_processes = 1
  wait_for_capacity        = false
{}
}}
"#,
        blocks.concat()
    )
}

/// The lines of a plan that mark a change (`+`, `-`, `~`, `-/+`), trimmed.
fn change_lines(plan: &str) -> Vec<String> {
    plan.lines()
        .map(str::trim)
        .filter(|line| {
            ["+ ", "- ", "~ ", "-/+ "]
                .iter()
                .any(|marker| line.starts_with(marker))
        })
        .map(str::to_string)
        .collect()
}

/// Plans `blocks` against the applied base and checks the change lines.
fn review(
    tf: &Terraform,
    case: &str,
    blocks: &[String],
    must: &[&str],
    only_blocks: &[&str],
) -> Result<()> {
    tf.write_main(&main_tf(blocks))?;
    let plan = tf.ok(&["plan", "-no-color", "-input=false"])?.stdout;
    ensure!(
        plan.contains("Plan: 0 to add, 1 to change, 0 to destroy."),
        "{case}: not one in-place update\n{plan}"
    );
    for line in must {
        ensure!(
            plan.contains(line),
            "{case}: the plan lacks {line:?}\n{plan}"
        );
    }
    // The block-level change lines are exactly the expected ones: nothing else of the zone
    // (no other data center, no rename, no other rule) moves.
    let blocks_changed: Vec<String> = change_lines(&plan)
        .into_iter()
        .filter(|line| line.contains("data_center") || line.contains("buffer_rule"))
        .collect();
    ensure!(
        blocks_changed == only_blocks,
        "{case}: changed blocks {blocks_changed:?}, expected {only_blocks:?}\n{plan}"
    );
    Ok(())
}

#[test]
fn one_changed_data_center_or_rule_is_all_the_plan_shows() -> Result<()> {
    let server = Fleetformd::start()?;
    let base = [
        data_center("b", 0),
        data_center("d", 0),
        rule(0, 1),
        rule(50, 2),
    ];
    let tf = Terraform::new(&server, &main_tf(&base))?;
    tf.apply()?;
    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(!changes, "the base plans changes:\n{}", plan.text());

    let (b, d) = (data_center("b", 0), data_center("d", 0));
    let (r0, r50) = (rule(0, 1), rule(50, 2));
    review(
        &tf,
        "a data center inserted before the others",
        &[
            data_center("a", 0),
            b.clone(),
            d.clone(),
            r0.clone(),
            r50.clone(),
        ],
        &["+ name                 = \"a\""],
        &["+ data_center {"],
    )?;
    review(
        &tf,
        "one data center's priority",
        &[b.clone(), data_center("d", 1), r0.clone(), r50.clone()],
        &[
            "+ priority             = 1",
            "- priority             = 0 -> null",
        ],
        &["- data_center {", "+ data_center {"],
    )?;
    review(
        &tf,
        "a data center removed",
        &[d.clone(), r0.clone(), r50.clone()],
        &["- name                 = \"b\" -> null"],
        &["- data_center {"],
    )?;
    // The blocks in another order are no change at all.
    tf.write_main(&main_tf(&[r50.clone(), d.clone(), r0.clone(), b.clone()]))?;
    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(!changes, "reordering plans a change:\n{}", plan.text());
    review(
        &tf,
        "a buffer rule added",
        &[b.clone(), d.clone(), r0.clone(), r50.clone(), rule(100, 4)],
        &["+ min_active_sessions = 100"],
        &["+ buffer_rule {"],
    )?;
    review(
        &tf,
        "a buffer rule removed",
        &[b.clone(), d.clone(), r0.clone()],
        &["- min_active_sessions = 50 -> null"],
        &["- buffer_rule {"],
    )?;
    review(
        &tf,
        "one buffer rule's amount",
        &[b.clone(), d.clone(), r0.clone(), rule(50, 3)],
        &[
            "+ available_servers   = 3",
            "- available_servers   = 2 -> null",
        ],
        &["- buffer_rule {", "+ buffer_rule {"],
    )?;

    // Applied, a change plans clean after.
    tf.write_main(&main_tf(&[data_center("a", 0), b, d, r0, r50]))?;
    tf.apply()?;
    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(
        !changes,
        "the applied insert plans changes:\n{}",
        plan.text()
    );
    tf.ok(&["destroy", "-auto-approve", "-no-color", "-input=false"])?;
    Ok(())
}

/// The paths under `unknown` (a plan's `after_unknown`) that are `true`.
fn unknown_paths(prefix: &str, unknown: &Json, out: &mut Vec<String>) {
    match unknown {
        Json::Bool(true) => out.push(prefix.to_string()),
        Json::Object(fields) => {
            for (name, value) in fields {
                let path = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                unknown_paths(&path, value, out);
            }
        }
        Json::Array(items) => {
            for (index, value) in items.iter().enumerate() {
                unknown_paths(&format!("{prefix}[{index}]"), value, out);
            }
        }
        _ => {}
    }
}

#[test]
fn a_plan_in_json_leaves_unknown_only_what_apply_decides() -> Result<()> {
    let server = Fleetformd::start_with_config(
        "[[location]]\nname = \"local\"\ndriver = \"local\"\n\n[[location]]\nname = \"fra-metal\"\ndriver = \"bare_metal\"\n",
    )?;
    let main = format!(
        "{}\nresource \"fleetform_bare_metal_machine\" \"m\" {{\n  name     = \"fra-bm-01\"\n  location = \"fra-metal\"\n  address  = \"203.0.113.10\"\n}}\n",
        main_tf(&[data_center("a", 0), rule(0, 1)])
    );
    let tf = Terraform::new(&server, &main)?;
    tf.ok(&["plan", "-out=plan.out", "-no-color", "-input=false"])?;
    let shown: Json = serde_json::from_str(&tf.ok(&["show", "-json", "plan.out"])?.stdout)?;
    let changes = shown["resource_changes"]
        .as_array()
        .context("resource_changes")?;
    let mut found = std::collections::BTreeMap::new();
    for change in changes {
        let mut paths = Vec::new();
        unknown_paths("", &change["change"]["after_unknown"], &mut paths);
        found.insert(change["address"].as_str().unwrap().to_string(), paths);
    }
    let expected: std::collections::BTreeMap<String, Vec<String>> = [
        ("fleetform_build.b", vec!["created_at", "id"]),
        // The build's id: not known until the build exists.
        ("fleetform_fleet.f", vec!["build_id", "id"]),
        ("fleetform_zone.z", vec!["fleet_id", "id"]),
        (
            "fleetform_bare_metal_machine.m",
            vec!["agent_token", "created_at", "id"],
        ),
    ]
    .into_iter()
    .map(|(address, paths)| {
        (
            address.to_string(),
            paths.into_iter().map(String::from).collect(),
        )
    })
    .collect();
    ensure!(found == expected, "unknown at plan: {found:#?}");
    // Defaults are planned values, there for a policy to check.
    let zone = changes
        .iter()
        .find(|change| change["address"] == "fleetform_zone.z")
        .unwrap();
    let after = &zone["change"]["after"];
    ensure!(
        after["placement_strategy"] == "pack" && after["data_center"][0]["machine_type"] == "vm",
        "defaults are not in the plan: {after}"
    );
    Ok(())
}

#[test]
fn a_version_0_zone_state_upgrades_without_a_change() -> Result<()> {
    let server = Fleetformd::start()?;
    let tf = Terraform::new(
        &server,
        &main_tf(&[data_center("b", 0), data_center("a", 1), rule(0, 1)]),
    )?;
    tf.apply()?;
    // Rewrite the zone's state as version 0 of the provider wrote it: the same values, its
    // lists in the configuration's order.
    let path = tf.dir.path().join("terraform.tfstate");
    let mut state: Json = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let zone = state["resources"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|resource| resource["type"] == "fleetform_zone")
        .context("the zone in the state")?;
    let instance = &mut zone["instances"][0];
    instance["schema_version"] = Json::from(0);
    let dcs = instance["attributes"]["data_center"]
        .as_array_mut()
        .context("data centers")?;
    ensure!(dcs.len() == 2, "{dcs:?}");
    dcs.sort_by_key(|dc| std::cmp::Reverse(dc["name"].as_str().map(str::to_string)));
    std::fs::write(&path, serde_json::to_string_pretty(&state)?)?;

    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(
        !changes,
        "the upgraded state plans changes:\n{}",
        plan.text()
    );
    tf.ok(&[
        "apply",
        "-refresh-only",
        "-auto-approve",
        "-no-color",
        "-input=false",
    ])?;
    let state: Json = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let zone = state["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|resource| resource["type"] == "fleetform_zone")
        .unwrap();
    ensure!(
        zone["instances"][0]["schema_version"] == 1
            && zone["instances"][0]["attributes"]["data_center"][0]["name"] == "a"
            && zone["instances"][0]["attributes"]["data_center"][0]["priority"] == 1,
        "the state after a refresh: {zone}"
    );
    Ok(())
}
