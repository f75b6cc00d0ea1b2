//! Fixtures shared by the backend's integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use fleetform_api::*;
use fleetformd::config::ServerConfig;
use fleetformd::store::SqlStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A build `bld-1` (the store does not look inside it).
pub fn build() -> Build {
    Build {
        id: "bld-1".into(),
        name: "b".into(),
        version: None,
        operating_system: OperatingSystem::Linux,
        source: "file:///opt/b".into(),
        sha256: None,
        created_at: "2026-01-01T00:00:00Z".into(),
    }
}

/// A fleet `flt-1` of `build_id` in `mode` (4 sessions per process in parallel mode).
pub fn fleet(build_id: &str, mode: SessionMode) -> Fleet {
    Fleet {
        id: "flt-1".into(),
        name: "f".into(),
        description: None,
        build_id: build_id.into(),
        update_mode: UpdateMode::Soft,
        launch_path: "server".into(),
        launch_parameters: None,
        process_restart_hours: 0,
        session_mode: mode,
        sessions_per_process: if mode == SessionMode::Simple { 1 } else { 4 },
        storage_gb: 50,
        force_destroy: false,
        status: ResourceStatus::New,
        created_at: "2026-01-01T00:00:00Z".into(),
    }
}

/// The admin token test servers run with.
pub const TOKEN: &str = "sim-test-token";

/// A fleetformd serving on 127.0.0.1 in this process, and a handle on its store.
pub struct Server {
    pub client: Client,
    pub store: Arc<SqlStore>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<fleetformd::Result<()>>>,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server whose `--config` holds `locations` (TOML `[[location]]` tables).
    pub async fn start(locations: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let config_file = dir.path().join("fleetformd.toml");
        std::fs::write(&config_file, locations).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let config = ServerConfig {
            config_file: Some(config_file),
            heartbeat_interval: Duration::from_secs(2),
            reconcile_interval: Duration::from_secs(1),
            retention: None,
            ..ServerConfig::new(
                dir.path().join("data"),
                TOKEN.into(),
                dir.path().join("no-agent-needed"),
            )
        };
        std::fs::create_dir_all(&config.data_dir).unwrap();
        let store = Arc::new(
            SqlStore::open_with(&config.database(), Default::default())
                .await
                .unwrap(),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(fleetformd::server::run_with_store(
            config,
            listener,
            store.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        let client = Client::new(&format!("http://{address}"), TOKEN).unwrap();
        Server {
            client,
            store,
            stop: Some(stop),
            task: Some(task),
            dir,
        }
    }

    /// The store's SQLite file.
    pub fn database(&self) -> std::path::PathBuf {
        self.dir.path().join("data/fleetform.db")
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}
