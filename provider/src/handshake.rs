//! The go-plugin handshake by which Terraform and OpenTofu start a provider: what the
//! environment asks for, which plugin protocol is served, and the line announced on
//! stdout. Plain functions over the environment (a lookup function, so tests pass a map);
//! the server that acts on them is elsewhere.
//!
//! The host sets `TF_PLUGIN_MAGIC_COOKIE` (a binary run by hand does not, and is told so),
//! the protocol versions it speaks in `PLUGIN_PROTOCOL_VERSIONS` (`5,6` from Terraform and
//! OpenTofu, in any order), the port range for TCP and, for automatic mTLS, its client
//! certificate (`PLUGIN_CLIENT_CERT`, PEM). The provider serves the highest version both
//! sides speak (`FLEETFORM_PLUGIN_PROTOCOL` forces one, for tests), and announces
//! `CORE|APP|NETWORK|ADDRESS|grpc|CERT` (go-plugin's `server.go`): core protocol 1, the
//! version chosen, `unix` or `tcp`, where it listens, and its own certificate (DER,
//! base64 without padding).

use std::fmt;

/// The variable go-plugin hosts set, and its value for Terraform and OpenTofu.
pub const MAGIC_COOKIE_KEY: &str = "TF_PLUGIN_MAGIC_COOKIE";
pub const MAGIC_COOKIE_VALUE: &str =
    "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";

/// Forces the protocol version (tests run the suite on each).
pub const FORCE_PROTOCOL: &str = "FLEETFORM_PLUGIN_PROTOCOL";

/// The plugin protocol versions this provider serves.
pub const SUPPORTED: [u32; 2] = [5, 6];

/// What the host asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The protocol version to serve.
    pub protocol: u32,
    /// The TCP ports allowed (when not on a Unix socket); `(0, 0)`: any free one.
    pub ports: (u16, u16),
    /// Where to put the Unix socket (`PLUGIN_UNIX_SOCKET_DIR`; else the temp directory).
    pub unix_socket_dir: Option<String>,
    /// The host's certificate (PEM): serve TLS and require it of the client.
    pub client_cert: Option<String>,
}

/// Why the provider cannot start as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// Run by hand, not by Terraform.
    NotAPluginHost,
    /// No version both sides speak.
    NoCommonVersion { offered: Vec<u32> },
    /// `FLEETFORM_PLUGIN_PROTOCOL` names a version this provider or the host does not speak.
    BadForcedVersion { value: String, offered: Vec<u32> },
    /// A setting that is not what go-plugin sends.
    BadSetting { name: &'static str, value: String },
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let supported = join(&SUPPORTED);
        match self {
            HandshakeError::NotAPluginHost => write!(
                f,
                "This binary is a plugin: Terraform or OpenTofu runs it, it is not run by \
                 hand. Put it where the CLI finds providers (a `dev_overrides` or \
                 `filesystem_mirror` entry) and run `terraform init`."
            ),
            HandshakeError::NoCommonVersion { offered } => write!(
                f,
                "the host speaks plugin protocol {}, this provider {supported}: use a \
                 Terraform (1.0 or later) or OpenTofu that speaks one of them",
                join(offered)
            ),
            HandshakeError::BadForcedVersion { value, offered } => write!(
                f,
                "{FORCE_PROTOCOL}={value:?}: this provider serves {supported}{}",
                if offered.is_empty() {
                    String::new()
                } else {
                    format!(" and the host speaks {}", join(offered))
                }
            ),
            HandshakeError::BadSetting { name, value } => {
                write!(f, "{name}={value:?} is not a valid setting")
            }
        }
    }
}

impl std::error::Error for HandshakeError {}

fn join(versions: &[u32]) -> String {
    let words: Vec<String> = versions.iter().map(u32::to_string).collect();
    words.join(", ")
}

/// Reads the handshake from the environment (`env` looks a variable up).
pub fn settings(env: impl Fn(&str) -> Option<String>) -> Result<Settings, HandshakeError> {
    if env(MAGIC_COOKIE_KEY).as_deref() != Some(MAGIC_COOKIE_VALUE) {
        return Err(HandshakeError::NotAPluginHost);
    }
    let offered = offered_versions(env("PLUGIN_PROTOCOL_VERSIONS").as_deref());
    let protocol = match env(FORCE_PROTOCOL).filter(|value| !value.trim().is_empty()) {
        Some(value) => forced(&value, &offered)?,
        None => negotiate(&offered)?,
    };
    let port = |name: &'static str| -> Result<u16, HandshakeError> {
        match env(name) {
            None => Ok(0),
            Some(value) if value.trim().is_empty() => Ok(0),
            Some(value) => value
                .trim()
                .parse()
                .map_err(|_| HandshakeError::BadSetting { name, value }),
        }
    };
    let ports = (port("PLUGIN_MIN_PORT")?, port("PLUGIN_MAX_PORT")?);
    if ports.1 != 0 && ports.0 > ports.1 {
        return Err(HandshakeError::BadSetting {
            name: "PLUGIN_MIN_PORT",
            value: format!("{} (above PLUGIN_MAX_PORT {})", ports.0, ports.1),
        });
    }
    let nonempty = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    Ok(Settings {
        protocol,
        ports,
        unix_socket_dir: nonempty("PLUGIN_UNIX_SOCKET_DIR"),
        client_cert: nonempty("PLUGIN_CLIENT_CERT"),
    })
}

/// The versions in `PLUGIN_PROTOCOL_VERSIONS` (a comma list; what is not a number is
/// skipped, as go-plugin does).
pub fn offered_versions(list: Option<&str>) -> Vec<u32> {
    let mut versions: Vec<u32> = list
        .unwrap_or_default()
        .split(',')
        .filter_map(|part| part.trim().parse().ok())
        .collect();
    versions.sort_unstable();
    versions.dedup();
    versions
}

/// The highest version both sides speak; with no list (an old host), the highest this
/// provider serves.
pub fn negotiate(offered: &[u32]) -> Result<u32, HandshakeError> {
    if offered.is_empty() {
        return Ok(SUPPORTED[SUPPORTED.len() - 1]);
    }
    SUPPORTED
        .iter()
        .rev()
        .copied()
        .find(|version| offered.contains(version))
        .ok_or_else(|| HandshakeError::NoCommonVersion {
            offered: offered.to_vec(),
        })
}

fn forced(value: &str, offered: &[u32]) -> Result<u32, HandshakeError> {
    let bad = || HandshakeError::BadForcedVersion {
        value: value.to_string(),
        offered: offered.to_vec(),
    };
    let version: u32 = value.trim().parse().map_err(|_| bad())?;
    if !SUPPORTED.contains(&version) || !(offered.is_empty() || offered.contains(&version)) {
        return Err(bad());
    }
    Ok(version)
}

/// Where the provider listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(String),
    Tcp(std::net::SocketAddr),
}

/// The line announced on stdout: `1|PROTOCOL|NETWORK|ADDRESS|grpc|CERT`, with the
/// server's certificate (DER) in base64 without padding, or nothing without TLS.
pub fn announcement(protocol: u32, address: &Address, server_cert_der: Option<&[u8]>) -> String {
    use base64::Engine;
    let (network, address) = match address {
        Address::Unix(path) => ("unix", path.clone()),
        Address::Tcp(address) => ("tcp", address.to_string()),
    };
    let cert = server_cert_der
        .map(|der| base64::engine::general_purpose::STANDARD_NO_PAD.encode(der))
        .unwrap_or_default();
    format!("1|{protocol}|{network}|{address}|grpc|{cert}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        move |name| map.get(name).map(|value| value.to_string())
    }

    const COOKIE: (&str, &str) = (MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE);

    #[test]
    fn the_highest_version_both_speak_is_served() {
        let cases: &[(&str, Result<u32, Vec<u32>>)] = &[
            ("5", Ok(5)),
            ("6", Ok(6)),
            ("5,6", Ok(6)),
            ("6,5", Ok(6)),
            (" 5 , 6 ", Ok(6)),
            ("4,5", Ok(5)),
            ("6,7", Ok(6)),
            ("7", Err(vec![7])),
            ("4,7", Err(vec![4, 7])),
            // go-plugin skips what is not a number.
            ("x,5", Ok(5)),
            // No list (an old host): the highest this provider serves.
            ("", Ok(6)),
        ];
        for (offered, want) in cases {
            let got =
                settings(env(&[COOKIE, ("PLUGIN_PROTOCOL_VERSIONS", offered)])).map(|s| s.protocol);
            let want = want
                .clone()
                .map_err(|offered| HandshakeError::NoCommonVersion { offered });
            assert_eq!(got, want, "offered {offered:?}");
        }
    }

    #[test]
    fn a_forced_version_must_be_served_and_offered() {
        let cases: &[(&str, &str, Result<u32, ()>)] = &[
            ("5,6", "5", Ok(5)),
            ("5,6", "6", Ok(6)),
            ("6", "5", Err(())),
            ("5,6", "7", Err(())),
            ("5,6", "five", Err(())),
            ("", "5", Ok(5)),
            // Empty: not forced.
            ("5,6", "", Ok(6)),
        ];
        for (offered, force, want) in cases {
            let got = settings(env(&[
                COOKIE,
                ("PLUGIN_PROTOCOL_VERSIONS", offered),
                (FORCE_PROTOCOL, force),
            ]));
            match (want, &got) {
                (Ok(version), Ok(s)) => assert_eq!(s.protocol, *version, "{offered} {force}"),
                (Err(()), Err(HandshakeError::BadForcedVersion { value, .. })) => {
                    assert_eq!(value, force)
                }
                _ => panic!("offered {offered:?}, forced {force:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn without_the_cookie_it_says_it_is_a_plugin() {
        for pairs in [
            vec![],
            vec![(MAGIC_COOKIE_KEY, "wrong")],
            vec![("PLUGIN_PROTOCOL_VERSIONS", "5,6")],
        ] {
            let error = settings(env(&pairs)).unwrap_err();
            assert_eq!(error, HandshakeError::NotAPluginHost);
            assert!(error.to_string().contains("This binary is a plugin"));
        }
    }

    #[test]
    fn ports_and_paths_are_read_as_go_plugin_sends_them() {
        let s = settings(env(&[
            COOKIE,
            ("PLUGIN_PROTOCOL_VERSIONS", "5,6"),
            ("PLUGIN_MIN_PORT", "10000"),
            ("PLUGIN_MAX_PORT", "25000"),
            ("PLUGIN_UNIX_SOCKET_DIR", "/run/tf"),
            ("PLUGIN_CLIENT_CERT", "-----BEGIN CERTIFICATE-----"),
        ]))
        .unwrap();
        assert_eq!(s.ports, (10000, 25000));
        assert_eq!(s.unix_socket_dir.as_deref(), Some("/run/tf"));
        assert!(s.client_cert.is_some());
        // Unset or zero: any free port.
        let s = settings(env(&[
            COOKIE,
            ("PLUGIN_MIN_PORT", "0"),
            ("PLUGIN_MAX_PORT", "0"),
        ]))
        .unwrap();
        assert_eq!(s.ports, (0, 0));
        assert_eq!(settings(env(&[COOKIE])).unwrap().ports, (0, 0));
        for (name, min, max) in [
            ("PLUGIN_MIN_PORT", "high", "25000"),
            ("PLUGIN_MAX_PORT", "10000", "70000"),
            ("PLUGIN_MIN_PORT", "26000", "25000"),
        ] {
            let error = settings(env(&[
                COOKIE,
                ("PLUGIN_MIN_PORT", min),
                ("PLUGIN_MAX_PORT", max),
            ]))
            .unwrap_err();
            assert!(
                matches!(&error, HandshakeError::BadSetting { name: n, .. } if *n == name),
                "{min}..{max}: {error:?}"
            );
        }
    }

    #[test]
    fn the_announcement_is_go_plugins_line() {
        let unix = Address::Unix("/tmp/plugin123".into());
        assert_eq!(
            announcement(6, &unix, None),
            "1|6|unix|/tmp/plugin123|grpc|"
        );
        let tcp = Address::Tcp("127.0.0.1:10001".parse().unwrap());
        // Base64 without padding: 4 bytes are 6 characters, not 8.
        assert_eq!(
            announcement(5, &tcp, Some(&[1, 2, 3, 4])),
            "1|5|tcp|127.0.0.1:10001|grpc|AQIDBA"
        );
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let no_common = HandshakeError::NoCommonVersion { offered: vec![7] }.to_string();
        assert!(
            no_common.contains("7") && no_common.contains("5, 6"),
            "{no_common}"
        );
        let forced = HandshakeError::BadForcedVersion {
            value: "4".into(),
            offered: vec![5, 6],
        }
        .to_string();
        assert!(
            forced.contains(FORCE_PROTOCOL) && forced.contains("\"4\""),
            "{forced}"
        );
    }
}
