//! A throwaway PostgreSQL server on 127.0.0.1 for tests and benchmarks.
//!
//! [`Server::start`] runs `initdb` into a temporary directory and starts `postgres` on a
//! free loopback port, as the user `postgres` when this process is root (Postgres refuses
//! to run as root): `initdb` under `runuser -u postgres`, the server with its uid and gid
//! set before it executes. The server is this process's child and dies with it
//! (`PR_SET_PDEATHSIG`), so a test process that is killed leaves no server behind; dropping
//! the [`Server`] stops it at once and removes its files.
//!
//! Tests share one server per test run: [`database`] makes a fresh database on the server
//! named by `FLEETFORM_TEST_POSTGRES` (the test script starts one for the whole suite with
//! `fleetform-pg serve`), or else on a server this process starts the first time it asks.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The environment variable naming a running server's admin URL for tests.
pub const ENV: &str = "FLEETFORM_TEST_POSTGRES";

/// How a server is tuned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every commit on disk (`fsync = on`, Postgres's defaults): for benchmarks.
    Full,
    /// No fsync: for tests, which kill fleetformd but never the database server.
    Throwaway,
}

/// A running server; stopped and removed when dropped.
#[derive(Debug)]
pub struct Server {
    dir: tempfile::TempDir,
    port: u16,
    child: Mutex<Child>,
}

/// The error of starting a server, with what its tools printed.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

fn fail(what: impl Into<String>) -> StartError {
    StartError(what.into())
}

/// The `postgres` user's uid and gid, when this process is root.
fn postgres_user() -> Result<Option<(u32, u32)>, StartError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam with a valid C string; the result is read at once, before any
    // other call that could reuse its buffer.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(fail(
            "running as root, and there is no `postgres` user to run Postgres as \
             (apt-get install -y postgresql creates it)",
        ));
    }
    // SAFETY: checked non-null above.
    let entry = unsafe { &*entry };
    Ok(Some((entry.pw_uid, entry.pw_gid)))
}

/// Where Debian keeps a Postgres binary (`/usr/lib/postgresql/<major>/bin`), or the PATH.
pub fn binary(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("FLEETFORM_PG_BIN") {
        return Path::new(&dir).join(name);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path().join("bin").join(name))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|path| path.exists());
    versions.sort();
    versions.pop().unwrap_or_else(|| PathBuf::from(name))
}

fn free_port() -> Result<u16, StartError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| fail(format!("no free port: {e}")))?;
    Ok(listener
        .local_addr()
        .map_err(|e| fail(e.to_string()))?
        .port())
}

impl Server {
    /// Creates a cluster in a new temporary directory and starts it on a free port of
    /// 127.0.0.1, waiting until it accepts connections.
    pub fn start(durability: Durability) -> Result<Server, StartError> {
        let user = postgres_user()?;
        let dir = tempfile::Builder::new()
            .prefix("fleetform-pg-")
            .tempdir()
            .map_err(|e| fail(format!("temporary directory: {e}")))?;
        let data = dir.path().join("data");
        if let Some((uid, gid)) = user {
            // SAFETY: chown of a path this process just made.
            let path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes())
                .map_err(|e| fail(e.to_string()))?;
            if unsafe { libc::chown(path.as_ptr(), uid, gid) } != 0 {
                return Err(fail(format!(
                    "chown {}: {}",
                    dir.path().display(),
                    std::io::Error::last_os_error()
                )));
            }
        }
        let initdb = binary("initdb");
        let mut command = match user {
            Some(_) => {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(&initdb);
                command
            }
            None => Command::new(&initdb),
        };
        let output = command
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .output()
            .map_err(|e| fail(format!("{}: {e}", initdb.display())))?;
        if !output.status.success() {
            return Err(fail(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let port = free_port()?;
        let mut command = Command::new(binary("postgres"));
        command
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=300"])
            .args(["-c", "shared_buffers=256MB"])
            .args(["-c", "log_min_messages=warning"]);
        if durability == Durability::Throwaway {
            command.args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some((uid, gid)) = user {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = spawn_on_a_lasting_thread(command)?;
        let stderr = child.stderr.take().expect("piped");
        let log = dir.path().join("postgres.log");
        std::thread::spawn(move || {
            // The server's log, kept beside its data for a failing test to show.
            let mut file = std::fs::File::create(&log).ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(file) = file.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(file, "{line}");
                }
            }
        });
        let server = Server {
            dir,
            port,
            child: Mutex::new(child),
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&self) -> Result<(), StartError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.lock().expect("child").try_wait().ok().flatten() {
                return Err(fail(format!(
                    "postgres exited at start ({status}): {}",
                    std::fs::read_to_string(self.dir.path().join("postgres.log"))
                        .unwrap_or_default()
                )));
            }
            let ready = Command::new(binary("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(fail("postgres did not accept connections within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of its `postgres` database, as the superuser `postgres`.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The directory of its data and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let mut child = self.child.lock().expect("child");
        // SIGQUIT: immediate shutdown; the data is thrown away with the directory.
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGQUIT);
        }
        let _ = child.wait();
    }
}

/// Spawns `command` from a thread that lives as long as the process: the parent-death
/// signal fires when the *thread* that forked the child ends, not the process.
fn spawn_on_a_lasting_thread(mut command: Command) -> Result<Child, StartError> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("postgres-parent".into())
        .spawn(move || {
            let _ = sender.send(command.spawn());
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| fail(e.to_string()))?;
    receiver
        .recv()
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(format!("starting postgres: {e}")))
}

/// Runs SQL on a server as `postgres` through `psql`.
pub fn psql(admin_url: &str, sql: &str) -> Result<String, StartError> {
    let output = Command::new(binary("psql"))
        .args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            admin_url,
            "-c",
            sql,
        ])
        .output()
        .map_err(|e| fail(format!("psql: {e}")))?;
    if !output.status.success() {
        return Err(fail(format!(
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The admin URL of the test run's shared server: `FLEETFORM_TEST_POSTGRES`, or a server
/// this process starts (once) and keeps until it exits.
pub fn shared_admin_url() -> String {
    static OWN: OnceLock<Server> = OnceLock::new();
    if let Ok(url) = std::env::var(ENV) {
        if !url.is_empty() {
            return url;
        }
    }
    OWN.get_or_init(|| Server::start(Durability::Throwaway).expect("start a test postgres"))
        .admin_url()
}

/// A new, empty database on the shared server; its URL.
pub fn database() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let admin = shared_admin_url();
    let name = format!(
        "t_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    psql(&admin, &format!("CREATE DATABASE {name}")).expect("create a test database");
    match admin.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("not a postgres URL: {admin}"),
    }
}
