//! Fixtures shared by the backend's integration tests.

use fleetform_api::*;

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
