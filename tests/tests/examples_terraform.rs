//! Every example configuration under `examples/` is valid to the real `terraform` with this
//! provider: `terraform validate` (which runs the provider's plan-time validation) and
//! `terraform plan` (which also runs its planning) succeed on each.
//!
//! Plans run against the real fleetformd (started on loopback by the harness, with the
//! locations the examples name): plan-time code does no I/O, but Terraform does read a data
//! source whose configuration is known at plan (`fleetform_locations`, whatever
//! `-refresh=false` says). After every plan the server still holds no build, fleet or zone.
//!
//! Directories holding a standalone configuration (`examples/quickstart`,
//! `examples/scaling/<mode>`, …) are checked one by one. The registry snippets
//! (`examples/provider/provider.tf`, `examples/resources/*/resource.tf`,
//! `examples/data-sources/*/data-source.tf`) refer to each other (`fleetform_fleet.example`)
//! and are checked together as one configuration.
//!
//! The provider binary is the workspace's (`target/debug`, as for every end-to-end test),
//! installed through `dev_overrides`, so no `terraform init`, registry or network is needed.
//! Without `terraform` on PATH the tests fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use fleetform_e2e::{bin_dir, binary, copy_tree, count_rows, Fleetformd, TOKEN};

/// Values for the examples' input variables. Terraform ignores `TF_VAR_*` variables a
/// configuration doesn't declare.
const VARIABLES: &[(&str, &str)] = &[
    ("fleet_id", "flt-0123456789abcdef"),
    ("build_dir", "/opt/game/build"),
    ("fleetform_token", TOKEN),
];

/// Example directories whose files are snippets of one configuration.
const SNIPPET_DIRS: &[&str] = &["provider", "resources", "data-sources"];

fn repo() -> PathBuf {
    fleetform_e2e::repo_root()
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

/// The locations the examples' data centers and data sources name.
const CONFIG: &str = r#"
[[location]]
name = "local"
driver = "local"

[[location]]
name = "fra-metal"
driver = "bare_metal"
"#;

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
        binary("terraform-provider-fleetform");
        let dir = tempfile::tempdir().unwrap();
        let cli_config = dir.path().join("dev.tfrc");
        std::fs::write(
            &cli_config,
            format!(
                "provider_installation {{\n  dev_overrides {{\n    \"fleetform/fleetform\" = \
                 \"{}\"\n  }}\n  direct {{}}\n}}\n",
                bin_dir().display()
            ),
        )
        .unwrap();
        // Two levels down, as the examples sit in the repository, so a module source
        // `../../modules/…` finds the repository's modules copied beside it.
        let config_dir = dir.path().join("examples/config");
        std::fs::create_dir_all(&config_dir).unwrap();
        let uses_modules = files.iter().any(|file| {
            std::fs::read_to_string(file)
                .unwrap()
                .contains("source = \"../../modules/")
        });
        if uses_modules {
            copy_tree(&repo().join("modules"), &dir.path().join("modules")).unwrap();
        }
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
        let workspace = Workspace {
            dir,
            cli_config,
            endpoint: endpoint.to_string(),
        };
        if uses_modules {
            // Local modules are installed by `get` (`init` would look the dev-overridden
            // provider up in the registry).
            let get = workspace.terraform(&["get", "-no-color"]);
            assert!(get.status.success(), "terraform get: {}", describe(&get));
        }
        workspace
    }

    fn terraform(&self, args: &[&str]) -> Output {
        Command::new("terraform")
            .args(args)
            .current_dir(self.dir.path().join("examples/config"))
            .env("TF_CLI_CONFIG_FILE", &self.cli_config)
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env("NO_COLOR", "1")
            .env("FLEETFORM_ENDPOINT", &self.endpoint)
            .env("FLEETFORM_TOKEN", TOKEN)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_validates_and_plans() {
    assert!(
        terraform_available(),
        "terraform must be on PATH: these tests check the examples with the real one"
    );
    let configurations = configurations();
    let names: Vec<&str> = configurations
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    for expected in [
        "examples/quickstart",
        "examples/scaling/predictive",
        "examples/stack",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} not found in {names:?}"
        );
    }
    let server = Fleetformd::start_with_config(CONFIG).expect("start fleetformd");
    let mut failures = Vec::new();
    for (name, files) in &configurations {
        let workspace = Workspace::new(files, &server.url);
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
    // Plans read data sources and write nothing.
    for table in ["builds", "fleets", "zones", "bare_metal_machines"] {
        let rows = count_rows(
            &server,
            &format!("SELECT COUNT(*) FROM {table} WHERE ? = ''"),
            "",
        )
        .await
        .expect("count rows");
        assert_eq!(rows, 0, "a plan wrote to {table}");
    }
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
        .replacen("min_active_sessions = 1000", "min_active_sessions = 100", 1);
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
        // The rules are a set: the errors are on it, each naming its rule.
        "Invalid buffer_rule",
        "available_predicted, not several",
        "the rule from 100 active sessions:",
        "two rules start from 100 active sessions",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} not in: {}",
            describe(&output)
        );
    }
}

/// `fleetform_bare_metal_machine`'s invalid values fail at plan, each on its attribute (its
/// lifecycle against the real fleetformd is `bare_metal_lifecycle.rs`).
#[test]
fn invalid_bare_metal_values_fail_validate_on_their_attribute() {
    assert!(
        terraform_available(),
        "terraform must be on PATH: these tests check the examples with the real one"
    );
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("main.tf");
    std::fs::write(
        &file,
        r#"terraform {
  required_providers {
    fleetform = { source = "fleetform/fleetform" }
  }
}

resource "fleetform_bare_metal_machine" "m" {
  name      = "fra bm 01"
  location  = "fra-metal"
  address   = "203.0.113.10:7777"
  cores     = 0
  memory_gb = 64
  labels = {
    rack = format("%0256d", 0)
  }
}
"#,
    )
    .unwrap();
    // Nothing listens here: validate needs no fleetformd.
    let workspace = Workspace::new(&[file], "http://127.0.0.1:9");
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
