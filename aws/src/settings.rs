//! What one `aws` location is configured with.

use std::collections::BTreeMap;
use std::time::Duration;

/// Settings of one `aws` location (`[[location]]` with `driver = "aws"`).
#[derive(Debug, Clone)]
pub struct Ec2Settings {
    /// The location's name (for logs).
    pub location: String,
    /// The cluster name every instance is tagged with; instances of the cluster that no
    /// live machine owns are swept.
    pub cluster: String,
    pub region: String,
    pub ami: String,
    pub subnet_id: Option<String>,
    pub security_group_ids: Vec<String>,
    pub key_name: Option<String>,
    /// An instance profile name, or an ARN (`arn:…`).
    pub instance_profile: Option<String>,
    /// Another EC2 endpoint (an emulator, a VPC endpoint).
    pub endpoint_url: Option<String>,
    /// Extra tags on every instance (fleetform's own tags win on a clash).
    pub tags: BTreeMap<String, String>,
    /// Static credentials; without them the standard AWS chain is used.
    pub credentials: Option<StaticCredentials>,
    pub retry: RetrySettings,
    /// Where user data downloads `fleetform-agent` from; without it the AMI must have it
    /// at `/usr/local/bin/fleetform-agent`.
    pub agent_download_url: Option<String>,
    /// How old the inventory may be before a liveness check lists the instances again.
    pub inventory_max_age: Duration,
}

/// Static credentials (tests, emulators, or a deliberate choice).
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// How the SDK retries throttling (`RequestLimitExceeded`), 5xx and timeouts: standard
/// mode, exponential backoff with full jitter, and timeouts per attempt and per call.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySettings {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// The backoff's base: attempt n waits a random time up to `initial * 2^n`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub connect_timeout: Duration,
    /// One HTTP attempt.
    pub attempt_timeout: Duration,
    /// One call, retries included.
    pub operation_timeout: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(20),
            operation_timeout: Duration::from_secs(90),
        }
    }
}
