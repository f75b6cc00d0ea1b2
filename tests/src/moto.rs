//! A real moto EC2 server per test, and an [`InstanceRunner`] that makes its instances "boot":
//! it starts a real `fleetform-agent` for each instance whose user data says how, as the
//! user data would on a VM, and stops it when the instance shuts down.
//!
//! moto comes from `scripts/prereqs.sh` (a virtualenv at `.venv/moto`). It listens on
//! 127.0.0.1 only, validates AMIs and instance types, and takes the static test credentials.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use aws_credential_types::Credentials;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Region};
use aws_sdk_ec2::types::{
    InstanceAttributeName, InstanceType, ResourceType, Tag, TagSpecification,
};
use base64::Engine;

use crate::repo_root;

/// The region every test client and moto use.
pub const REGION: &str = "us-east-1";

/// An Ubuntu AMI in moto's bundled list for us-east-1 (it passes AMI validation).
pub const TEST_AMI: &str = "ami-1e749f67";

/// How long moto may take to answer after it was started (a cold Python import is slow on
/// a loaded machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A moto server on a free 127.0.0.1 port, killed on drop.
pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
    dir: tempfile::TempDir,
    http: reqwest::Client,
    ec2: aws_sdk_ec2::Client,
}

impl Moto {
    /// Starts moto (`FLEETFORM_MOTO_SERVER`, or `.venv/moto/bin/moto_server` in the
    /// repository), waits until it answers and resets it, so it starts with a clean state.
    pub async fn start() -> Result<Moto> {
        let server = match std::env::var_os("FLEETFORM_MOTO_SERVER") {
            Some(path) => PathBuf::from(path),
            None => repo_root().join(".venv/moto/bin/moto_server"),
        };
        if !server.exists() {
            bail!(
                "{} is missing: run scripts/prereqs.sh (it installs moto in .venv/moto), or \
                 point FLEETFORM_MOTO_SERVER at a moto_server",
                server.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("fleetform-moto-")
            .tempdir()?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        let port = free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let mut moto = Moto {
            ec2: moto_client(&url),
            url,
            child: spawn_moto(&server, port, dir.path())?,
            dir,
            http,
        };
        // The port was free when picked, but another process may take it before moto binds
        // it (moto then exits): a few tries, each on a new port.
        let mut tries = 1;
        loop {
            match moto.wait_until_up().await {
                Ok(()) => break,
                Err(error) if tries < 5 && !matches!(moto.child.try_wait(), Ok(None)) => {
                    eprintln!("moto at {} did not start: {error:#}; retrying", moto.url);
                    moto.kill();
                    let port = free_port()?;
                    moto.child = spawn_moto(&server, port, moto.dir.path())?;
                    moto.url = format!("http://127.0.0.1:{port}");
                    moto.ec2 = moto_client(&moto.url);
                    tries += 1;
                }
                Err(error) => return Err(error.context("start moto")),
            }
        }
        moto.reset().await?;
        Ok(moto)
    }

    async fn wait_until_up(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("moto_server exited ({status}); its log:\n{}", self.log());
            }
            let answered = self
                .http
                .get(format!("{}/moto-api/", self.url))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if answered {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "moto did not answer within {START_TIMEOUT:?}; its log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Forgets every resource (`POST /moto-api/reset`).
    pub async fn reset(&self) -> Result<()> {
        self.http
            .post(format!("{}/moto-api/reset", self.url))
            .send()
            .await
            .context("reset moto")?
            .error_for_status()
            .context("reset moto")?;
        Ok(())
    }

    /// moto's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// An EC2 client talking straight to moto (standard retries, a 30 s operation timeout).
    pub fn ec2(&self) -> aws_sdk_ec2::Client {
        self.ec2.clone()
    }

    /// Every instance moto knows, terminated ones included.
    pub async fn instances(&self) -> Result<Vec<MotoInstance>> {
        list_instances(&self.ec2).await
    }

    /// The instances that are neither shutting down nor terminated.
    pub async fn live(&self) -> Result<Vec<MotoInstance>> {
        Ok(self
            .instances()
            .await?
            .into_iter()
            .filter(MotoInstance::is_live)
            .collect())
    }

    /// Runs one instance directly, as someone would behind fleetform's back; its id.
    pub async fn run_untracked_instance(
        &self,
        ami: &str,
        instance_type: &str,
        tags: &[(&str, &str)],
    ) -> Result<String> {
        self.run_instance(ami, instance_type, tags, None).await
    }

    /// Runs one instance directly with the given tags and (plain-text) user data; its id.
    pub async fn run_instance(
        &self,
        ami: &str,
        instance_type: &str,
        tags: &[(&str, &str)],
        user_data: Option<&str>,
    ) -> Result<String> {
        let mut request = self
            .ec2
            .run_instances()
            .image_id(ami)
            .instance_type(InstanceType::from(instance_type))
            .min_count(1)
            .max_count(1);
        if !tags.is_empty() {
            let mut spec = TagSpecification::builder().resource_type(ResourceType::Instance);
            for (key, value) in tags {
                spec = spec.tags(Tag::builder().key(*key).value(*value).build());
            }
            request = request.tag_specifications(spec.build());
        }
        if let Some(user_data) = user_data {
            request =
                request.user_data(base64::engine::general_purpose::STANDARD.encode(user_data));
        }
        let output = request.send().await.context("RunInstances on moto")?;
        output
            .instances()
            .first()
            .and_then(|instance| instance.instance_id())
            .map(str::to_string)
            .context("RunInstances returned no instance")
    }

    /// Terminates `instance_ids` directly.
    pub async fn terminate(&self, instance_ids: &[&str]) -> Result<()> {
        self.ec2
            .terminate_instances()
            .set_instance_ids(Some(instance_ids.iter().map(|id| id.to_string()).collect()))
            .send()
            .await
            .context("TerminateInstances on moto")?;
        Ok(())
    }

    /// Starts the instance runner: every instance that appears boots a real agent built from
    /// its user data (see [`InstanceRunner`]). Needs a tokio runtime.
    pub fn runner(&self, agent_bin: PathBuf, work_root: PathBuf) -> InstanceRunner {
        InstanceRunner::start(self.ec2(), agent_bin, work_root)
    }

    fn kill(&mut self) {
        // moto_server leads its own process group: kill the whole group.
        // SAFETY: kill(2) on the group of a child we have not reaped yet (or that is gone).
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

fn moto_client(url: &str) -> aws_sdk_ec2::Client {
    ec2_client(url, 3, Some(Duration::from_secs(30)))
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("pick a free port")?;
    Ok(listener.local_addr()?.port())
}

fn spawn_moto(server: &Path, port: u16, dir: &Path) -> Result<Child> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(dir.join("moto.log"))?;
    Command::new(server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("MOTO_ENABLE_AMI_VALIDATION", "1")
        .env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("start {}", server.display()))
}

/// An EC2 client for `endpoint_url` (moto, or a [`crate::faults::FaultProxy`] in front of
/// it): static test credentials, no credential chain, no aws-config, plain HTTP.
/// `max_attempts` 1 turns the SDK's retries off.
pub fn ec2_client(
    endpoint_url: &str,
    max_attempts: u32,
    operation_timeout: Option<Duration>,
) -> aws_sdk_ec2::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut timeouts = TimeoutConfig::builder().connect_timeout(Duration::from_secs(5));
    if let Some(timeout) = operation_timeout {
        timeouts = timeouts.operation_timeout(timeout);
    }
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new("test", "test", None, None, "e2e"))
        .endpoint_url(endpoint_url)
        .http_client(http)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(max_attempts.max(1))
                .with_initial_backoff(Duration::from_millis(50)),
        )
        .timeout_config(timeouts.build())
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}

/// One instance as moto describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MotoInstance {
    pub id: String,
    /// `pending`, `running`, `shutting-down`, `terminated`, `stopping` or `stopped`.
    pub state: String,
    pub instance_type: String,
    pub tags: BTreeMap<String, String>,
    pub launched_at: Option<SystemTime>,
}

impl MotoInstance {
    /// Neither shutting down nor terminated.
    pub fn is_live(&self) -> bool {
        !matches!(self.state.as_str(), "shutting-down" | "terminated")
    }
}

/// Every instance `ec2` describes, all states, every page.
async fn list_instances(ec2: &aws_sdk_ec2::Client) -> Result<Vec<MotoInstance>> {
    let mut instances = Vec::new();
    let mut next_token = None;
    loop {
        let page = ec2
            .describe_instances()
            .set_next_token(next_token)
            .send()
            .await
            .context("DescribeInstances on moto")?;
        for instance in page.reservations().iter().flat_map(|r| r.instances()) {
            instances.push(MotoInstance {
                id: instance.instance_id().unwrap_or_default().to_string(),
                state: instance
                    .state()
                    .and_then(|state| state.name())
                    .map(|name| name.as_str().to_string())
                    .unwrap_or_default(),
                instance_type: instance
                    .instance_type()
                    .map(|t| t.as_str().to_string())
                    .unwrap_or_default(),
                tags: instance
                    .tags()
                    .iter()
                    .map(|tag| {
                        (
                            tag.key().unwrap_or_default().to_string(),
                            tag.value().unwrap_or_default().to_string(),
                        )
                    })
                    .collect(),
                launched_at: instance
                    .launch_time()
                    .and_then(|time| SystemTime::try_from(*time).ok()),
            });
        }
        next_token = page
            .next_token()
            .filter(|t| !t.is_empty())
            .map(String::from);
        if next_token.is_none() {
            return Ok(instances);
        }
    }
}

/// How long an agent has after SIGTERM (its instance shutting down) before SIGKILL.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(5);

/// How often the runner looks at moto's instances.
const RUNNER_TICK: Duration = Duration::from_millis(200);

/// Boots moto's instances: for every pending or running instance it has not seen, it reads
/// the user data and starts `<agent> --server URL --token TOKEN --work-dir WORK_ROOT/ID
/// --address 127.0.0.1` from its `FLEETFORM_SERVER=` and `FLEETFORM_AGENT_TOKEN=` lines (in
/// the agent's own process group, stderr to `WORK_ROOT/ID.log`). An instance whose user
/// data lacks them (or names a server off 127.0.0.1) is "unbootable" and runs nothing.
/// When a booted instance stops, shuts down, terminates or vanishes, its agent gets SIGTERM,
/// then SIGKILL after 5 s, as on a VM shutting down. Dropping the runner SIGKILLs every
/// agent's process group.
pub struct InstanceRunner {
    state: Arc<Mutex<RunnerState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct RunnerState {
    /// Instances an agent was started for, in boot order.
    booted: Vec<String>,
    agents: BTreeMap<String, Agent>,
    unbootable: BTreeSet<String>,
    /// Instances seen while boots were held: never booted.
    never_booted: BTreeSet<String>,
    hold_boots: bool,
}

struct Agent {
    pid: i32,
    /// None once reaped.
    child: Option<Child>,
    /// When its instance went away and it got SIGTERM.
    stopping_since: Option<Instant>,
}

impl Agent {
    /// Reaps the agent if it exited.
    fn reap(&mut self) {
        if let Some(child) = &mut self.child {
            if !matches!(child.try_wait(), Ok(None)) {
                self.child = None;
            }
        }
    }

    /// SIGKILLs the agent's process group (it leads it) and reaps it.
    fn kill_group(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the group of a child not yet reaped, so its pid (and
            // group id) cannot have been reused.
            unsafe {
                libc::kill(-self.pid, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

impl InstanceRunner {
    fn start(ec2: aws_sdk_ec2::Client, agent_bin: PathBuf, work_root: PathBuf) -> Self {
        let state = Arc::new(Mutex::new(RunnerState::default()));
        let task = tokio::spawn(run_instances(ec2, agent_bin, work_root, Arc::clone(&state)));
        InstanceRunner { state, task }
    }

    /// Instances an agent was started for, in boot order.
    pub fn booted(&self) -> Vec<String> {
        self.lock().booted.clone()
    }

    /// Instances whose user data did not say how to start an agent.
    pub fn unbootable(&self) -> Vec<String> {
        self.lock().unbootable.iter().cloned().collect()
    }

    /// Instances seen while boots were held (see [`InstanceRunner::hold_boots`]).
    pub fn held(&self) -> Vec<String> {
        self.lock().never_booted.iter().cloned().collect()
    }

    /// The pid of the agent started for `instance_id` (it may have exited since).
    pub fn agent_pid(&self, instance_id: &str) -> Option<i32> {
        self.lock().agents.get(instance_id).map(|agent| agent.pid)
    }

    /// While held, instances that appear are not booted, then or later: they stay
    /// "booting" forever, as a machine whose agent never comes up.
    pub fn hold_boots(&self, hold: bool) {
        self.lock().hold_boots = hold;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RunnerState> {
        self.state.lock().expect("runner state")
    }
}

impl Drop for InstanceRunner {
    fn drop(&mut self) {
        self.task.abort();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for agent in state.agents.values_mut() {
            agent.kill_group();
        }
    }
}

async fn run_instances(
    ec2: aws_sdk_ec2::Client,
    agent_bin: PathBuf,
    work_root: PathBuf,
    state: Arc<Mutex<RunnerState>>,
) {
    if let Err(error) = std::fs::create_dir_all(&work_root) {
        eprintln!("instance runner: create {}: {error}", work_root.display());
    }
    let mut interval = tokio::time::interval(RUNNER_TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let instances = match list_instances(&ec2).await {
            Ok(instances) => instances,
            Err(error) => {
                eprintln!("instance runner: {error:#}");
                continue;
            }
        };
        let states: BTreeMap<&str, &str> = instances
            .iter()
            .map(|i| (i.id.as_str(), i.state.as_str()))
            .collect();

        // Shut down the agents of instances that went away; finish stops under way.
        let to_boot: Vec<String> = {
            let mut guard = state.lock().expect("runner state");
            let RunnerState {
                agents,
                booted,
                unbootable,
                never_booted,
                hold_boots,
            } = &mut *guard;
            for (id, agent) in agents.iter_mut() {
                agent.reap();
                let gone = !matches!(states.get(id.as_str()), Some(&"pending" | &"running"));
                match agent.stopping_since {
                    None if gone => {
                        if agent.child.is_some() {
                            // SAFETY: kill(2) on our unreaped child.
                            unsafe {
                                libc::kill(agent.pid, libc::SIGTERM);
                            }
                        }
                        agent.stopping_since = Some(Instant::now());
                    }
                    Some(since) if since.elapsed() > AGENT_STOP_GRACE => agent.kill_group(),
                    _ => {}
                }
            }
            let mut to_boot = Vec::new();
            for instance in &instances {
                let id = &instance.id;
                if !matches!(instance.state.as_str(), "pending" | "running")
                    || booted.contains(id)
                    || unbootable.contains(id)
                    || never_booted.contains(id)
                {
                    continue;
                }
                if *hold_boots {
                    never_booted.insert(id.clone());
                } else {
                    to_boot.push(id.clone());
                }
            }
            to_boot
        };

        for id in to_boot {
            let boot = match user_data(&ec2, &id).await {
                Ok(user_data) => agent_settings(&user_data),
                Err(error) => {
                    // Try again on the next tick.
                    eprintln!("instance runner: user data of {id}: {error:#}");
                    continue;
                }
            };
            let mut guard = state.lock().expect("runner state");
            match boot {
                Some((server, token)) => {
                    match spawn_agent(&agent_bin, &work_root, &id, &server, &token) {
                        Ok(child) => {
                            eprintln!(
                                "instance runner: {id} booted: agent pid {} for {server}",
                                child.id()
                            );
                            guard.booted.push(id.clone());
                            guard.agents.insert(
                                id,
                                Agent {
                                    pid: child.id() as i32,
                                    child: Some(child),
                                    stopping_since: None,
                                },
                            );
                        }
                        Err(error) => {
                            eprintln!("instance runner: {id}: {error:#}");
                            guard.unbootable.insert(id);
                        }
                    }
                }
                None => {
                    eprintln!(
                        "instance runner: {id} is unbootable: its user data has no \
                         FLEETFORM_SERVER=http://127.0.0.1:... and FLEETFORM_AGENT_TOKEN= lines"
                    );
                    guard.unbootable.insert(id);
                }
            }
        }
    }
}

/// The instance's user data, decoded (empty when it has none).
async fn user_data(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Result<String> {
    let output = ec2
        .describe_instance_attribute()
        .instance_id(instance_id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .context("DescribeInstanceAttribute userData")?;
    let Some(encoded) = output.user_data().and_then(|value| value.value()) else {
        return Ok(String::new());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .context("user data is not base64")?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The server URL and agent token from user data's `FLEETFORM_SERVER=` and
/// `FLEETFORM_AGENT_TOKEN=` lines (at the start of a line). None when either is missing or
/// the server is not on 127.0.0.1: the harness never lets an agent talk anywhere else.
pub fn agent_settings(user_data: &str) -> Option<(String, String)> {
    let mut server = None;
    let mut token = None;
    for line in user_data.lines() {
        let line = line.trim_end();
        if let Some(value) = line.strip_prefix("FLEETFORM_SERVER=") {
            server = Some(unquote(value).to_string());
        } else if let Some(value) = line.strip_prefix("FLEETFORM_AGENT_TOKEN=") {
            token = Some(unquote(value).to_string());
        }
    }
    let (server, token) = (server?, token?);
    let loopback = server
        .strip_prefix("http://127.0.0.1:")
        .or_else(|| server.strip_prefix("http://localhost:"))
        .is_some();
    (loopback && !token.is_empty()).then_some((server, token))
}

fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|rest| rest.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

fn spawn_agent(
    agent_bin: &Path,
    work_root: &Path,
    instance_id: &str,
    server: &str,
    token: &str,
) -> Result<Child> {
    let work_dir = work_root.join(instance_id);
    std::fs::create_dir_all(&work_dir).with_context(|| format!("create {}", work_dir.display()))?;
    let log = File::options()
        .create(true)
        .append(true)
        .open(work_root.join(format!("{instance_id}.log")))?;
    Command::new(agent_bin)
        .arg("--server")
        .arg(server)
        .arg("--token")
        .arg(token)
        .arg("--work-dir")
        .arg(&work_dir)
        .arg("--address")
        .arg("127.0.0.1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("start {}", agent_bin.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_settings_come_from_lines_inside_the_heredoc() {
        let user_data = "#!/bin/sh\nset -eu\ncat >/etc/fleetform-agent.env <<'EOF'\n\
                         FLEETFORM_SERVER=http://127.0.0.1:7400\n\
                         FLEETFORM_AGENT_TOKEN=secret-token\n\
                         EOF\n  FLEETFORM_SERVER=http://127.0.0.1:1\nexec agent\n";
        assert_eq!(
            agent_settings(user_data),
            Some((
                "http://127.0.0.1:7400".to_string(),
                "secret-token".to_string()
            ))
        );
    }

    #[test]
    fn agent_settings_need_both_lines_and_a_loopback_server() {
        assert_eq!(agent_settings(""), None);
        assert_eq!(
            agent_settings("FLEETFORM_SERVER=http://127.0.0.1:1\n"),
            None
        );
        assert_eq!(agent_settings("FLEETFORM_AGENT_TOKEN=t\n"), None);
        assert_eq!(
            agent_settings("FLEETFORM_SERVER=http://10.0.0.1:7400\nFLEETFORM_AGENT_TOKEN=t\n"),
            None
        );
        assert_eq!(
            agent_settings(
                "FLEETFORM_SERVER='http://127.0.0.1:9'\r\nFLEETFORM_AGENT_TOKEN=\"t\"\r\n"
            ),
            Some(("http://127.0.0.1:9".to_string(), "t".to_string()))
        );
    }
}
