//! fleetform's EC2 machine pool, on `aws-sdk-ec2`.
//!
//! One [`Ec2Pool`] serves one `[[location]]` of fleetformd's configuration whose driver is
//! `aws`. It knows nothing of zones or the store: it launches one tagged instance per
//! fleetform machine, terminates instances, and keeps a short-lived inventory of the
//! instances tagged for its cluster (one paginated `DescribeInstances` per refresh), which
//! fleetformd uses for liveness, adoption after a restart and the orphan sweep.
//!
//! This crate is the only one that compiles the AWS SDK, so changes elsewhere never
//! rebuild it. The SDK is built without its default features (rustls on ring, no aws-lc,
//! no SSO).
//!
//! Safety rules it keeps:
//! - No client exists unless a location names the `aws` driver, and with static
//!   credentials configured the credential chain (which may probe the instance-metadata
//!   service) is never built.
//! - Every `RunInstances` carries the machine id as `ClientToken`, so the SDK's own retries
//!   cannot buy twice; every instance carries the machine id as a tag, so an instance whose
//!   launch outcome was lost (a crash, a timeout) is found again by [`Ec2Pool::find_machine`]
//!   or swept.

mod errors;
mod pool;
mod settings;
mod user_data;

pub use errors::{classify, AwsError, ErrorClass};
pub use pool::{Ec2Pool, Instance, InstanceState, LaunchSpec};
pub use settings::{Ec2Settings, RetrySettings, StaticCredentials};
pub use user_data::{agent_env, render_user_data, AgentBootstrap};

/// The tag every instance of a fleetform cluster carries; its value is the cluster name.
pub const TAG_CLUSTER: &str = "fleetform:cluster";
/// The fleetform machine id an instance was launched for.
pub const TAG_MACHINE: &str = "fleetform:machine-id";
/// The fleet, zone and data center of the machine.
pub const TAG_FLEET: &str = "fleetform:fleet";
pub const TAG_ZONE: &str = "fleetform:zone";
pub const TAG_DATA_CENTER: &str = "fleetform:data-center";
