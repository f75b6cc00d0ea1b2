//! Server configuration: the `--config` TOML (locations and their drivers) and the
//! settings `run` needs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::machines::local::LocalDriver;
use crate::machines::{Location, Locations};
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationConfig {
    pub name: String,
    /// `local` (more drivers come with their issues).
    pub driver: String,
}

impl ConfigFile {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Internal(format!("read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Internal(format!("{}: {e}", path.display())))
    }
}

/// The locations this server offers: those of the config file, or `local` without one.
pub fn locations(config: &ServerConfig) -> Result<Locations> {
    let file = match &config.config_file {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile {
            locations: vec![LocationConfig {
                name: "local".into(),
                driver: "local".into(),
            }],
        },
    };
    let machines_dir = config.data_dir.join("machines");
    let mut locations = Locations::new();
    for location in file.locations {
        let driver = match location.driver.as_str() {
            "local" => Arc::new(LocalDriver::new(
                config.agent_bin.clone(),
                machines_dir.clone(),
            )),
            other => {
                return Err(Error::Internal(format!(
                "location {:?}: driver {other:?} is not available in this build (available: local)",
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
