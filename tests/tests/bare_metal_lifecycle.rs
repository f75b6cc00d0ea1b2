//! `fleetform_bare_metal_machine` through the real `terraform` against the real fleetformd,
//! acceptance-style: create → the next plan is empty (the agent token in the state, the live
//! figures not, even while an agent heartbeats) → `labels = {}` is no change → update in
//! place → remove the optional attributes → a new location replaces the machine (new id,
//! new token, the old one revoked) → `state rm` + `import` → drift made through the API →
//! deleted through the API → destroy leaves the pool empty.
//!
//! Destroy refused while the machine hosts sessions is `bare_metal.rs`'s (with a real
//! session on it).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use fleetform_api::*;
use fleetform_e2e::*;
use serde_json::Value;

const CONFIG: &str = r#"
[[location]]
name = "local"
driver = "local"

[[location]]
name = "fra-metal"
driver = "bare_metal"

[[location]]
name = "ams-metal"
driver = "bare_metal"
"#;

/// The resource's name in main.tf (`fleetform_bare_metal_machine.m`).
const RESOURCE_NAME: &str = "m";

/// The required attributes only: no labels, no sizes.
const BASE: &str = r#"  name     = "fra-bm-01"
  location = "fra-metal"
  address  = "203.0.113.10""#;

/// Every attribute but the location changed from [`BASE`].
const UPDATED: &str = r#"  name      = "fra-bm-01b"
  location  = "fra-metal"
  address   = "bm-01.fra.example.com"
  cores     = 32
  memory_gb = 128
  labels = {
    rack = "r12"
  }"#;

/// main.tf: one machine with `attributes`.
fn machine_tf(attributes: &str) -> String {
    format!(
        r#"terraform {{
  required_providers {{
    fleetform = {{ source = "fleetform/fleetform" }}
  }}
}}

resource "fleetform_bare_metal_machine" "{RESOURCE_NAME}" {{
{attributes}
}}
"#
    )
}

/// The machine's attributes in the working directory's state, and the raw state.
fn machine_state(tf: &Terraform) -> Result<(serde_json::Map<String, Value>, String)> {
    let raw = std::fs::read_to_string(tf.dir.path().join("terraform.tfstate"))
        .context("read terraform.tfstate")?;
    let state: Value = serde_json::from_str(&raw)?;
    let resources = state["resources"].as_array().context("resources")?;
    ensure!(resources.len() == 1, "one resource in the state: {raw}");
    let resource = &resources[0];
    ensure!(resource["type"] == "fleetform_bare_metal_machine", "{raw}");
    let instances = resource["instances"].as_array().context("instances")?;
    ensure!(instances.len() == 1, "one instance in the state: {raw}");
    let attributes = instances[0]["attributes"]
        .as_object()
        .context("attributes")?
        .clone();
    Ok((attributes, raw))
}

/// The state's `id` and `agent_token`, after checking the live figures stayed out of it.
fn id_and_token(tf: &Terraform) -> Result<(String, String)> {
    let (attributes, raw) = machine_state(tf)?;
    for live in ["machine_id", "zone_id", "last_heartbeat_at"] {
        ensure!(
            !attributes.contains_key(live) && !raw.contains(live),
            "{live} is in the state: {raw}"
        );
    }
    let text = |name: &str| {
        attributes
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .with_context(|| format!("{name} in the state: {raw}"))
    };
    Ok((text("id")?, text("agent_token")?))
}

/// The plan must be empty.
fn assert_clean(tf: &Terraform, after: &str) -> Result<()> {
    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(
        !changes,
        "plan after {after} is not empty:\n{}",
        plan.text()
    );
    ensure!(plan.stdout.contains("No changes"), "{}", plan.stdout);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_with_clean_plans_import_and_drift() -> Result<()> {
    let server = Fleetformd::start_with_config(CONFIG)?;
    let client = server.client();
    let resource = format!("fleetform_bare_metal_machine.{RESOURCE_NAME}");

    // -- create with only the required attributes; the token is planned as sensitive.
    let tf = Terraform::new(&server, &machine_tf(BASE))?;
    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(changes, "{}", plan.text());
    ensure!(
        plan.stdout.contains("agent_token = (sensitive value)"),
        "{}",
        plan.stdout
    );
    tf.apply()?;
    let (id, token) = id_and_token(&tf)?;
    let machine = client.get_bare_metal_machine(&id).await?;
    assert_eq!(
        machine.agent_token, token,
        "the state holds the agent token"
    );
    assert!(token.starts_with("fft_"), "{token}");
    assert_eq!(machine.spec(), spec("fra-metal"));
    assert_clean(&tf, "create")?;
    let shown = tf.ok(&["state", "show", "-no-color", &resource])?;
    assert!(!shown.stdout.contains(&token), "{}", shown.stdout);
    assert!(
        shown.stdout.contains("agent_token") && shown.stdout.contains("(sensitive value)"),
        "{}",
        shown.stdout
    );

    // -- an agent heartbeating with the token changes the live figures; the plan stays empty.
    let mut agent = OperatorAgent::start(&server, "fra-bm-01", &token)?;
    let first_beat = eventually(Duration::from_secs(20), "a first heartbeat", || async {
        Ok(client.get_bare_metal_machine(&id).await?.last_heartbeat_at)
    })
    .await
    .with_context(|| agent.log())?;
    assert_clean(&tf, "a heartbeat")?;
    eventually(Duration::from_secs(20), "a newer heartbeat", || async {
        let beat = client.get_bare_metal_machine(&id).await?.last_heartbeat_at;
        Ok(beat.filter(|beat| *beat != first_beat).map(|_| ()))
    })
    .await
    .with_context(|| agent.log())?;
    assert_clean(&tf, "another heartbeat")?;
    id_and_token(&tf)?;

    // -- an explicit empty map is the same as no labels.
    tf.write_main(&machine_tf(&format!("{BASE}\n  labels = {{}}")))?;
    assert_clean(&tf, "writing `labels = {}`")?;

    // -- everything but the location updates in place; the id and the token stay.
    tf.write_main(&machine_tf(UPDATED))?;
    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(changes, "{}", plan.text());
    assert!(
        plan.stdout.contains("0 to add, 1 to change, 0 to destroy"),
        "{}",
        plan.stdout
    );
    assert!(
        !plan.stdout.contains("forces replacement"),
        "{}",
        plan.stdout
    );
    tf.apply()?;
    assert_clean(&tf, "update")?;
    assert_eq!(id_and_token(&tf)?, (id.clone(), token.clone()));
    let machine = client.get_bare_metal_machine(&id).await?;
    assert_eq!(machine.agent_token, token);
    assert_eq!(
        machine.spec(),
        BareMetalMachineSpec {
            name: "fra-bm-01b".into(),
            location: "fra-metal".into(),
            address: "bm-01.fra.example.com".into(),
            cores: Some(32),
            memory_gb: Some(128),
            labels: [("rack".to_string(), "r12".to_string())].into(),
        }
    );
    assert!(agent.running(), "the token still works: {}", agent.log());

    // -- dropping the optional attributes clears them on the server.
    tf.write_main(&machine_tf(BASE))?;
    tf.apply()?;
    assert_clean(&tf, "removing the optional attributes")?;
    assert_eq!(id_and_token(&tf)?, (id.clone(), token.clone()));
    assert_eq!(
        client.get_bare_metal_machine(&id).await?.spec(),
        spec("fra-metal")
    );

    // -- a new location is another machine: replaced, with a new id and a new token; the
    // old token is revoked, so its agent hears 401 and exits.
    let in_ams = BASE.replace("fra-metal", "ams-metal");
    tf.write_main(&machine_tf(&in_ams))?;
    let (_, plan) = tf.plan_has_changes()?;
    assert!(
        plan.stdout.contains("forces replacement"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("1 to add, 0 to change, 1 to destroy"),
        "{}",
        plan.stdout
    );
    tf.apply()?;
    assert_clean(&tf, "replacement")?;
    let (replaced_id, replaced_token) = id_and_token(&tf)?;
    assert_ne!(replaced_id, id);
    assert_ne!(replaced_token, token);
    assert!(client
        .get_bare_metal_machine(&id)
        .await
        .unwrap_err()
        .is_not_found());
    let machine = client.get_bare_metal_machine(&replaced_id).await?;
    assert_eq!(machine.agent_token, replaced_token);
    assert_eq!(machine.spec(), spec("ams-metal"));
    eventually(
        Duration::from_secs(20),
        "the old token's agent exits",
        || {
            let exited = !agent.running();
            async move { Ok(exited.then_some(())) }
        },
    )
    .await
    .with_context(|| agent.log())?;
    let (id, token) = (replaced_id, replaced_token);

    // -- forgotten and imported by id: everything is read back, the token included, and
    // the plan is empty.
    tf.ok(&["state", "rm", "-no-color", &resource])?;
    tf.ok(&["import", "-no-color", "-input=false", &resource, &id])?;
    assert_eq!(id_and_token(&tf)?, (id.clone(), token.clone()));
    assert_clean(&tf, "import")?;

    // -- changed outside Terraform: the plan shows the drift and the apply puts it back.
    let mut drifted = client.get_bare_metal_machine(&id).await?.spec();
    drifted.address = "198.51.100.99".into();
    drifted.labels.insert("by".into(), "hand".into());
    client.update_bare_metal_machine(&id, &drifted).await?;
    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(changes, "{}", plan.text());
    assert!(plan.stdout.contains("198.51.100.99"), "{}", plan.stdout);
    assert!(plan.stdout.contains("\"hand\""), "{}", plan.stdout);
    assert!(
        plan.stdout.contains("0 to add, 1 to change, 0 to destroy"),
        "{}",
        plan.stdout
    );
    tf.apply()?;
    assert_clean(&tf, "repairing drift")?;
    assert_eq!(
        client.get_bare_metal_machine(&id).await?.spec(),
        spec("ams-metal")
    );

    // -- removed outside Terraform: it leaves the state and the plan registers it again.
    client.delete_bare_metal_machine(&id).await?;
    let (changes, plan) = tf.plan_has_changes()?;
    ensure!(changes, "{}", plan.text());
    assert!(
        plan.stdout.contains(&format!("{resource} will be created")),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("1 to add, 0 to change, 0 to destroy"),
        "{}",
        plan.stdout
    );
    tf.apply()?;
    assert_clean(&tf, "re-creating")?;
    let (recreated_id, recreated_token) = id_and_token(&tf)?;
    assert_ne!(recreated_id, id);
    assert_ne!(recreated_token, token);
    assert_eq!(
        client
            .get_bare_metal_machine(&recreated_id)
            .await?
            .agent_token,
        recreated_token
    );

    // -- destroy leaves the pool empty.
    tf.ok(&["destroy", "-auto-approve", "-no-color", "-input=false"])?;
    let pool = client.bare_metal_machines(None).await?;
    assert!(pool.is_empty(), "{pool:#?}");
    Ok(())
}

/// The spec [`BASE`] writes, at `location`.
fn spec(location: &str) -> BareMetalMachineSpec {
    BareMetalMachineSpec {
        name: "fra-bm-01".into(),
        location: location.into(),
        address: "203.0.113.10".into(),
        cores: None,
        memory_gb: None,
        labels: Default::default(),
    }
}
