//! The fleetformd under test: a release binary started as its own process, on a fresh
//! data directory, listening on a free port of 127.0.0.1, with one `sim` location.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fleetform_api::{Client, EventQuery};

/// The admin token the benchmark starts fleetformd with.
pub const TOKEN: &str = "fleetform-bench-token";

/// The benchmark's simulated location: machines boot in 50 ms and their processes are
/// ready 50 ms after they start.
pub const SIM_LOCATION: &str = "bench-sim";

const CONFIG: &str = r#"
[[location]]
name = "bench-sim"
driver = "sim"
boot_seconds = 0.05
start_seconds = 0.05
shutdown_seconds = 0.05
"#;

pub struct Server {
    child: Child,
    address: SocketAddr,
    dir: tempfile::TempDir,
    /// Removed after the child is gone (fields drop after `Drop::drop` killed it).
    _cpu: Option<CpuGroup>,
}

/// A CPU budget for one fleetformd: a cgroup whose CFS quota is `cores` of CPU time per
/// period, as if the replica ran on a host of its own with that many cores (on this
/// machine every process of the benchmark otherwise shares the same cores).
struct CpuGroup {
    dir: PathBuf,
}

impl CpuGroup {
    /// Puts `pid` (all its threads) in a new group of `cores` CPUs: cgroup v2 where its
    /// `cpu` controller is enabled, else v1's `cpu` hierarchy.
    fn limit(pid: u32, cores: f64) -> anyhow::Result<CpuGroup> {
        let name = format!("fleetform-bench-{pid}");
        let period: u64 = 100_000;
        let quota = (cores * period as f64).round().max(1000.0) as u64;
        let v2 = Path::new("/sys/fs/cgroup");
        let v2_has_cpu = std::fs::read_to_string(v2.join("cgroup.subtree_control"))
            .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "cpu"));
        let (dir, settings) = if v2_has_cpu {
            (
                v2.join(&name),
                vec![("cpu.max", format!("{quota} {period}"))],
            )
        } else {
            (
                Path::new("/sys/fs/cgroup/cpu").join(&name),
                vec![
                    ("cpu.cfs_period_us", period.to_string()),
                    ("cpu.cfs_quota_us", quota.to_string()),
                ],
            )
        };
        std::fs::create_dir(&dir).with_context(|| {
            format!(
                "--replica-cpus needs a writable cgroup cpu controller: create {}",
                dir.display()
            )
        })?;
        let group = CpuGroup { dir };
        for (file, value) in settings {
            std::fs::write(group.dir.join(file), value)
                .with_context(|| format!("write {}", group.dir.join(file).display()))?;
        }
        std::fs::write(group.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("move fleetformd into {}", group.dir.display()))?;
        Ok(group)
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        // Empty once its process exited; a group still in use is left for the kernel.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Server {
    /// Starts fleetformd; `session_length`: its game servers end each session after so
    /// long; `database`: a Postgres URL (a replica), else its embedded SQLite; `cpus`: a
    /// CPU budget of its own (see [`CpuGroup`]).
    pub async fn start(
        binary: &Path,
        session_length: Option<Duration>,
        database: Option<&str>,
        cpus: Option<f64>,
    ) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("fleetform-bench")
            .tempdir()?;
        let config = dir.path().join("fleetformd.toml");
        let mut text = CONFIG.to_string();
        if let Some(length) = session_length {
            text.push_str(&format!("session_seconds = {}\n", length.as_secs_f64()));
        }
        std::fs::write(&config, text)?;
        let log = std::fs::File::create(dir.path().join("fleetformd.log"))?;
        let mut command = Command::new(binary);
        if let Some(database) = database {
            command.args(["--database", database]);
        }
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--token", TOKEN, "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&config)
            // The reconciler's pass times are read from the log.
            .env("RUST_LOG", "info,fleetformd::zones=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let cpu = match cpus.map(|cores| CpuGroup::limit(child.id(), cores)) {
            None => None,
            Some(Ok(group)) => Some(group),
            Some(Err(error)) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(error);
            }
        };
        let stdout = child.stdout.take().context("fleetformd's stdout")?;
        let (found, lines) = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let found = lines.by_ref().map_while(Result::ok).find_map(|line| {
                line.strip_prefix("fleetformd listening on http://")
                    .map(str::to_string)
            });
            (found, lines)
        })
        .await?;
        // Keep draining its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let Some(address) = found else {
            let _ = child.kill();
            bail!(
                "fleetformd did not start; its log: {}",
                std::fs::read_to_string(dir.path().join("fleetformd.log")).unwrap_or_default()
            );
        };
        Ok(Server {
            child,
            address: address.parse()?,
            dir,
            _cpu: cpu,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&format!("http://{}", self.address), TOKEN)?)
    }

    pub fn database(&self) -> PathBuf {
        self.dir.path().join("data/fleetform.db")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("fleetformd.log")
    }

    /// Where the log ends now.
    pub fn log_position(&self) -> u64 {
        std::fs::metadata(self.log()).map_or(0, |m| m.len())
    }

    /// How long each reconciler pass over `zone_id` logged since `from` took, in ms.
    pub fn zone_passes(&self, from: u64, zone_id: &str) -> anyhow::Result<Vec<f64>> {
        let mut file = std::fs::File::open(self.log())?;
        file.seek(SeekFrom::Start(from))?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        Ok(text
            .lines()
            .filter(|line| line.contains("zone reconciled") && line.contains(zone_id))
            .filter_map(|line| {
                let rest = line.split("took_ms=").nth(1)?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .collect())
    }

    /// `MACHINE_UNHEALTHY` events recorded so far.
    pub async fn unhealthy_events(&self, api: &Client) -> anyhow::Result<u64> {
        let events = api
            .events(&EventQuery {
                text: Some("MACHINE_UNHEALTHY".into()),
                limit: Some(10_000),
                ..EventQuery::default()
            })
            .await?;
        Ok(events
            .iter()
            .filter(|event| event.code == "MACHINE_UNHEALTHY")
            .count() as u64)
    }

    /// SIGTERM, then a kill if it is not gone within 10 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child.kill()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
