//! Every example configuration under `examples/` is valid to the real `terraform` with this
//! provider: `terraform validate` (which runs the provider's plan-time validation) and
//! `terraform plan` (which also runs its planning) succeed on each.
//!
//! Plans run without fleetformd: plan-time code does no I/O. Terraform does read a data
//! source whose configuration is known at plan (`fleetform_locations`, whatever
//! `-refresh=false` says), so the endpoint is a [`PlanBackend`] that answers that one
//! read with fixed data and fails the test on any other request.
//!
//! Directories holding a standalone configuration (`examples/quickstart`,
//! `examples/scaling/<mode>`, …) are checked one by one. The registry snippets
//! (`examples/provider/provider.tf`, `examples/resources/*/resource.tf`,
//! `examples/data-sources/*/data-source.tf`) refer to each other (`fleetform_fleet.example`)
//! and are checked together as one configuration.
//!
//! The provider binary is the one Cargo builds for this package's integration tests
//! (`CARGO_BIN_EXE_terraform-provider-fleetform`), installed through `dev_overrides`, so no
//! `terraform init`, registry or network is needed. Without `terraform` on PATH the tests
//! fail.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

/// Values for the examples' input variables. Terraform ignores `TF_VAR_*` variables a
/// configuration doesn't declare.
const VARIABLES: &[(&str, &str)] = &[
    ("fleet_id", "flt-0123456789abcdef"),
    ("build_dir", "/opt/game/build"),
    ("fleetform_token", "example-token"),
];

/// Example directories whose files are snippets of one configuration.
const SNIPPET_DIRS: &[&str] = &["provider", "resources", "data-sources"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn terraform_available() -> bool {
    Command::new("terraform")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The `.tf` files of each directory under `dir`, recursively, by directory.
fn tf_files(dir: &Path, found: &mut BTreeMap<PathBuf, Vec<PathBuf>>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            tf_files(&path, found);
        } else if name.ends_with(".tf") {
            found.entry(dir.to_path_buf()).or_default().push(path);
        }
    }
}

/// The configurations to check: `(name, files)`.
fn configurations() -> Vec<(String, Vec<PathBuf>)> {
    let examples = repo().join("examples");
    let mut by_dir = BTreeMap::new();
    tf_files(&examples, &mut by_dir);
    let mut snippets = Vec::new();
    let mut configurations = Vec::new();
    for (dir, files) in by_dir {
        let relative = dir.strip_prefix(&examples).unwrap();
        let top = relative.components().next().unwrap().as_os_str();
        if SNIPPET_DIRS.iter().any(|snippet| top == *snippet) {
            snippets.extend(files);
        } else {
            configurations.push((format!("examples/{}", relative.display()), files));
        }
    }
    snippets.sort();
    configurations.push((
        "registry snippets (examples/{provider,resources,data-sources})".into(),
        snippets,
    ));
    configurations
}

/// The requests a plan may make: reads of data sources with no unknown argument.
const PLAN_READS: &[&str] = &["GET /v1/locations"];

/// What [`PlanBackend`] answers to `GET /v1/locations`.
const LOCATIONS_JSON: &str = r#"[{"name":"fra-metal","driver":"bare_metal","machine_types":["bare_metal"]},{"name":"local","driver":"local","machine_types":["vm"]}]"#;

/// Stands in for fleetformd during plans: answers [`PLAN_READS`] and records every request
/// (anything else gets a 404 and fails the test). The real route is tested against the
/// real fleetformd in `tests/tests/locations.rs`.
struct PlanBackend {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl PlanBackend {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the plan backend");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        // Lives until the test process ends (nextest runs each test in its own).
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Some(request) = Self::answer(stream) {
                    seen.lock().unwrap().push(request);
                }
            }
        });
        PlanBackend { url, requests }
    }

    /// Answers one request (`Connection: close`: one request per connection) and returns
    /// its method and path.
    fn answer(mut stream: TcpStream) -> Option<String> {
        let mut reader = BufReader::new(stream.try_clone().ok()?);
        let mut request_line = String::new();
        reader.read_line(&mut request_line).ok()?;
        // Skip the headers; the reads carry no body.
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).ok()? == 0 || header == "\r\n" {
                break;
            }
        }
        let request = request_line
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let (status, body) = if request == "GET /v1/locations" {
            ("200 OK", LOCATIONS_JSON)
        } else {
            (
                "404 Not Found",
                r#"{"error":{"code":"not_found","message":"not a read a plan makes"}}"#,
            )
        };
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        Some(request)
    }

    /// Every request so far, as `METHOD /path`.
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// A working directory for one configuration, and the CLI config that installs the
/// provider binary under test.
struct Workspace {
    dir: tempfile::TempDir,
    cli_config: PathBuf,
    endpoint: String,
}

impl Workspace {
    /// The configuration of `files`, its provider talking to `endpoint`.
    fn new(files: &[PathBuf], endpoint: &str) -> Self {
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_terraform-provider-fleetform"));
        assert!(
            binary.is_file(),
            "the provider binary {} is missing: build it with `cargo build -p \
             terraform-provider-fleetform` (cargo test builds it before integration tests)",
            binary.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let cli_config = dir.path().join("dev.tfrc");
        std::fs::write(
            &cli_config,
            format!(
                "provider_installation {{\n  dev_overrides {{\n    \"fleetform/fleetform\" = \
                 \"{}\"\n  }}\n  direct {{}}\n}}\n",
                binary.parent().unwrap().display()
            ),
        )
        .unwrap();
        let config_dir = dir.path().join("config");
        std::fs::create_dir(&config_dir).unwrap();
        for (index, file) in files.iter().enumerate() {
            // Snippets from different directories share file names (resource.tf).
            let name = format!("{index:02}-{}", file.file_name().unwrap().to_string_lossy());
            std::fs::copy(file, config_dir.join(name)).unwrap();
        }
        // `examples/provider/provider.tf` sets `endpoint` (to fleetformd's default port,
        // where a developer's own server may listen); an override file points it here.
        let declares_provider = files.iter().any(|file| {
            std::fs::read_to_string(file)
                .unwrap()
                .contains("provider \"fleetform\" {")
        });
        if declares_provider {
            std::fs::write(
                config_dir.join("endpoint_override.tf"),
                format!("provider \"fleetform\" {{\n  endpoint = \"{endpoint}\"\n}}\n"),
            )
            .unwrap();
        }
        Workspace {
            dir,
            cli_config,
            endpoint: endpoint.to_string(),
        }
    }

    fn terraform(&self, args: &[&str]) -> Output {
        Command::new("terraform")
            .args(args)
            .current_dir(self.dir.path().join("config"))
            .env("TF_CLI_CONFIG_FILE", &self.cli_config)
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env("NO_COLOR", "1")
            .env("FLEETFORM_ENDPOINT", &self.endpoint)
            .envs(
                VARIABLES
                    .iter()
                    .map(|(name, value)| (format!("TF_VAR_{name}"), value)),
            )
            .env_remove("TF_LOG")
            .env_remove("TF_DATA_DIR")
            .stdin(Stdio::null())
            .output()
            .expect("run terraform")
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

#[test]
fn every_example_validates_and_plans() {
    assert!(
        terraform_available(),
        "terraform must be on PATH: these tests check the examples with the real one"
    );
    let configurations = configurations();
    let names: Vec<&str> = configurations
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    for expected in ["examples/quickstart", "examples/scaling/predictive"] {
        assert!(
            names.contains(&expected),
            "{expected} not found in {names:?}"
        );
    }
    let backend = PlanBackend::start();
    let mut failures = Vec::new();
    for (name, files) in &configurations {
        let workspace = Workspace::new(files, &backend.url);
        let validate = workspace.terraform(&["validate", "-no-color"]);
        if !validate.status.success() {
            failures.push(format!(
                "{name}: terraform validate failed: {}",
                describe(&validate)
            ));
            continue;
        }
        let plan = workspace.terraform(&[
            "plan",
            "-no-color",
            "-input=false",
            "-lock=false",
            "-refresh=false",
        ]);
        let stdout = String::from_utf8_lossy(&plan.stdout);
        if !plan.status.success() || !stdout.contains("to add") {
            failures.push(format!(
                "{name}: terraform plan failed: {}",
                describe(&plan)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let requests = backend.requests();
    let unexpected: Vec<&String> = requests
        .iter()
        .filter(|request| !PLAN_READS.contains(&request.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "plans made requests other than data-source reads: {unexpected:?}"
    );
    assert!(
        requests
            .iter()
            .any(|request| request == "GET /v1/locations"),
        "no plan read fleetform_locations (is its example planned?): {requests:?}"
    );
}

/// The check above would catch an invalid example: `terraform validate` runs the
/// provider's plan-time validation and fails on the exact attribute, here with the fleet
/// id unknown (a variable) as in the examples.
#[test]
fn an_invalid_example_fails_validate_on_its_attribute() {
    assert!(
        terraform_available(),
        "terraform must be on PATH: these tests check the examples with the real one"
    );
    let source = repo().join("examples/scaling/segment-rules/main.tf");
    let hcl = std::fs::read_to_string(&source).unwrap();
    let broken = hcl
        .replacen(
            "    available_percent   = 15\n",
            "    available_percent   = 15\n    available_predicted = 2\n",
            1,
        )
        .replacen("min_active_sessions = 1000", "min_active_sessions = 50", 1);
    assert_ne!(
        broken,
        hcl,
        "fixture text not found in {}",
        source.display()
    );
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("main.tf");
    std::fs::write(&file, broken).unwrap();
    // Nothing listens here: validate needs no fleetformd.
    let workspace = Workspace::new(&[file], "http://127.0.0.1:9");
    let output = workspace.terraform(&["validate", "-no-color"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    for expected in [
        "Invalid buffer_rule[1]",
        "available_predicted, not several",
        "Invalid buffer_rule[2].min_active_sessions",
        "min_active_sessions = 50",
        "must be greater than the previous rule's 100",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} not in: {}",
            describe(&output)
        );
    }
}
