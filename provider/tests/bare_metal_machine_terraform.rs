//! `fleetform_bare_metal_machine` through the real `terraform`, acceptance-style: create →
//! plan is empty → update in place → import → drift → deleted outside → destroy refused
//! while the machine hosts sessions → destroy; and invalid values fail at plan on their
//! attribute.
//!
//! fleetformd is replaced by a stub of the four `/v1/bare-metal-machines` routes that keeps
//! the bodies it is sent and answers them with the computed fields added (the end-to-end
//! tests in `tests/` run the real one). That is enough to check what only Terraform can:
//! that every plan after an apply or an import is clean (no "Provider produced inconsistent
//! result", no diff from labels or the live figures), that the agent token lands in the
//! state and stays there, and that the outside changes show up.
//!
//! Without `terraform` on PATH the tests print a note and pass, as `examples_terraform.rs`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

fn terraform_available() -> bool {
    Command::new("terraform")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

// ---------------------------------------------------------------------------------------------
// The stub of fleetformd's bare-metal routes

/// fleetformd's answer to deleting a machine that hosts sessions.
const BUSY: &str =
    r#"{"error":{"code":"conflict","message":"the machine hosts 2 active sessions"}}"#;

/// What the stub holds: machines by id, each as the JSON body it answers with.
#[derive(Default)]
struct Pool {
    machines: BTreeMap<String, String>,
    registered: u32,
    /// Answer DELETE with 409, as fleetformd does while the machine hosts sessions.
    busy: bool,
    /// Every GET answers a new heartbeat time: a live figure that must not reach the state.
    reads: u32,
}

impl Pool {
    /// The answer for a machine: the computed fields, then the body it was sent.
    fn answer(&self, id: &str, token: &str, spec: &str) -> String {
        let spec = spec.trim();
        assert!(
            spec.starts_with('{') && spec.len() > 2,
            "unexpected body {spec}"
        );
        format!(
            "{{\"id\":\"{id}\",\"agent_token\":\"{token}\",\
             \"created_at\":\"2024-05-01T12:00:00Z\",\"machine_id\":\"mch-7\",\
             \"zone_id\":\"zone-3\",\"last_heartbeat_at\":\"2024-05-01T12:00:{:02}Z\",{}",
            self.reads % 60,
            &spec[1..]
        )
    }

    fn handle(&mut self, method: &str, path: &str, body: &str) -> (u16, String) {
        let not_found = (
            404,
            r#"{"error":{"code":"not_found","message":"no such bare-metal machine"}}"#.into(),
        );
        let rest = path.strip_prefix("/v1/bare-metal-machines").unwrap_or("?");
        match (method, rest) {
            ("POST", "") => {
                self.registered += 1;
                let id = format!("bm-{}", self.registered);
                let token = format!("agt-{}-secret", self.registered);
                let answer = self.answer(&id, &token, body);
                self.machines.insert(id, answer.clone());
                (201, answer)
            }
            (_, rest) if rest.starts_with('/') => {
                let id = &rest[1..];
                let Some(stored) = self.machines.get(id).cloned() else {
                    return not_found;
                };
                match method {
                    "GET" => {
                        self.reads += 1;
                        (200, stored)
                    }
                    "PUT" => {
                        let token = field(&stored, "agent_token");
                        let answer = self.answer(id, &token, body);
                        self.machines.insert(id.to_string(), answer.clone());
                        (200, answer)
                    }
                    "DELETE" if self.busy => (409, BUSY.into()),
                    "DELETE" => {
                        self.machines.remove(id);
                        (204, String::new())
                    }
                    _ => (405, String::new()),
                }
            }
            _ => not_found,
        }
    }
}

/// The text of a string field of a flat JSON object (good enough for the stub's answers).
fn field(json: &str, name: &str) -> String {
    let start = json.find(&format!("\"{name}\":\"")).expect(name) + name.len() + 4;
    let end = start + json[start..].find('"').unwrap();
    json[start..end].to_string()
}

/// Serves the stub on a loopback port, one thread per connection, each answer closing it.
fn serve(pool: Arc<Mutex<Pool>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let pool = pool.clone();
            std::thread::spawn(move || answer_one(stream, &pool));
        }
    });
    endpoint
}

fn answer_one(stream: TcpStream, pool: &Mutex<Pool>) {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, text) = pool
        .lock()
        .unwrap()
        .handle(method, path, &String::from_utf8_lossy(&body));
    let response = format!(
        "HTTP/1.1 {status} Stub\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = reader.get_mut().write_all(response.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Terraform in a scratch directory with the provider under test

struct Workspace {
    dir: tempfile::TempDir,
    endpoint: String,
}

impl Workspace {
    fn new(endpoint: &str) -> Self {
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_terraform-provider-fleetform"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("dev.tfrc"),
            format!(
                "provider_installation {{\n  dev_overrides {{\n    \"fleetform/fleetform\" = \
                 \"{}\"\n  }}\n  direct {{}}\n}}\n",
                binary.parent().unwrap().display()
            ),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        Workspace {
            dir,
            endpoint: endpoint.to_string(),
        }
    }

    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// Writes the configuration: the provider block and one machine with `attributes`.
    fn configure(&self, attributes: &str) {
        let hcl = format!(
            "terraform {{\n  required_providers {{\n    fleetform = {{\n      source = \
             \"fleetform/fleetform\"\n    }}\n  }}\n}}\n\nresource \
             \"fleetform_bare_metal_machine\" \"m\" {{\n{attributes}\n}}\n"
        );
        std::fs::write(self.config_dir().join("main.tf"), hcl).unwrap();
    }

    fn terraform(&self, args: &[&str]) -> Output {
        Command::new("terraform")
            .args(args)
            .current_dir(self.config_dir())
            .env("TF_CLI_CONFIG_FILE", self.dir.path().join("dev.tfrc"))
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env("NO_COLOR", "1")
            .env("FLEETFORM_ENDPOINT", &self.endpoint)
            .env("FLEETFORM_TOKEN", "test-admin-token")
            .env_remove("TF_LOG")
            .env_remove("TF_DATA_DIR")
            .stdin(Stdio::null())
            .output()
            .expect("run terraform")
    }

    /// Runs a command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.terraform(args);
        assert!(
            output.status.success(),
            "terraform {args:?}: {}",
            describe(&output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn apply(&self) -> String {
        self.ok(&["apply", "-auto-approve", "-input=false", "-no-color"])
    }

    /// `terraform plan -detailed-exitcode`: `(changes, stdout)`.
    fn plan(&self) -> (bool, String) {
        let output = self.terraform(&["plan", "-detailed-exitcode", "-input=false", "-no-color"]);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        match output.status.code() {
            Some(0) => (false, stdout),
            Some(2) => (true, stdout),
            _ => panic!("terraform plan failed: {}", describe(&output)),
        }
    }

    fn assert_clean(&self, after: &str) {
        let (changes, stdout) = self.plan();
        assert!(!changes, "plan after {after} is not empty:\n{stdout}");
        assert!(stdout.contains("No changes"), "{stdout}");
    }

    fn state(&self) -> String {
        std::fs::read_to_string(self.config_dir().join("terraform.tfstate")).unwrap()
    }
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

const BASE: &str = r#"  name     = "fra-bm-01"
  location = "fra-metal"
  address  = "203.0.113.10""#;

#[test]
fn lifecycle_with_clean_plans_import_and_drift() {
    if !terraform_available() {
        println!("note: `terraform` is not on PATH; skipped");
        return;
    }
    let pool = Arc::new(Mutex::new(Pool::default()));
    let workspace = Workspace::new(&serve(pool.clone()));

    // Create with only the required attributes: no labels, no sizes.
    workspace.configure(BASE);
    let (changes, created) = workspace.plan();
    assert!(changes);
    assert!(
        created.contains("agent_token = (sensitive value)"),
        "{created}"
    );
    workspace.apply();
    workspace.assert_clean("create");
    let state = workspace.state();
    assert!(
        state.contains("\"agent_token\": \"agt-1-secret\""),
        "{state}"
    );
    for live in ["machine_id", "zone_id", "last_heartbeat_at"] {
        assert!(!state.contains(live), "{live} is in the state: {state}");
    }
    let shown = workspace.ok(&[
        "state",
        "show",
        "-no-color",
        "fleetform_bare_metal_machine.m",
    ]);
    assert!(!shown.contains("agt-1-secret"), "{shown}");

    // An explicit empty map is the same as no labels.
    workspace.configure(&format!("{BASE}\n  labels = {{}}"));
    workspace.assert_clean("writing `labels = {}`");

    // Everything but the location updates in place; the token stays.
    let updated = r#"  name      = "fra-bm-01b"
  location  = "fra-metal"
  address   = "bm-01.fra.example.com"
  cores     = 32
  memory_gb = 128
  labels = {
    rack = "r12"
  }"#;
    workspace.configure(updated);
    let (changes, plan) = workspace.plan();
    assert!(changes && plan.contains("1 to change"), "{plan}");
    assert!(!plan.contains("forces replacement"), "{plan}");
    workspace.apply();
    workspace.assert_clean("update");
    assert!(workspace
        .state()
        .contains("\"agent_token\": \"agt-1-secret\""));
    let stored = pool.lock().unwrap().machines["bm-1"].clone();
    assert!(
        stored.contains("\"cores\":32") && stored.contains("\"rack\":\"r12\""),
        "{stored}"
    );

    // Dropping the optional attributes clears them on the server.
    workspace.configure(BASE);
    workspace.apply();
    workspace.assert_clean("removing the optional attributes");
    let stored = pool.lock().unwrap().machines["bm-1"].clone();
    assert!(
        !stored.contains("cores") && !stored.contains("rack"),
        "{stored}"
    );

    // A new location replaces the machine.
    workspace.configure(&BASE.replace("fra-metal", "ams-metal"));
    let (_, plan) = workspace.plan();
    assert!(plan.contains("forces replacement"), "{plan}");
    assert!(
        plan.contains("1 to add, 0 to change, 1 to destroy"),
        "{plan}"
    );
    workspace.configure(BASE);

    // Import by id reads everything back, the token included, and plans clean.
    workspace.ok(&["state", "rm", "fleetform_bare_metal_machine.m"]);
    workspace.ok(&[
        "import",
        "-no-color",
        "fleetform_bare_metal_machine.m",
        "bm-1",
    ]);
    assert!(workspace
        .state()
        .contains("\"agent_token\": \"agt-1-secret\""));
    workspace.assert_clean("import");

    // Changed outside Terraform: the plan puts it back.
    {
        let mut pool = pool.lock().unwrap();
        let stored = pool.machines["bm-1"].replace("203.0.113.10", "198.51.100.99");
        pool.machines.insert("bm-1".into(), stored);
    }
    let (changes, plan) = workspace.plan();
    assert!(changes && plan.contains("198.51.100.99"), "{plan}");
    assert!(plan.contains("1 to change"), "{plan}");
    workspace.apply();
    workspace.assert_clean("repairing drift");

    // Removed outside Terraform: it leaves the state and the plan registers it again.
    pool.lock().unwrap().machines.clear();
    let (changes, plan) = workspace.plan();
    assert!(
        changes && plan.contains("1 to add, 0 to change, 0 to destroy"),
        "{plan}"
    );
    workspace.apply();
    assert!(workspace
        .state()
        .contains("\"agent_token\": \"agt-2-secret\""));
    workspace.assert_clean("re-creating");

    // A machine hosting sessions can't be destroyed; once they end it can.
    pool.lock().unwrap().busy = true;
    let refused = workspace.terraform(&["destroy", "-auto-approve", "-no-color"]);
    assert!(!refused.status.success(), "{}", describe(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("Bare-metal machine hosts active sessions")
            && stderr.contains("depends_on"),
        "{}",
        describe(&refused)
    );
    assert_eq!(pool.lock().unwrap().machines.len(), 1);
    pool.lock().unwrap().busy = false;
    workspace.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert!(pool.lock().unwrap().machines.is_empty());
}

#[test]
fn invalid_values_fail_at_plan_on_their_attribute() {
    if !terraform_available() {
        println!("note: `terraform` is not on PATH; skipped");
        return;
    }
    // Nothing listens here: validation must not need fleetformd.
    let workspace = Workspace::new("http://127.0.0.1:9");
    workspace.configure(
        r#"  name      = "fra bm 01"
  location  = "fra-metal"
  address   = "203.0.113.10:7777"
  cores     = 0
  memory_gb = 64
  labels = {
    rack = format("%0256d", 0)
  }"#,
    );
    let output = workspace.terraform(&["validate", "-no-color"]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "Invalid name",
        "Invalid address",
        "neither an IP address nor a host name",
        "Invalid cores",
        "must be at least 1, got 0",
        "Invalid labels[\"rack\"]",
        "label values are at most 255 bytes",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} not in: {}",
            describe(&output)
        );
    }
    assert!(!stderr.contains("Invalid memory_gb"), "{stderr}");
    assert!(!stderr.contains("Invalid location"), "{stderr}");
}
