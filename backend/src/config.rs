//! Server configuration: the `--config` TOML (locations and their drivers) and the
//! settings `run` needs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::machines::local::LocalDriver;
use crate::machines::sim::{SimSettings, SimWorld};
use crate::machines::{Location, Locations, MachineDriver};
use crate::{Error, Result};

/// Everything [`crate::server::run`] needs besides its socket.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the SQLite file and the local machines' work directories live.
    pub data_dir: PathBuf,
    /// The admin token (`Authorization: Bearer`).
    pub admin_token: String,
    /// The `fleetform-agent` binary the `local` driver starts.
    pub agent_bin: PathBuf,
    /// The `--config` TOML, if any.
    pub config_file: Option<PathBuf>,
    /// How often agents must sync; three missed intervals mark a machine unhealthy.
    pub heartbeat_interval: Duration,
    /// How often the reconciler revisits every zone even when nothing woke it.
    pub reconcile_interval: Duration,
}

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, rename = "location")]
    pub locations: Vec<LocationConfig>,
}

/// One `[[location]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationConfig {
    pub name: String,
    /// `local` or `sim` (more drivers come with their issues).
    pub driver: String,
    /// `sim`: seconds from launch until a machine registers (default 1).
    pub boot_seconds: Option<f64>,
    /// `sim`: seconds from a process's start until it is READY (default 0.2).
    pub start_seconds: Option<f64>,
    /// `sim`: sessions end by themselves after this many seconds (default: only through
    /// `POST /v1/sessions/{id}/end`).
    pub session_seconds: Option<f64>,
    /// `sim`: seconds a terminated machine takes to disappear (default 0.5).
    pub shutdown_seconds: Option<f64>,
    /// `sim`: seconds between reports of a machine with nothing new (default 60).
    pub heartbeat_seconds: Option<f64>,
    /// `sim`: instance types the simulated cloud has no capacity for.
    #[serde(default)]
    pub unavailable_instance_types: Vec<String>,
    /// `sim`: most machines the location runs at once.
    pub max_machines: Option<u32>,
}

impl LocationConfig {
    /// The `sim` settings of this table, checked.
    pub fn sim_settings(&self) -> Result<SimSettings> {
        let defaults = SimSettings::default();
        let seconds = |key: &str, value: Option<f64>, default: Duration| -> Result<Duration> {
            match value {
                None => Ok(default),
                Some(value) => Duration::try_from_secs_f64(value).map_err(|_| {
                    Error::Internal(format!(
                        "location {:?}: {key} must be a number of seconds >= 0, got {value}",
                        self.name
                    ))
                }),
            }
        };
        Ok(SimSettings {
            boot: seconds("boot_seconds", self.boot_seconds, defaults.boot)?,
            start: seconds("start_seconds", self.start_seconds, defaults.start)?,
            session: match self.session_seconds {
                None => None,
                some => Some(seconds("session_seconds", some, Duration::ZERO)?),
            },
            shutdown: seconds("shutdown_seconds", self.shutdown_seconds, defaults.shutdown)?,
            heartbeat: seconds(
                "heartbeat_seconds",
                self.heartbeat_seconds,
                defaults.heartbeat,
            )?
            .max(Duration::from_millis(100)),
            unavailable_instance_types: self.unavailable_instance_types.iter().cloned().collect(),
            max_machines: self.max_machines,
        })
    }

    /// The `sim` settings this table sets, by name: refused on another driver.
    fn sim_keys(&self) -> Vec<&'static str> {
        [
            ("boot_seconds", self.boot_seconds.is_some()),
            ("start_seconds", self.start_seconds.is_some()),
            ("session_seconds", self.session_seconds.is_some()),
            ("shutdown_seconds", self.shutdown_seconds.is_some()),
            ("heartbeat_seconds", self.heartbeat_seconds.is_some()),
            (
                "unavailable_instance_types",
                !self.unavailable_instance_types.is_empty(),
            ),
            ("max_machines", self.max_machines.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }
}

impl ConfigFile {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Internal(format!("read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Internal(format!("{}: {e}", path.display())))
    }
}

/// The locations this server offers: those of the config file, or `local` and `sim`
/// (default settings) without one. `sim` locations are driven by `sim`.
pub fn locations(config: &ServerConfig, sim: &SimWorld) -> Result<Locations> {
    let file = match &config.config_file {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile {
            locations: vec![
                LocationConfig {
                    name: "local".into(),
                    driver: "local".into(),
                    ..LocationConfig::default()
                },
                LocationConfig {
                    name: "sim".into(),
                    driver: "sim".into(),
                    ..LocationConfig::default()
                },
            ],
        },
    };
    let machines_dir = config.data_dir.join("machines");
    let mut locations = Locations::new();
    for location in file.locations {
        let sim_keys = location.sim_keys();
        if location.driver != "sim" && !sim_keys.is_empty() {
            return Err(Error::Internal(format!(
                "location {:?}: {} is only for driver = \"sim\", not {:?}",
                location.name,
                sim_keys.join(", "),
                location.driver
            )));
        }
        let driver: Arc<dyn MachineDriver> = match location.driver.as_str() {
            "local" => Arc::new(LocalDriver::new(
                config.agent_bin.clone(),
                machines_dir.clone(),
            )),
            "sim" => Arc::new(sim.driver(&location.name, location.sim_settings()?)),
            other => {
                return Err(Error::Internal(format!(
                "location {:?}: driver {other:?} is not available in this build (available: local, sim)",
                location.name
            )))
            }
        };
        let name = location.name.clone();
        if locations
            .insert(name.clone(), Location { name, driver })
            .is_some()
        {
            return Err(Error::Internal(format!(
                "location {:?} is configured twice",
                location.name
            )));
        }
    }
    Ok(locations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> LocationConfig {
        let mut file: ConfigFile = toml::from_str(text).unwrap();
        file.locations.remove(0)
    }

    #[test]
    fn sim_settings_parse_with_defaults() {
        let location = parse(
            r#"
            [[location]]
            name = "sim-eu"
            driver = "sim"
            boot_seconds = 0.05
            unavailable_instance_types = ["big"]
            max_machines = 3
            "#,
        );
        let settings = location.sim_settings().unwrap();
        assert_eq!(settings.boot, Duration::from_millis(50));
        assert_eq!(settings.start, SimSettings::default().start);
        assert_eq!(settings.session, None);
        assert!(settings.unavailable_instance_types.contains("big"));
        assert_eq!(settings.max_machines, Some(3));
    }

    #[test]
    fn bad_sim_settings_are_refused() {
        let negative = parse("[[location]]\nname = \"s\"\ndriver = \"sim\"\nstart_seconds = -1\n");
        let error = negative.sim_settings().unwrap_err().to_string();
        assert!(error.contains("start_seconds"), "{error}");
        let on_local = parse("[[location]]\nname = \"l\"\ndriver = \"local\"\nboot_seconds = 1\n");
        assert_eq!(on_local.sim_keys(), vec!["boot_seconds"]);
        assert!(toml::from_str::<ConfigFile>(
            "[[location]]\nname = \"s\"\ndriver = \"sim\"\nboot_secs = 1\n"
        )
        .is_err());
    }
}
