//! The binary's handshake as a host meets it: offered `5`, `6`, `5,6` or `7` in
//! `PLUGIN_PROTOCOL_VERSIONS`, it serves the highest version both speak on the Unix socket
//! it announces, and that version's schema call answers with every resource and data
//! source; offered only versions it does not speak, it says so and exits without
//! announcing anything. `FLEETFORM_PLUGIN_PROTOCOL` overrides the choice for tests.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use terraform_provider_fleetform::handshake::{
    FORCE_PROTOCOL, MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE,
};
use terraform_provider_fleetform::proto::{tfplugin5, tfplugin6};
use terraform_provider_fleetform::{data_source_schemas, resource_schemas};
use tonic::transport::{Channel, Endpoint};

const BINARY: &str = env!("CARGO_BIN_EXE_terraform-provider-fleetform");

/// Starts the binary as a host does (no client certificate: plain gRPC on the socket).
fn start(offered: &str, forced: Option<&str>) -> Child {
    let mut command = Command::new(BINARY);
    command
        .env(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
        .env("PLUGIN_PROTOCOL_VERSIONS", offered)
        .env_remove("PLUGIN_CLIENT_CERT")
        .env_remove(FORCE_PROTOCOL)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(version) = forced {
        command.env(FORCE_PROTOCOL, version);
    }
    command.spawn().unwrap()
}

/// The announced protocol version and socket.
fn announcement(child: &mut Child) -> (String, PathBuf) {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let parts: Vec<&str> = line.trim().split('|').collect();
    assert_eq!(parts.len(), 6, "{line:?}");
    // No client certificate offered: no server certificate announced.
    assert_eq!(
        (parts[0], parts[2], parts[4], parts[5]),
        ("1", "unix", "grpc", ""),
        "{line:?}"
    );
    (parts[1].to_string(), PathBuf::from(parts[3]))
}

async fn channel(path: PathBuf) -> Channel {
    common::connect_unix(Endpoint::from_static("http://localhost"), path)
        .await
        .unwrap()
}

fn expected_types() -> (BTreeSet<String>, BTreeSet<String>) {
    (
        resource_schemas()
            .into_iter()
            .map(|(name, _)| name)
            .collect(),
        data_source_schemas()
            .into_iter()
            .map(|(name, _)| name)
            .collect(),
    )
}

/// The type names one protocol's schema call answers with (`$call` is its name there).
macro_rules! listed_types {
    ($proto:ident, $call:ident, $channel:expr) => {{
        let answer = $proto::provider_client::ProviderClient::new($channel)
            .$call($proto::get_provider_schema::Request {})
            .await
            .unwrap()
            .into_inner();
        assert!(answer.diagnostics.is_empty(), "{:?}", answer.diagnostics);
        (
            answer.resource_schemas.into_keys().collect(),
            answer.data_source_schemas.into_keys().collect(),
        )
    }};
}

/// The type names the served version's schema call lists.
async fn served_types(version: &str, path: PathBuf) -> (BTreeSet<String>, BTreeSet<String>) {
    let channel = channel(path).await;
    match version {
        "5" => listed_types!(tfplugin5, get_schema, channel),
        "6" => listed_types!(tfplugin6, get_provider_schema, channel),
        other => panic!("announced protocol {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_highest_common_version_is_served() {
    let cases = [
        ("5", None, "5"),
        ("6", None, "6"),
        ("5,6", None, "6"),
        ("6,5", None, "6"),
        // Forced for tests: protocol 5 although the host offers both.
        ("5,6", Some("5"), "5"),
        ("5,6", Some("6"), "6"),
    ];
    for (offered, forced, want) in cases {
        let mut child = start(offered, forced);
        let (version, path) = announcement(&mut child);
        let served = served_types(&version, path).await;
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(version, want, "offered {offered}, forced {forced:?}");
        assert_eq!(served, expected_types(), "offered {offered}");
    }
}

#[test]
fn a_host_that_offers_no_version_it_speaks_is_told_so() {
    let cases = [
        // A future Terraform that speaks only 7.
        (
            "7",
            None,
            "the host speaks plugin protocol 7, this provider 5, 6",
        ),
        // Forcing a version the host does not offer.
        ("6", Some("5"), "FLEETFORM_PLUGIN_PROTOCOL=\"5\""),
        ("5,6", Some("7"), "FLEETFORM_PLUGIN_PROTOCOL=\"7\""),
    ];
    for (offered, forced, message) in cases {
        let mut child = start(offered, forced);
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(1), "offered {offered}: {stderr}");
        assert!(stdout.is_empty(), "offered {offered}: announced {stdout:?}");
        assert!(stderr.contains(message), "offered {offered}: {stderr}");
    }
}
