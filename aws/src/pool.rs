//! [`Ec2Pool`]: the EC2 calls of one location, and the inventory of its cluster.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_credential_types::Credentials;
use aws_sdk_ec2::config::retry::{ClassifyRetry, RetryAction, RetryConfig};
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Region};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::operation::run_instances::RunInstancesError;
use aws_sdk_ec2::types::{
    Filter, IamInstanceProfileSpecification, InstanceStateName, InstanceType, ResourceType, Tag,
    TagSpecification,
};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use base64::Engine as _;

use crate::errors::{classify, AwsError, ErrorClass};
use crate::settings::Ec2Settings;
use crate::user_data::{render_user_data, AgentBootstrap};
use crate::{TAG_CLUSTER, TAG_DATA_CENTER, TAG_FLEET, TAG_MACHINE, TAG_ZONE};

/// How long a launched instance counts as alive while no listing has shown it yet (EC2's
/// read-after-write is eventually consistent). Once listed, or asked to terminate, only
/// listings count.
const LAUNCH_GRACE: Duration = Duration::from_secs(120);

/// How often a terminate request for the same instance is sent again.
const TERMINATE_RESEND: Duration = Duration::from_secs(30);

/// One machine to launch.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub machine_id: String,
    pub instance_type: String,
    pub fleet_id: String,
    pub zone_id: String,
    pub data_center: String,
    pub bootstrap: AgentBootstrap,
}

/// An EC2 instance's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Stopping,
    Stopped,
    Terminated,
    Unknown,
}

impl InstanceState {
    fn from_sdk(name: Option<&InstanceStateName>) -> Self {
        match name {
            Some(InstanceStateName::Pending) => InstanceState::Pending,
            Some(InstanceStateName::Running) => InstanceState::Running,
            Some(InstanceStateName::ShuttingDown) => InstanceState::ShuttingDown,
            Some(InstanceStateName::Stopping) => InstanceState::Stopping,
            Some(InstanceStateName::Stopped) => InstanceState::Stopped,
            Some(InstanceStateName::Terminated) => InstanceState::Terminated,
            _ => InstanceState::Unknown,
        }
    }

    /// Pending or running: the machine can (still) work.
    pub fn is_up(self) -> bool {
        matches!(self, InstanceState::Pending | InstanceState::Running)
    }

    /// Shutting down or terminated: nothing more to do about it.
    pub fn is_ending(self) -> bool {
        matches!(
            self,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }
}

/// An instance as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    /// The fleetform machine it was launched for (its `fleetform:machine-id` tag).
    pub machine_id: Option<String>,
    pub state: InstanceState,
    pub instance_type: String,
    pub launched_at_ms: Option<i64>,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    pub tags: BTreeMap<String, String>,
}

impl Instance {
    fn from_sdk(instance: &aws_sdk_ec2::types::Instance) -> Option<Self> {
        let tags: BTreeMap<String, String> = instance
            .tags()
            .iter()
            .filter_map(|tag| Some((tag.key()?.to_string(), tag.value()?.to_string())))
            .collect();
        Some(Instance {
            id: instance.instance_id()?.to_string(),
            machine_id: tags.get(TAG_MACHINE).cloned(),
            state: InstanceState::from_sdk(instance.state().and_then(|state| state.name())),
            instance_type: instance
                .instance_type()
                .map(|t| t.as_str().to_string())
                .unwrap_or_default(),
            launched_at_ms: instance.launch_time().and_then(|t| t.to_millis().ok()),
            private_ip: instance.private_ip_address().map(str::to_string),
            public_ip: instance.public_ip_address().map(str::to_string),
            tags,
        })
    }
}

/// The inventory as of one listing.
#[derive(Debug, Clone)]
struct Snapshot {
    taken: Instant,
    instances: Arc<Vec<Instance>>,
}

/// The EC2 side of one `aws` location.
#[derive(Debug)]
pub struct Ec2Pool {
    client: aws_sdk_ec2::Client,
    settings: Ec2Settings,
    /// Held while listing, so concurrent callers share one `DescribeInstances`.
    inventory: tokio::sync::Mutex<Option<Snapshot>>,
    /// Instances this process launched recently, by id: alive even while a listing
    /// misses them.
    launched: Mutex<HashMap<String, (Instant, Instance)>>,
    /// When a terminate was last sent per instance.
    terminate_sent: Mutex<HashMap<String, Instant>>,
}

/// Capacity errors are answers, not failures: the SDK must not retry them (EC2 sends
/// `InsufficientInstanceCapacity` with a 500, which the standard classifier would retry);
/// the next machine model is tried instead.
#[derive(Debug)]
struct CapacityIsFinal;

impl ClassifyRetry for CapacityIsFinal {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let Some(Err(error)) = ctx.output_or_error() else {
            return RetryAction::NoActionIndicated;
        };
        let code = error
            .as_operation_error()
            .and_then(|error| error.downcast_ref::<RunInstancesError>())
            .and_then(|error| error.code());
        if code.is_some() && classify(code, None) == ErrorClass::Capacity {
            RetryAction::RetryForbidden
        } else {
            RetryAction::NoActionIndicated
        }
    }

    fn name(&self) -> &'static str {
        "fleetform: capacity errors are final"
    }
}

impl Ec2Pool {
    /// Builds the EC2 client of a location. With static credentials nothing else is
    /// consulted; without them, the standard AWS credential chain (environment first).
    pub async fn connect(settings: Ec2Settings) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let retry = &settings.retry;
        let retry_config = RetryConfig::standard()
            .with_max_attempts(retry.max_attempts.max(1))
            .with_initial_backoff(retry.initial_backoff)
            .with_max_backoff(retry.max_backoff);
        let timeout_config = TimeoutConfig::builder()
            .connect_timeout(retry.connect_timeout)
            .operation_attempt_timeout(retry.attempt_timeout)
            .operation_timeout(retry.operation_timeout)
            .build();
        let region = Region::new(settings.region.clone());
        let builder = match &settings.credentials {
            Some(credentials) => aws_sdk_ec2::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .credentials_provider(Credentials::new(
                    credentials.access_key_id.clone(),
                    credentials.secret_access_key.clone(),
                    None,
                    None,
                    "fleetform-config",
                )),
            None => {
                let shared = aws_config::defaults(BehaviorVersion::latest())
                    .region(region.clone())
                    .http_client(http.clone())
                    .load()
                    .await;
                aws_sdk_ec2::config::Builder::from(&shared)
            }
        };
        let mut builder = builder
            .region(region)
            .http_client(http)
            .retry_config(retry_config)
            .timeout_config(timeout_config)
            .retry_classifier(CapacityIsFinal);
        if let Some(url) = &settings.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        Ec2Pool {
            client: aws_sdk_ec2::Client::from_conf(builder.build()),
            settings,
            inventory: tokio::sync::Mutex::new(None),
            launched: Mutex::new(HashMap::new()),
            terminate_sent: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &Ec2Settings {
        &self.settings
    }

    /// The tags of a machine's instance: the location's own, then fleetform's (which win).
    fn tags(&self, spec: &LaunchSpec) -> Vec<Tag> {
        let mut tags = self.settings.tags.clone();
        for (key, value) in [
            ("Name", format!("fleetform-{}", spec.machine_id)),
            (TAG_CLUSTER, self.settings.cluster.clone()),
            (TAG_MACHINE, spec.machine_id.clone()),
            (TAG_FLEET, spec.fleet_id.clone()),
            (TAG_ZONE, spec.zone_id.clone()),
            (TAG_DATA_CENTER, spec.data_center.clone()),
        ] {
            tags.insert(key.to_string(), value);
        }
        tags.into_iter()
            .map(|(key, value)| Tag::builder().key(key).value(value).build())
            .collect()
    }

    /// Launches one instance for a machine. The machine id is the `ClientToken`, so the
    /// SDK's retries of this call cannot start a second instance.
    pub async fn launch(&self, spec: &LaunchSpec) -> Result<Instance, AwsError> {
        let tags = self.tags(spec);
        let user_data =
            base64::engine::general_purpose::STANDARD.encode(render_user_data(&spec.bootstrap));
        let mut request = self
            .client
            .run_instances()
            .image_id(&self.settings.ami)
            .instance_type(InstanceType::from(spec.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .client_token(&spec.machine_id)
            .user_data(user_data)
            .set_security_group_ids(
                (!self.settings.security_group_ids.is_empty())
                    .then(|| self.settings.security_group_ids.clone()),
            )
            .set_subnet_id(self.settings.subnet_id.clone())
            .set_key_name(self.settings.key_name.clone());
        if let Some(profile) = &self.settings.instance_profile {
            let spec = IamInstanceProfileSpecification::builder();
            request = request.iam_instance_profile(if profile.starts_with("arn:") {
                spec.arn(profile).build()
            } else {
                spec.name(profile).build()
            });
        }
        for resource in [ResourceType::Instance, ResourceType::Volume] {
            request = request.tag_specifications(
                TagSpecification::builder()
                    .resource_type(resource)
                    .set_tags(Some(tags.clone()))
                    .build(),
            );
        }
        let output = request
            .send()
            .await
            .map_err(|error| AwsError::from_sdk("RunInstances", error))?;
        let instance = output
            .instances()
            .iter()
            .find_map(Instance::from_sdk)
            .ok_or_else(|| AwsError {
                operation: "RunInstances",
                class: ErrorClass::Transient,
                code: None,
                message: "the answer names no instance".into(),
            })?;
        self.launched
            .lock()
            .expect("launched lock")
            .insert(instance.id.clone(), (Instant::now(), instance.clone()));
        Ok(instance)
    }

    /// Asks EC2 to terminate an instance. Repeated calls within a short time send nothing
    /// (the reconciler asks on every pass until the instance is gone).
    pub async fn terminate(&self, instance_id: &str) -> Result<(), AwsError> {
        self.launched
            .lock()
            .expect("launched lock")
            .remove(instance_id);
        {
            let mut sent = self.terminate_sent.lock().expect("terminate lock");
            let now = Instant::now();
            sent.retain(|_, at| now.duration_since(*at) < TERMINATE_RESEND);
            if sent.contains_key(instance_id) {
                return Ok(());
            }
            sent.insert(instance_id.to_string(), now);
        }
        let result = self
            .client
            .terminate_instances()
            .instance_ids(instance_id)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if error.code() == Some("InvalidInstanceID.NotFound") => Ok(()),
            Err(error) => {
                self.terminate_sent
                    .lock()
                    .expect("terminate lock")
                    .remove(instance_id);
                Err(AwsError::from_sdk("TerminateInstances", error))
            }
        }
    }

    /// The cluster's instances that are not terminated, listed again when the last listing
    /// is older than `max_age`.
    pub async fn inventory(&self, max_age: Duration) -> Result<Arc<Vec<Instance>>, AwsError> {
        let mut snapshot = self.inventory.lock().await;
        if let Some(current) = snapshot.as_ref() {
            if current.taken.elapsed() <= max_age {
                return Ok(current.instances.clone());
            }
        }
        let taken = Instant::now();
        let instances = Arc::new(
            self.describe(vec![
                Filter::builder()
                    .name(format!("tag:{TAG_CLUSTER}"))
                    .values(&self.settings.cluster)
                    .build(),
                not_terminated(),
            ])
            .await?,
        );
        {
            // Listed once, an instance is judged by the listings from then on.
            let mut launched = self.launched.lock().expect("launched lock");
            for instance in instances.iter() {
                launched.remove(&instance.id);
            }
        }
        *snapshot = Some(Snapshot {
            taken,
            instances: instances.clone(),
        });
        Ok(instances)
    }

    /// Whether an instance is up, by the inventory (at most `inventory_max_age` old). An
    /// instance launched moments ago that the listing does not show yet counts as up.
    pub async fn is_up(&self, instance_id: &str) -> Result<bool, AwsError> {
        let inventory = self.inventory(self.settings.inventory_max_age).await?;
        if let Some(instance) = inventory.iter().find(|i| i.id == instance_id) {
            return Ok(instance.state.is_up());
        }
        let mut launched = self.launched.lock().expect("launched lock");
        launched.retain(|_, (at, _)| at.elapsed() < LAUNCH_GRACE);
        Ok(launched.contains_key(instance_id))
    }

    /// The cluster's live instances tagged for `machine_id`, asked of EC2 now: how a
    /// launch whose answer was lost (a crash, a timeout) is found again.
    pub async fn find_machine(&self, machine_id: &str) -> Result<Vec<Instance>, AwsError> {
        self.describe(vec![
            Filter::builder()
                .name(format!("tag:{TAG_CLUSTER}"))
                .values(&self.settings.cluster)
                .build(),
            Filter::builder()
                .name(format!("tag:{TAG_MACHINE}"))
                .values(machine_id)
                .build(),
            not_terminated(),
        ])
        .await
    }

    async fn describe(&self, filters: Vec<Filter>) -> Result<Vec<Instance>, AwsError> {
        let mut pages = self
            .client
            .describe_instances()
            .set_filters(Some(filters))
            .max_results(1000)
            .into_paginator()
            .send();
        let mut instances = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| AwsError::from_sdk("DescribeInstances", error))?;
            for reservation in page.reservations() {
                instances.extend(
                    reservation
                        .instances()
                        .iter()
                        .filter_map(Instance::from_sdk),
                );
            }
        }
        Ok(instances)
    }
}

fn not_terminated() -> Filter {
    Filter::builder()
        .name("instance-state-name")
        .values("pending")
        .values("running")
        .values("shutting-down")
        .values("stopping")
        .values("stopped")
        .build()
}
