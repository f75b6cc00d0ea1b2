//! `fleetform_locations` through the real `terraform` against the real fleetformd: the data
//! source lists the server's `[[location]]` tables (name, driver, machine types) by name,
//! the next plan is empty, and a location added to the server's config shows up at the
//! next plan and apply (the data source reads the server, not the state). The registry
//! example gives what it says against the same server.

use anyhow::{ensure, Context, Result};
use fleetform_e2e::*;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[[location]]
name = "local"
driver = "local"

[[location]]
name = "fra-metal"
driver = "bare_metal"
"#;

/// [`CONFIG`] with a simulated cloud location added.
const CONFIG_WITH_SIM: &str = r#"
[[location]]
name = "local"
driver = "local"

[[location]]
name = "fra-metal"
driver = "bare_metal"

[[location]]
name = "sim-eu"
driver = "sim"
"#;

const MAIN_TF: &str = r#"terraform {
  required_providers {
    fleetform = { source = "fleetform/fleetform" }
  }
}

data "fleetform_locations" "all" {}

output "id" {
  value = data.fleetform_locations.all.id
}

output "names" {
  value = data.fleetform_locations.all.names
}

output "locations" {
  value = data.fleetform_locations.all.locations
}

output "drivers" {
  value = { for l in data.fleetform_locations.all.locations : l.name => l.driver }
}

output "machine_types" {
  value = { for l in data.fleetform_locations.all.locations : l.name => l.machine_types }
}
"#;

/// Every output's value, from `terraform output -json`.
fn outputs(tf: &Terraform) -> Result<Value> {
    let output = tf.ok(&["output", "-json"])?;
    let all: Value = serde_json::from_str(&output.stdout)
        .with_context(|| format!("terraform output -json: {}", output.stdout))?;
    let object = all.as_object().context("outputs are an object")?;
    Ok(Value::Object(
        object
            .iter()
            .map(|(name, output)| (name.clone(), output["value"].clone()))
            .collect(),
    ))
}

#[test]
fn locations_data_source_lists_what_the_server_offers() -> Result<()> {
    let mut server = Fleetformd::start_with_config(CONFIG)?;
    let tf = Terraform::new(&server, MAIN_TF)?;

    tf.apply()?;
    let expected = json!({
        "id": "locations",
        "names": ["fra-metal", "local"],
        "locations": [
            { "name": "fra-metal", "driver": "bare_metal", "machine_types": ["bare_metal"] },
            { "name": "local", "driver": "local", "machine_types": ["vm"] },
        ],
        "drivers": { "fra-metal": "bare_metal", "local": "local" },
        "machine_types": { "fra-metal": ["bare_metal"], "local": ["vm"] },
    });
    let got = outputs(&tf)?;
    ensure!(
        got == expected,
        "outputs after apply:\n{got:#}\nexpected:\n{expected:#}"
    );
    // The single-output path of the harness agrees.
    ensure!(tf.output("id")? == "locations");

    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(!changes, "second plan is not empty:\n{}", plan.text());

    // The server now offers one more location: the next plan reads it.
    std::fs::write(server.dir.path().join("fleetformd.toml"), CONFIG_WITH_SIM)
        .context("rewrite fleetformd.toml")?;
    server.restart()?;
    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(
        changes && plan.stdout.contains("sim-eu"),
        "the plan after a location was added shows no change to the outputs:\n{}",
        plan.text()
    );
    tf.apply()?;
    let got = outputs(&tf)?;
    ensure!(
        got["names"] == json!(["fra-metal", "local", "sim-eu"]),
        "names after the new location: {got:#}"
    );
    ensure!(
        got["locations"][2]
            == json!({ "name": "sim-eu", "driver": "sim", "machine_types": ["vm"] }),
        "the new location: {got:#}"
    );
    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(
        !changes,
        "plan after the second apply is not empty:\n{}",
        plan.text()
    );
    Ok(())
}

/// The registry example (`examples/data-sources/fleetform_locations/data-source.tf`) gives
/// what it says against the real server.
#[test]
fn the_registry_example_reads_the_real_server() -> Result<()> {
    let server = Fleetformd::start_with_config(CONFIG)?;
    let example = std::fs::read_to_string(
        repo_root().join("examples/data-sources/fleetform_locations/data-source.tf"),
    )
    .context("read the example")?;
    // The registry snippet leaves the provider's source to the provider page's example.
    let main_tf = format!(
        "terraform {{\n  required_providers {{\n    fleetform = {{ source = \
         \"fleetform/fleetform\" }}\n  }}\n}}\n\n{example}"
    );
    let tf = Terraform::new(&server, &main_tf)?;
    tf.apply()?;
    let got = outputs(&tf)?;
    let expected = json!({
        "location_names": ["fra-metal", "local"],
        "bare_metal_locations": ["fra-metal"],
    });
    ensure!(
        got == expected,
        "outputs:\n{got:#}\nexpected:\n{expected:#}"
    );
    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(!changes, "second plan is not empty:\n{}", plan.text());
    Ok(())
}
