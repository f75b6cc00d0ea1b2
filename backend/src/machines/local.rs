//! The `local` driver: each machine is a `fleetform-agent` process on this host.
//!
//! Agents run in their own session (`setsid`), so they outlive fleetformd: a kill -9 or a
//! restart of the control plane does not stop a single game. After a restart the driver
//! finds its agents again by the pid stored as `driver_ref`, checking the pid still belongs
//! to that machine's agent (its command line names the machine's work directory), so a
//! recycled pid is never mistaken for a machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{LaunchRequest, Liveness, MachineDriver};
use crate::{Error, Result};

/// How long an agent has to stop its processes after SIGTERM before SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_secs(15);

/// Runs machines as local agent processes.
#[derive(Debug)]
pub struct LocalDriver {
    agent_bin: PathBuf,
    /// Each machine's work directory is `<machines_dir>/<machine id>`.
    machines_dir: PathBuf,
    /// When each machine was first asked to stop, for escalation.
    terminating: Mutex<HashMap<String, Instant>>,
}

impl LocalDriver {
    pub fn new(agent_bin: PathBuf, machines_dir: PathBuf) -> Self {
        LocalDriver {
            agent_bin,
            machines_dir,
            terminating: Mutex::new(HashMap::new()),
        }
    }

    fn work_dir(&self, machine_id: &str) -> PathBuf {
        self.machines_dir.join(machine_id)
    }

    /// The pid of `machine_id`'s agent, if that process is alive and really is its agent.
    fn live_pid(&self, machine_id: &str, driver_ref: Option<&str>) -> Option<i32> {
        let pid: i32 = driver_ref?.parse().ok()?;
        let marker = self.work_dir(machine_id);
        agent_process_alive(pid, &marker).then_some(pid)
    }
}

/// True when `pid` is a running (not zombie) process whose command line contains `marker`.
fn agent_process_alive(pid: i32, marker: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may contain spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let marker = marker.to_string_lossy();
    String::from_utf8_lossy(&cmdline)
        .split('\0')
        .any(|arg| arg == marker)
}

/// The live agent whose command line names `work_dir` (a launch whose pid was never
/// recorded).
fn find_agent(work_dir: &Path) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| agent_process_alive(*pid, work_dir))
}

#[async_trait]
impl MachineDriver for LocalDriver {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<String> {
        let work_dir = self.work_dir(&request.machine_id);
        std::fs::create_dir_all(&work_dir)
            .map_err(|e| Error::Driver(format!("create {}: {e}", work_dir.display())))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work_dir.join("agent.log"))
            .map_err(|e| Error::Driver(format!("agent log: {e}")))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::Driver(format!("agent log: {e}")))?;
        let mut command = tokio::process::Command::new(&self.agent_bin);
        command
            .arg("--server")
            .arg(&request.server_url)
            .arg("--work-dir")
            .arg(&work_dir)
            .arg("--address")
            .arg("127.0.0.1")
            // The token goes through the environment, not argv, which any local user can read.
            .env("FLEETFORM_AGENT_TOKEN", &request.agent_token)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| Error::Driver(format!("start agent {}: {e}", self.agent_bin.display())))?;
        let pid = child
            .id()
            .ok_or_else(|| Error::Driver("agent exited at once".into()))?;
        // Dropping the handle does not stop the agent; tokio reaps it if it exits while we
        // run.
        drop(child);
        Ok(pid.to_string())
    }

    async fn terminate(&self, machine_id: &str, driver_ref: Option<&str>) -> Result<()> {
        let Some(pid) = self.live_pid(machine_id, driver_ref) else {
            return Ok(());
        };
        let first_asked = *self
            .terminating
            .lock()
            .expect("terminating map poisoned")
            .entry(machine_id.to_string())
            .or_insert_with(Instant::now);
        let signal = if first_asked.elapsed() > TERMINATE_GRACE {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        };
        // SAFETY: plain syscall on a pid we just checked belongs to this machine's agent.
        unsafe {
            libc::kill(pid, signal);
        }
        Ok(())
    }

    fn boot_estimate(&self) -> Duration {
        // A local process: starting the agent and the game servers takes about a second.
        Duration::from_secs(2)
    }

    async fn find(&self, machine_id: &str) -> Result<Option<String>> {
        Ok(find_agent(&self.work_dir(machine_id)).map(|pid| pid.to_string()))
    }

    async fn liveness(&self, machine_id: &str, driver_ref: Option<&str>) -> Result<Liveness> {
        if self.live_pid(machine_id, driver_ref).is_some() {
            Ok(Liveness::Alive)
        } else {
            self.terminating
                .lock()
                .expect("terminating map poisoned")
                .remove(machine_id);
            Ok(Liveness::Gone)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_only_with_its_marker() {
        let me = std::process::id() as i32;
        let exe = std::env::current_exe().unwrap();
        // Our own argv[0] is the test binary; a marker not on our command line is not us.
        assert!(!agent_process_alive(me, Path::new("/no/such/marker")));
        let argv0 = std::env::args().next().unwrap();
        assert!(agent_process_alive(me, Path::new(&argv0)), "{exe:?}");
        assert!(!agent_process_alive(i32::MAX, Path::new(&argv0)));
    }

    #[test]
    fn find_agent_finds_a_process_by_its_work_dir() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("mch-1");
        assert_eq!(find_agent(&marker), None);
        // `sh -c CMD ARG0`: the marker is on the shell's command line, as the work
        // directory is on an agent's.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("sleep 30")
            .arg(&marker)
            .spawn()
            .unwrap();
        // Until the child has exec'd, /proc shows the parent's command line.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut found = find_agent(&marker);
        while found.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            found = find_agent(&marker);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, Some(child.id() as i32));
    }
}
