//! Invalid configurations fail at plan time through the real `terraform`, with the
//! diagnostic on the offending attribute, and without Rust backtraces even when
//! RUST_BACKTRACE is set (tf-provider would append one to every diagnostic).

use anyhow::Result;
use fleetform_e2e::*;

const HEADER: &str = r#"
terraform {
  required_providers {
    fleetform = { source = "fleetform/fleetform" }
  }
}
"#;

fn fleet(extra: &str) -> String {
    format!(
        r#"{HEADER}
resource "fleetform_fleet" "f" {{
  name        = "f"
  build_id    = "bld-1"
  launch_path = "server"
{extra}
}}
"#
    )
}

fn zone(blocks: &str) -> String {
    format!(
        r#"{HEADER}
resource "fleetform_zone" "z" {{
  fleet_id                 = "flt-1"
  name                     = "z"
  initial_server_processes = 1
{blocks}
}}
"#
    )
}

const DC: &str = r#"
  data_center {
    name                 = "a"
    location             = "local"
    max_server_processes = 2
    machine_model {
      instance_type         = "local"
      processes_per_machine = 1
    }
  }
"#;

#[test]
fn invalid_values_fail_at_plan_on_their_attribute() -> Result<()> {
    let server = Fleetformd::start()?;
    // (name, main.tf, text the diagnostic must contain, the source line it must quote)
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "script launch path",
            fleet("").replace(r#"launch_path = "server""#, r#"launch_path = "start.sh""#),
            "launch_path",
            r#"launch_path = "start.sh""#,
        ),
        (
            "restart hours over a week",
            fleet("  process_restart_hours = 169"),
            "process_restart_hours",
            "process_restart_hours = 169",
        ),
        (
            "parallel sessions in simple mode",
            fleet("  sessions_per_process = 2"),
            "sessions_per_process",
            "sessions_per_process = 2",
        ),
        (
            "duplicate data-center names",
            // Two blocks of one name (equal blocks would be one element of the set).
            zone(&format!(
                "buffer_rule {{\n available_servers = 1\n}}\n{DC}{}",
                DC.replace("max_server_processes = 2", "max_server_processes = 3")
            )),
            "data center \"a\", `name`",
            "resource \"fleetform_zone\" \"z\"",
        ),
        (
            "buffer rule with both amounts",
            zone(&format!(
                "buffer_rule {{\n available_servers = 1\n available_percent = 10\n}}\n{DC}"
            )),
            "the rule from 0 active sessions",
            "resource \"fleetform_zone\" \"z\"",
        ),
        (
            "buffer rule with neither amount",
            zone(&format!("buffer_rule {{\n min_active_sessions = 0\n}}\n{DC}")),
            "the rule from 0 active sessions",
            "resource \"fleetform_zone\" \"z\"",
        ),
        (
            "two buffer rules from the same threshold",
            zone(&format!(
                "buffer_rule {{\n available_servers = 1\n}}\nbuffer_rule {{\n min_active_sessions = 0\n available_percent = 10\n}}\n{DC}"
            )),
            "two rules start from 0 active sessions",
            "resource \"fleetform_zone\" \"z\"",
        ),
        (
            "sha256 of a directory",
            format!(
                "{HEADER}\nresource \"fleetform_build\" \"b\" {{\n  name = \"b\"\n  source = \"file:///opt/game\"\n  sha256 = \"{}\"\n}}\n",
                "a".repeat(64)
            ),
            "sha256",
            "sha256 = ",
        ),
    ];
    let mut failures = Vec::new();
    for (name, main_tf, path, line) in cases {
        let mut tf = Terraform::new(&server, &main_tf)?;
        tf.env.push(("RUST_BACKTRACE".into(), "1".into()));
        let output = tf.run(&["plan", "-no-color", "-input=false"])?;
        let text = output.text();
        if output.success {
            failures.push(format!("{name}: plan succeeded\n{text}"));
        } else if !text.contains(path) || !text.contains(line) {
            failures.push(format!(
                "{name}: no diagnostic on {path} quoting {line:?}\n{text}"
            ));
        } else if text.contains("backtrace") || text.contains("/rustc/") {
            failures.push(format!("{name}: a Rust backtrace reached the user\n{text}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}
