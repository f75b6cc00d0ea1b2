//! Server configuration: the `--config` TOML (locations and their drivers) and the
//! settings `run` needs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "aws")]
use fleetform_aws::{Ec2Pool, Ec2Settings, RetrySettings, StaticCredentials};
use serde::Deserialize;

#[cfg(feature = "aws")]
use crate::machines::aws::AwsDriver;
use crate::machines::bare_metal::BareMetalDriver;
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
    /// `--database`; default the SQLite file `fleetform.db` in `data_dir`.
    pub database: Option<crate::store::Database>,
    /// How long ended sessions, exited processes and ended machines are kept
    /// (`--retention-days`); None keeps them all.
    pub retention: Option<Duration>,
    /// Where other replicas reach this one (`--replica-url`); default the address it
    /// listens on.
    pub replica_url: Option<String>,
    /// The URL agents of the machines it launches are given (`--agent-url`: a load
    /// balancer in front of the replicas); default the address it listens on.
    pub agent_url: Option<String>,
    /// How long a zone lease lasts unrenewed (`--lease-ttl-ms`): a dead replica's zones
    /// are taken over within about this plus a quarter of it.
    pub lease_ttl: Duration,
    /// How long `/readyz` answers 503 before a shutting-down replica stops accepting
    /// connections (`--drain-ms`), so load balancers take it out first.
    pub drain: Duration,
}

impl ServerConfig {
    /// A configuration with the defaults for what is not given: no config file, agents
    /// syncing every 2 s, a reconcile pass at least every second, the database in
    /// `data_dir`, 7 days of history.
    pub fn new(data_dir: PathBuf, admin_token: String, agent_bin: PathBuf) -> Self {
        ServerConfig {
            data_dir,
            admin_token,
            agent_bin,
            config_file: None,
            heartbeat_interval: Duration::from_secs(2),
            reconcile_interval: Duration::from_secs(1),
            database: None,
            retention: Some(DEFAULT_RETENTION),
            replica_url: None,
            agent_url: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            drain: Duration::ZERO,
        }
    }

    /// The database the store opens.
    pub fn database(&self) -> crate::store::Database {
        self.database
            .clone()
            .unwrap_or_else(|| crate::store::Database::Sqlite(self.data_dir.join("fleetform.db")))
    }
}

/// A zone lease's life without renewal, unless `--lease-ttl-ms` says.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);

/// History kept without `--retention-days`: a week.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The name this fleetformd's cloud machines are tagged with (`fleetform:cluster`).
    /// Instances of the cluster that no machine of the store owns are terminated, so two
    /// deployments sharing a cloud account need different names. Default `fleetform`.
    pub cluster: Option<String>,
    #[serde(default, rename = "location")]
    pub locations: Vec<LocationConfig>,
}

/// The cluster name without a `cluster` key.
pub const DEFAULT_CLUSTER: &str = "fleetform";

/// One `[[location]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationConfig {
    pub name: String,
    /// `local`, `sim`, `aws` or `bare_metal` (a site of the bare-metal pool: no settings).
    pub driver: String,
    /// `sim`: seconds from launch until a machine registers (default 1). `aws`: about how
    /// long an instance takes to boot and start its agent (default 90), the horizon of
    /// predictive buffer rules.
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
    /// `aws`: the region (required).
    pub region: Option<String>,
    /// `aws`: the image instances boot (required).
    pub ami: Option<String>,
    pub subnet_id: Option<String>,
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    pub key_name: Option<String>,
    /// `aws`: an instance profile name or ARN.
    pub instance_profile: Option<String>,
    /// `aws`: another EC2 endpoint (a VPC endpoint, an emulator).
    pub endpoint_url: Option<String>,
    /// `aws`: extra tags on every instance.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// `aws`: static credentials (both or neither); without them the standard AWS chain.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// `aws`: where user data downloads `fleetform-agent` from (otherwise the AMI has it).
    pub agent_download_url: Option<String>,
    /// `aws`: the URL instances' agents reach fleetformd at (default: the server's own).
    pub server_url: Option<String>,
    /// `aws`: seconds a machine may take until its agent first syncs (default 300).
    pub register_timeout_seconds: Option<f64>,
    /// `aws`: most seconds between two listings of the cluster's instances (default 5).
    pub inventory_seconds: Option<f64>,
    /// `aws`: seconds between two orphan sweeps (default 30).
    pub sweep_seconds: Option<f64>,
    /// `aws`: how EC2 calls are retried.
    pub retry: Option<RetryConfig>,
}

/// `[location.retry]` of an `aws` location: the SDK's standard retry mode (exponential
/// backoff with jitter on throttling, 5xx and timeouts) with these bounds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    pub max_attempts: Option<u32>,
    pub initial_backoff_ms: Option<u64>,
    pub max_backoff_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub attempt_timeout_ms: Option<u64>,
    pub operation_timeout_ms: Option<u64>,
}

/// Which driver each driver-specific key belongs to.
const DRIVER_KEYS: &[(&str, &[&str])] = &[
    ("boot_seconds", &["sim", "aws"]),
    ("start_seconds", &["sim"]),
    ("session_seconds", &["sim"]),
    ("shutdown_seconds", &["sim"]),
    ("heartbeat_seconds", &["sim"]),
    ("unavailable_instance_types", &["sim"]),
    ("max_machines", &["sim"]),
    ("region", &["aws"]),
    ("ami", &["aws"]),
    ("subnet_id", &["aws"]),
    ("security_group_ids", &["aws"]),
    ("key_name", &["aws"]),
    ("instance_profile", &["aws"]),
    ("endpoint_url", &["aws"]),
    ("tags", &["aws"]),
    ("access_key_id", &["aws"]),
    ("secret_access_key", &["aws"]),
    ("agent_download_url", &["aws"]),
    ("server_url", &["aws"]),
    ("register_timeout_seconds", &["aws"]),
    ("inventory_seconds", &["aws"]),
    ("sweep_seconds", &["aws"]),
    ("retry", &["aws"]),
];

impl LocationConfig {
    fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::Internal(format!("location {:?}: {message}", self.name))
    }

    fn seconds(&self, key: &str, value: Option<f64>, default: Duration) -> Result<Duration> {
        match value {
            None => Ok(default),
            Some(value) => Duration::try_from_secs_f64(value).map_err(|_| {
                self.error(format_args!(
                    "{key} must be a number of seconds >= 0, got {value}"
                ))
            }),
        }
    }

    /// The `sim` settings of this table, checked.
    pub fn sim_settings(&self) -> Result<SimSettings> {
        let defaults = SimSettings::default();
        Ok(SimSettings {
            boot: self.seconds("boot_seconds", self.boot_seconds, defaults.boot)?,
            start: self.seconds("start_seconds", self.start_seconds, defaults.start)?,
            session: match self.session_seconds {
                None => None,
                some => Some(self.seconds("session_seconds", some, Duration::ZERO)?),
            },
            shutdown: self.seconds("shutdown_seconds", self.shutdown_seconds, defaults.shutdown)?,
            heartbeat: self
                .seconds(
                    "heartbeat_seconds",
                    self.heartbeat_seconds,
                    defaults.heartbeat,
                )?
                .max(Duration::from_millis(100)),
            unavailable_instance_types: self.unavailable_instance_types.iter().cloned().collect(),
            max_machines: self.max_machines,
        })
    }

    /// The `aws` settings of this table, checked.
    #[cfg(feature = "aws")]
    pub fn aws_settings(&self, cluster: &str) -> Result<AwsSettings> {
        let required = |key: &str, value: &Option<String>| -> Result<String> {
            match value.as_deref().map(str::trim) {
                Some(value) if !value.is_empty() => Ok(value.to_string()),
                _ => Err(self.error(format_args!("{key} is required for driver = \"aws\""))),
            }
        };
        let region = required("region", &self.region)?;
        let ami = required("ami", &self.ami)?;
        let credentials = match (&self.access_key_id, &self.secret_access_key) {
            (Some(access_key_id), Some(secret_access_key)) => Some(StaticCredentials {
                access_key_id: access_key_id.clone(),
                secret_access_key: secret_access_key.clone(),
            }),
            (None, None) => None,
            _ => {
                return Err(self.error(
                    "access_key_id and secret_access_key go together (or neither, for the standard AWS credential chain)",
                ))
            }
        };
        for (key, url) in [
            ("endpoint_url", &self.endpoint_url),
            ("server_url", &self.server_url),
            ("agent_download_url", &self.agent_download_url),
        ] {
            if let Some(url) = url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(self.error(format_args!(
                        "{key} must be an http:// or https:// URL, got {url:?}"
                    )));
                }
            }
        }
        let retry = self.retry.as_ref();
        let defaults = RetrySettings::default();
        let ms =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
        let retry = RetrySettings {
            max_attempts: match retry.and_then(|r| r.max_attempts) {
                Some(0) => return Err(self.error("retry.max_attempts must be at least 1")),
                Some(attempts) => attempts,
                None => defaults.max_attempts,
            },
            initial_backoff: ms(
                retry.and_then(|r| r.initial_backoff_ms),
                defaults.initial_backoff,
            ),
            max_backoff: ms(retry.and_then(|r| r.max_backoff_ms), defaults.max_backoff),
            connect_timeout: ms(
                retry.and_then(|r| r.connect_timeout_ms),
                defaults.connect_timeout,
            ),
            attempt_timeout: ms(
                retry.and_then(|r| r.attempt_timeout_ms),
                defaults.attempt_timeout,
            ),
            operation_timeout: ms(
                retry.and_then(|r| r.operation_timeout_ms),
                defaults.operation_timeout,
            ),
        };
        Ok(AwsSettings {
            ec2: Ec2Settings {
                location: self.name.clone(),
                cluster: cluster.to_string(),
                region,
                ami,
                subnet_id: self.subnet_id.clone(),
                security_group_ids: self.security_group_ids.clone(),
                key_name: self.key_name.clone(),
                instance_profile: self.instance_profile.clone(),
                endpoint_url: self.endpoint_url.clone(),
                tags: self.tags.clone(),
                credentials,
                retry,
                agent_download_url: self.agent_download_url.clone(),
                inventory_max_age: self.seconds(
                    "inventory_seconds",
                    self.inventory_seconds,
                    Duration::from_secs(5),
                )?,
            },
            server_url: self.server_url.clone(),
            boot_estimate: self.seconds(
                "boot_seconds",
                self.boot_seconds,
                Duration::from_secs(90),
            )?,
            register_timeout: self.seconds(
                "register_timeout_seconds",
                self.register_timeout_seconds,
                Duration::from_secs(300),
            )?,
            sweep_interval: self.seconds(
                "sweep_seconds",
                self.sweep_seconds,
                Duration::from_secs(30),
            )?,
        })
    }

    /// Driver-specific keys this table sets that its driver does not take.
    fn foreign_keys(&self) -> Vec<&'static str> {
        let set = |key: &str| match key {
            "boot_seconds" => self.boot_seconds.is_some(),
            "start_seconds" => self.start_seconds.is_some(),
            "session_seconds" => self.session_seconds.is_some(),
            "shutdown_seconds" => self.shutdown_seconds.is_some(),
            "heartbeat_seconds" => self.heartbeat_seconds.is_some(),
            "unavailable_instance_types" => !self.unavailable_instance_types.is_empty(),
            "max_machines" => self.max_machines.is_some(),
            "region" => self.region.is_some(),
            "ami" => self.ami.is_some(),
            "subnet_id" => self.subnet_id.is_some(),
            "security_group_ids" => !self.security_group_ids.is_empty(),
            "key_name" => self.key_name.is_some(),
            "instance_profile" => self.instance_profile.is_some(),
            "endpoint_url" => self.endpoint_url.is_some(),
            "tags" => !self.tags.is_empty(),
            "access_key_id" => self.access_key_id.is_some(),
            "secret_access_key" => self.secret_access_key.is_some(),
            "agent_download_url" => self.agent_download_url.is_some(),
            "server_url" => self.server_url.is_some(),
            "register_timeout_seconds" => self.register_timeout_seconds.is_some(),
            "inventory_seconds" => self.inventory_seconds.is_some(),
            "sweep_seconds" => self.sweep_seconds.is_some(),
            "retry" => self.retry.is_some(),
            _ => false,
        };
        DRIVER_KEYS
            .iter()
            .filter(|(key, drivers)| set(key) && !drivers.contains(&self.driver.as_str()))
            .map(|(key, _)| *key)
            .collect()
    }
}

/// What an `aws` location is built from.
#[cfg(feature = "aws")]
#[derive(Debug, Clone)]
pub struct AwsSettings {
    pub ec2: Ec2Settings,
    pub server_url: Option<String>,
    pub boot_estimate: Duration,
    pub register_timeout: Duration,
    pub sweep_interval: Duration,
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
/// (default settings) without one. `sim` locations are driven by `sim`; an EC2 client is
/// built only for `aws` locations.
pub async fn locations(config: &ServerConfig, sim: &SimWorld) -> Result<Locations> {
    let file = match &config.config_file {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile {
            cluster: None,
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
    let cluster = file.cluster.as_deref().unwrap_or(DEFAULT_CLUSTER);
    if cluster.trim().is_empty() {
        return Err(Error::Internal("cluster must not be empty".into()));
    }
    let machines_dir = config.data_dir.join("machines");
    let mut locations = Locations::new();
    for location in file.locations {
        let foreign = location.foreign_keys();
        if !foreign.is_empty() {
            return Err(location.error(format_args!(
                "{} not taken by driver = {:?}",
                foreign.join(", "),
                location.driver
            )));
        }
        let driver: Arc<dyn MachineDriver> = match location.driver.as_str() {
            "local" => Arc::new(LocalDriver::new(
                config.agent_bin.clone(),
                machines_dir.clone(),
            )),
            "sim" => Arc::new(sim.driver(&location.name, location.sim_settings()?)),
            "bare_metal" => Arc::new(BareMetalDriver::default()),
            #[cfg(not(feature = "aws"))]
            "aws" => {
                return Err(location.error(
                    "driver \"aws\" is not in this build of fleetformd (built without the cargo feature `aws`)",
                ))
            }
            #[cfg(feature = "aws")]
            "aws" => {
                let settings = location.aws_settings(cluster)?;
                Arc::new(AwsDriver::new(
                    Ec2Pool::connect(settings.ec2).await,
                    settings.server_url,
                    settings.boot_estimate,
                    settings.register_timeout,
                    settings.sweep_interval,
                ))
            }
            other => {
                return Err(location.error(format_args!(
                    "driver {other:?} is not available (available: local, sim, aws, bare_metal)"
                )))
            }
        };
        let name = location.name.clone();
        if locations
            .insert(name.clone(), Location { name, driver })
            .is_some()
        {
            return Err(location.error("configured twice"));
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
        assert_eq!(on_local.foreign_keys(), vec!["boot_seconds"]);
        let on_bare_metal = parse(
            "[[location]]\nname = \"fra\"\ndriver = \"bare_metal\"\nregion = \"eu-central-1\"\n",
        );
        assert_eq!(on_bare_metal.foreign_keys(), vec!["region"]);
        assert!(toml::from_str::<ConfigFile>(
            "[[location]]\nname = \"s\"\ndriver = \"sim\"\nboot_secs = 1\n"
        )
        .is_err());
    }

    #[cfg(feature = "aws")]
    #[test]
    fn aws_settings_parse_and_are_checked() {
        let location = parse(
            r#"
            [[location]]
            name = "us-east-1"
            driver = "aws"
            region = "us-east-1"
            ami = "ami-1e749f67"
            security_group_ids = ["sg-1"]
            tags = { team = "platform" }
            access_key_id = "test"
            secret_access_key = "s3cret"
            endpoint_url = "http://127.0.0.1:5000"
            register_timeout_seconds = 10
            [location.retry]
            max_attempts = 8
            initial_backoff_ms = 50
            "#,
        );
        let settings = location.aws_settings("c1").unwrap();
        assert_eq!(settings.ec2.cluster, "c1");
        assert_eq!(settings.ec2.retry.max_attempts, 8);
        assert_eq!(
            settings.ec2.retry.initial_backoff,
            Duration::from_millis(50)
        );
        assert_eq!(
            settings.ec2.retry.max_backoff,
            RetrySettings::default().max_backoff
        );
        assert_eq!(settings.register_timeout, Duration::from_secs(10));
        assert_eq!(settings.boot_estimate, Duration::from_secs(90));
        assert!(settings.ec2.credentials.is_some());
        assert!(!format!("{:?}", settings.ec2.credentials).contains("s3cret"));

        #[rustfmt::skip]
        let bad = [
            ("[[location]]\nname = \"a\"\ndriver = \"aws\"\nregion = \"r\"\n", "ami is required"),
            ("[[location]]\nname = \"a\"\ndriver = \"aws\"\nami = \"x\"\n", "region is required"),
            ("[[location]]\nname = \"a\"\ndriver = \"aws\"\nregion = \"r\"\nami = \"x\"\naccess_key_id = \"k\"\n", "go together"),
            ("[[location]]\nname = \"a\"\ndriver = \"aws\"\nregion = \"r\"\nami = \"x\"\nendpoint_url = \"localhost:1\"\n", "endpoint_url must be"),
            ("[[location]]\nname = \"a\"\ndriver = \"aws\"\nregion = \"r\"\nami = \"x\"\n[location.retry]\nmax_attempts = 0\n", "max_attempts"),
        ];
        for (text, want) in bad {
            let error = parse(text).aws_settings("c").unwrap_err().to_string();
            assert!(error.contains(want), "{text}: {error}");
        }
        let on_sim = parse("[[location]]\nname = \"s\"\ndriver = \"sim\"\nami = \"x\"\n");
        assert_eq!(on_sim.foreign_keys(), vec!["ami"]);
    }

    #[cfg(feature = "aws")]
    #[test]
    fn the_example_config_is_valid() {
        let file: ConfigFile =
            toml::from_str(include_str!("../../examples/server-config/aws.toml")).unwrap();
        let cluster = file.cluster.as_deref().unwrap();
        assert_eq!(file.locations.len(), 3);
        for location in &file.locations {
            assert!(location.foreign_keys().is_empty(), "{}", location.name);
            if location.driver == "aws" {
                let settings = location.aws_settings(cluster).unwrap();
                assert!(
                    settings.ec2.credentials.is_none(),
                    "the example uses the AWS chain"
                );
            }
        }
    }
}
