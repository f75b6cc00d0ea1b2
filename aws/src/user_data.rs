//! The user data that turns a fresh instance into a fleetform machine: a shell script
//! that installs `fleetform-agent` (or uses the AMI's), writes its environment file and
//! starts it under systemd.

use std::collections::BTreeMap;

/// What an instance's agent needs to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentBootstrap {
    /// Where the agent reaches fleetformd.
    pub server_url: String,
    /// The machine's own agent token.
    pub agent_token: String,
    /// Where to download the agent binary from, if the AMI lacks it.
    pub agent_download_url: Option<String>,
}

/// The user data script for one machine (plain text; the SDK call base64-encodes it).
///
/// The agent's settings sit one per line as `KEY=value` in `/etc/fleetform/agent.env`
/// (readable by root only): the token is a credential. The agent reports the instance's
/// first private address as where players reach it.
pub fn render_user_data(bootstrap: &AgentBootstrap) -> String {
    let download = match &bootstrap.agent_download_url {
        Some(url) => format!(
            "curl -fsSL --retry 5 -o /usr/local/bin/fleetform-agent '{}'\nchmod 0755 /usr/local/bin/fleetform-agent\n",
            shell_quote_inner(url)
        ),
        None => String::new(),
    };
    format!(
        r#"#!/bin/sh
# fleetform: installs and starts fleetform-agent on this instance.
set -eu
mkdir -p /etc/fleetform /var/lib/fleetform
{download}umask 077
cat > /etc/fleetform/agent.env <<'FLEETFORM_ENV'
FLEETFORM_SERVER={server}
FLEETFORM_AGENT_TOKEN={token}
FLEETFORM_AGENT_DIR=/var/lib/fleetform
FLEETFORM_ENV
umask 022
cat > /etc/systemd/system/fleetform-agent.service <<'FLEETFORM_UNIT'
[Unit]
Description=fleetform agent
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=/etc/fleetform/agent.env
ExecStart=/bin/sh -c 'exec /usr/local/bin/fleetform-agent --address "$(hostname -I | cut -d " " -f 1)"'
Restart=always
RestartSec=2
KillMode=mixed
TimeoutStopSec=60

[Install]
WantedBy=multi-user.target
FLEETFORM_UNIT
systemctl daemon-reload
systemctl enable --now fleetform-agent
"#,
        server = single_line(&bootstrap.server_url),
        token = single_line(&bootstrap.agent_token),
    )
}

/// The `KEY=value` lines of the agent's environment file in a user data script.
pub fn agent_env(user_data: &str) -> BTreeMap<String, String> {
    let mut lines = user_data.lines();
    let mut env = BTreeMap::new();
    if !lines.any(|line| line.contains("<<'FLEETFORM_ENV'")) {
        return env;
    }
    for line in lines.by_ref() {
        if line == "FLEETFORM_ENV" {
            break;
        }
        if let Some((key, value)) = line.split_once('=') {
            env.insert(key.to_string(), value.to_string());
        }
    }
    env
}

/// A value on one line of a heredoc: no line breaks can end it early.
fn single_line(value: &str) -> String {
    value.replace(['\n', '\r'], "")
}

/// A value inside single quotes.
fn shell_quote_inner(value: &str) -> String {
    single_line(value).replace('\'', r"'\''")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bootstrap() -> AgentBootstrap {
        AgentBootstrap {
            server_url: "https://fleet.example.test".into(),
            agent_token: "fft_0123abcd".into(),
            agent_download_url: None,
        }
    }

    #[test]
    fn the_agent_env_round_trips() {
        let env = agent_env(&render_user_data(&bootstrap()));
        assert_eq!(env["FLEETFORM_SERVER"], "https://fleet.example.test");
        assert_eq!(env["FLEETFORM_AGENT_TOKEN"], "fft_0123abcd");
        assert_eq!(env["FLEETFORM_AGENT_DIR"], "/var/lib/fleetform");
        assert_eq!(env.len(), 3);
    }

    #[test]
    fn download_only_when_configured() {
        assert!(!render_user_data(&bootstrap()).contains("curl"));
        let with = render_user_data(&AgentBootstrap {
            agent_download_url: Some("https://dl.example.test/agent?a='b'".into()),
            ..bootstrap()
        });
        assert!(with.contains(r"curl -fsSL --retry 5 -o /usr/local/bin/fleetform-agent 'https://dl.example.test/agent?a='\''b'\'''"));
    }

    #[test]
    fn a_script_without_the_env_block_has_no_agent_env() {
        assert!(agent_env("#!/bin/sh\nFLEETFORM_SERVER=http://x\n").is_empty());
    }

    proptest! {
        #[test]
        fn no_value_breaks_out_of_its_line(server in "(?s).{0,40}", token in "(?s).{0,40}") {
            let env = agent_env(&render_user_data(&AgentBootstrap {
                server_url: server.clone(),
                agent_token: token.clone(),
                agent_download_url: None,
            }));
            prop_assert_eq!(env.len(), 3);
            prop_assert_eq!(&env["FLEETFORM_SERVER"], &single_line(&server));
            prop_assert_eq!(&env["FLEETFORM_AGENT_TOKEN"], &single_line(&token));
        }
    }
}
