//! The schemas `wire.rs` converts for the new plugin server say exactly what the server
//! Terraform talks to today (tf-provider's, protocol 6) sends: the binary is started as a
//! host starts it, asked `GetProviderSchema` over the wire, and each schema compared,
//! attribute by attribute and block by block. So switching servers changes no schema
//! (but the spelling of "no item limit", which Terraform reads the same).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use terraform_provider_fleetform::handshake::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE};
use terraform_provider_fleetform::proto::tfplugin6::{
    get_provider_schema, provider_client::ProviderClient, schema, Schema,
};
use terraform_provider_fleetform::{data_source_schemas, provider, resource_schemas, wire};

const BINARY: &str = env!("CARGO_BIN_EXE_terraform-provider-fleetform");

/// A block as lines that do not depend on order or JSON spelling.
fn lines(block: &schema::Block, indent: &str, out: &mut Vec<String>) {
    let mut attributes: Vec<&schema::Attribute> = block.attributes.iter().collect();
    attributes.sort_by(|a, b| a.name.cmp(&b.name));
    for a in attributes {
        let attr_type: serde_json::Value = serde_json::from_slice(&a.r#type).unwrap();
        out.push(format!(
            "{indent}{} {attr_type} required={} optional={} computed={} sensitive={} \
             deprecated={} kind={} {:?}",
            a.name,
            a.required,
            a.optional,
            a.computed,
            a.sensitive,
            a.deprecated,
            a.description_kind,
            a.description
        ));
    }
    let mut blocks: Vec<&schema::NestedBlock> = block.block_types.iter().collect();
    blocks.sort_by(|a, b| a.type_name.cmp(&b.type_name));
    for b in blocks {
        // No limit: `0` in Terraform's convention (what wire.rs sends), `i64::MAX` from
        // tf-provider; Terraform reads both as unbounded.
        let max_items = if b.max_items == i64::MAX {
            0
        } else {
            b.max_items
        };
        out.push(format!(
            "{indent}block {} nesting={} items={}..{max_items}",
            b.type_name, b.nesting, b.min_items
        ));
        lines(b.block.as_ref().unwrap(), &format!("{indent}  "), out);
    }
}

fn summary(schema: &Schema) -> Vec<String> {
    let mut out = vec![format!("version {}", schema.version)];
    lines(schema.block.as_ref().unwrap(), "", &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_schemas_are_what_the_served_provider_sends() {
    // No PLUGIN_CLIENT_CERT: tf-provider serves plain TCP on loopback.
    let mut child = Command::new(BINARY)
        .env(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
        .env("PLUGIN_PROTOCOL_VERSIONS", "6")
        .env("PLUGIN_MIN_PORT", "10000")
        .env("PLUGIN_MAX_PORT", "25000")
        .env_remove("PLUGIN_CLIENT_CERT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let parts: Vec<&str> = line.trim().split('|').collect();
    assert_eq!(&parts[..3], ["1", "6", "tcp"], "{line}");
    let served = async {
        let mut client = ProviderClient::connect(format!("http://{}", parts[3])).await?;
        let answer = client
            .get_provider_schema(get_provider_schema::Request {})
            .await?
            .into_inner();
        anyhow::Ok(answer)
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let served = served.unwrap();
    assert!(served.diagnostics.is_empty(), "{:?}", served.diagnostics);

    let mut ours: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut theirs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, schema) in resource_schemas() {
        ours.insert(
            format!("resource {name}"),
            summary(&wire::schema_v6(&schema).unwrap()),
        );
    }
    for (name, schema) in data_source_schemas() {
        ours.insert(
            format!("data {name}"),
            summary(&wire::schema_v6(&schema).unwrap()),
        );
    }
    ours.insert(
        "provider".into(),
        summary(&wire::schema_v6(&provider::provider_schema()).unwrap()),
    );
    for (name, schema) in &served.resource_schemas {
        theirs.insert(format!("resource {name}"), summary(schema));
    }
    for (name, schema) in &served.data_source_schemas {
        theirs.insert(format!("data {name}"), summary(schema));
    }
    theirs.insert(
        "provider".into(),
        summary(served.provider.as_ref().unwrap()),
    );
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (name, want) in &theirs {
        assert_eq!(&ours[name], want, "{name}");
    }
}
