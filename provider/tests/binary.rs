//! The provider binary as it starts: run by hand it says what it is; run by a host it
//! announces itself and outlives a Ctrl-C (SIGINT), which Terraform's terminal sends the
//! whole process group.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use terraform_provider_fleetform::handshake::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE};

const BINARY: &str = env!("CARGO_BIN_EXE_terraform-provider-fleetform");

#[test]
fn run_by_hand_it_says_it_is_a_plugin() {
    let output = Command::new(BINARY)
        .env_remove(MAGIC_COOKIE_KEY)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("This binary is a plugin"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing announced");
}

#[test]
fn started_by_a_host_it_announces_itself_and_outlives_sigint() {
    let mut child = Command::new(BINARY)
        .env(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
        .env("PLUGIN_PROTOCOL_VERSIONS", "5,6")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("1|6|"), "the handshake line: {line:?}");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(500));
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(exited, None, "SIGINT ended the provider");
}
