//! A machine's desired state: what `POST /v1/agent/sync` answers an agent, and what a
//! simulated machine ([`super::sim`]) follows.
//!
//! [`desired_machine`] is the rule, pure over what the store holds; the store applies it to
//! its picture of a machine ([`Store::desired_state`](crate::store::Store::desired_state)),
//! for the agent route and the sim driver alike, so simulated machines follow exactly the
//! state real agents receive. [`revision`] is what a sync answers with to say "unchanged".

use std::collections::BTreeMap;
use std::time::Duration;

use fleetform_api::agent::{AssignedSession, DesiredMachine, LaunchSpec, SyncResponse};
use fleetform_api::{Build, Fleet, MachineStatus, Session};
use sha2::{Digest, Sha256};

use crate::store::{restart_cutoff_ms, MachineRecord, ProcessRecord};
use crate::{Error, Result};

/// What `machine` should run at `now_ms`, given its fleet and that fleet's build (None
/// when gone), its live processes and its active sessions.
pub fn desired_machine<'a>(
    machine: &MachineRecord,
    fleet: Option<&Fleet>,
    build: Option<&Build>,
    processes: impl IntoIterator<Item = &'a ProcessRecord>,
    sessions: impl IntoIterator<Item = &'a Session>,
    now_ms: i64,
) -> DesiredMachine {
    let shutdown = matches!(
        machine.status,
        MachineStatus::Terminating | MachineStatus::Terminated | MachineStatus::Unhealthy
    );
    let (Some(fleet), false) = (fleet, shutdown) else {
        if machine.bare_metal_id.is_some() {
            // Bare metal goes back to the pool: its agent stops the processes and stays.
            return idle_machine();
        }
        return DesiredMachine {
            shutdown: true,
            launch: None,
            process_count: 0,
            sessions: BTreeMap::new(),
            drain: Vec::new(),
        };
    };
    let launch = build.map(|build| LaunchSpec {
        build_id: build.id.clone(),
        source: build.source.clone(),
        sha256: build.sha256.clone(),
        launch_path: fleet.launch_path.clone(),
        launch_parameters: fleet.launch_parameters.clone(),
        session_mode: fleet.session_mode,
        sessions_per_process: fleet.sessions_per_process,
    });
    // Simple-mode processes whose session is over are drained (and so replaced), even when
    // the session ended before the agent ever heard of it; so are processes older than
    // `process_restart_hours` (they finish their sessions first).
    let restart_before = restart_cutoff_ms(fleet.process_restart_hours, now_ms);
    let drain = processes
        .into_iter()
        .filter(|process| {
            process.spent(fleet.session_mode)
                || process.started_at_ms < restart_before
                || process.restart_requested
        })
        .map(|process| process.id.clone())
        .collect();
    let mut by_process: BTreeMap<String, Vec<AssignedSession>> = BTreeMap::new();
    for session in sessions {
        by_process
            .entry(session.process_id.clone())
            .or_default()
            .push(AssignedSession {
                id: session.id.clone(),
                max_players: session.max_players,
                properties: session.properties.clone(),
            });
    }
    DesiredMachine {
        shutdown: false,
        launch,
        process_count: machine.target_processes.min(machine.processes_per_machine),
        sessions: by_process,
        drain,
    }
}

/// What a machine that serves no zone runs: nothing, and it stays up. A bare-metal
/// machine's agent hears this while its machine is in the pool.
pub fn idle_machine() -> DesiredMachine {
    DesiredMachine {
        shutdown: false,
        launch: None,
        process_count: 0,
        sessions: BTreeMap::new(),
        drain: Vec::new(),
    }
}

/// What a pool machine no zone has taken should run, as a sync answers it: nothing, under
/// the pool machine's own id.
pub fn pool_state(pool_id: &str, heartbeat_interval: Duration) -> Result<SyncResponse> {
    let desired = idle_machine();
    Ok(SyncResponse {
        revision: revision(&desired)?,
        machine_id: pool_id.to_string(),
        heartbeat_interval_ms: heartbeat_interval.as_millis() as u32,
        desired,
    })
}

/// The revision of a desired state: changes whenever the state does.
pub fn revision(desired: &DesiredMachine) -> Result<String> {
    let canonical = serde_json::to_vec(desired).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(Sha256::digest(&canonical)
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ProcessState;
    use fleetform_api::agent::AgentProcessState;
    use fleetform_api::{OperatingSystem, ResourceStatus, SessionMode, SessionStatus, UpdateMode};

    fn machine(status: MachineStatus, target: u32) -> MachineRecord {
        MachineRecord {
            id: "mch-1".into(),
            zone_id: "zone-1".into(),
            fleet_id: "flt-1".into(),
            data_center: "dc".into(),
            location: "sim".into(),
            instance_type: "m1".into(),
            processes_per_machine: 4,
            status,
            build_id: "bld-1".into(),
            driver_ref: None,
            address: None,
            agent_error: None,
            created_at_ms: 0,
            last_heartbeat_ms: None,
            target_processes: target,
            terminating_since_ms: None,
            terminated_at_ms: None,
            termination_reason: None,
            bare_metal_id: None,
        }
    }

    fn fleet(mode: SessionMode) -> Fleet {
        Fleet {
            id: "flt-1".into(),
            name: "f".into(),
            description: None,
            build_id: "bld-1".into(),
            update_mode: UpdateMode::Soft,
            launch_path: "server".into(),
            launch_parameters: None,
            process_restart_hours: 0,
            session_mode: mode,
            sessions_per_process: 1,
            storage_gb: 50,
            force_destroy: false,
            status: ResourceStatus::New,
            created_at: String::new(),
        }
    }

    fn build() -> Build {
        Build {
            id: "bld-1".into(),
            name: "b".into(),
            version: None,
            operating_system: OperatingSystem::Linux,
            source: "file:///b".into(),
            sha256: None,
            created_at: String::new(),
        }
    }

    fn process(id: &str, active: u32, started: u32) -> ProcessRecord {
        ProcessRecord {
            id: id.into(),
            machine_id: "mch-1".into(),
            zone_id: "zone-1".into(),
            fleet_id: "flt-1".into(),
            build_id: "bld-1".into(),
            port: 7000,
            pid: None,
            state: ProcessState::Live(AgentProcessState::Ready),
            active_sessions: active,
            sessions_started: started,
            started_at_ms: 0,
            restart_requested: false,
        }
    }

    fn session(id: &str, process_id: &str) -> Session {
        Session {
            id: id.into(),
            fleet_id: "flt-1".into(),
            zone: "eu".into(),
            zone_id: "zone-1".into(),
            data_center: "dc".into(),
            machine_id: "mch-1".into(),
            process_id: process_id.into(),
            build_id: "bld-1".into(),
            address: "sim".into(),
            port: 7000,
            status: SessionStatus::Active,
            max_players: Some(8),
            properties: BTreeMap::new(),
            created_at: String::new(),
            ended_at: None,
            reason: None,
        }
    }

    #[test]
    fn running_machine_gets_count_sessions_and_spent_processes_to_drain() {
        let processes = [
            process("p1", 1, 1),
            process("p2", 0, 1),
            process("p3", 0, 0),
        ];
        let sessions = [session("s1", "p1")];
        let desired = desired_machine(
            &machine(MachineStatus::Active, 9),
            Some(&fleet(SessionMode::Simple)),
            Some(&build()),
            &processes,
            &sessions,
            0,
        );
        assert!(!desired.shutdown);
        assert_eq!(desired.process_count, 4, "capped at processes_per_machine");
        assert_eq!(desired.drain, vec!["p2".to_string()]);
        assert_eq!(desired.sessions["p1"][0].id, "s1");
        assert_eq!(desired.launch.unwrap().build_id, "bld-1");
    }

    #[test]
    fn processes_past_their_restart_age_are_drained_after_their_sessions() {
        const HOUR: i64 = 3_600_000;
        let mut fleet = fleet(SessionMode::Parallel);
        fleet.process_restart_hours = 2;
        let mut old = process("old", 1, 5);
        old.started_at_ms = 0;
        let mut young = process("young", 0, 1);
        young.started_at_ms = HOUR;
        let desired = |now: i64, fleet: &Fleet| {
            desired_machine(
                &machine(MachineStatus::Active, 2),
                Some(fleet),
                Some(&build()),
                [&old, &young],
                [],
                now,
            )
            .drain
        };
        assert!(
            desired(2 * HOUR, &fleet).is_empty(),
            "exactly at the age: not yet"
        );
        assert_eq!(desired(2 * HOUR + 1, &fleet), vec!["old".to_string()]);
        assert_eq!(
            desired(3 * HOUR + 1, &fleet),
            vec!["old".to_string(), "young".to_string()]
        );
        fleet.process_restart_hours = 0;
        assert!(desired(100 * HOUR, &fleet).is_empty(), "0 never restarts");
    }

    #[test]
    fn parallel_mode_drains_nothing_for_ended_sessions() {
        let processes = [process("p1", 0, 3)];
        let desired = desired_machine(
            &machine(MachineStatus::Active, 2),
            Some(&fleet(SessionMode::Parallel)),
            Some(&build()),
            &processes,
            [],
            0,
        );
        assert!(desired.drain.is_empty());
        assert_eq!(desired.process_count, 2);
    }

    #[test]
    fn terminating_machine_or_missing_fleet_shuts_down() {
        for (name, status, fleet) in [
            (
                "terminating",
                MachineStatus::Terminating,
                Some(fleet(SessionMode::Simple)),
            ),
            (
                "terminated",
                MachineStatus::Terminated,
                Some(fleet(SessionMode::Simple)),
            ),
            ("fleet gone", MachineStatus::Active, None),
        ] {
            let desired = desired_machine(
                &machine(status, 4),
                fleet.as_ref(),
                Some(&build()),
                [],
                [],
                0,
            );
            assert!(desired.shutdown, "{name}");
            assert_eq!(desired.process_count, 0, "{name}");
        }
    }

    #[test]
    fn bare_metal_leaving_its_zone_idles_instead_of_shutting_down() {
        let mut bare_metal = machine(MachineStatus::Terminating, 4);
        bare_metal.bare_metal_id = Some("bm-1".into());
        let desired = desired_machine(
            &bare_metal,
            Some(&fleet(SessionMode::Simple)),
            Some(&build()),
            [],
            [],
            0,
        );
        assert_eq!(desired, idle_machine());
        assert!(!desired.shutdown, "the agent stays for the next zone");
    }

    #[test]
    fn rebooted_processes_are_drained() {
        let mut rebooted = process("p1", 0, 0);
        rebooted.restart_requested = true;
        let desired = desired_machine(
            &machine(MachineStatus::Active, 2),
            Some(&fleet(SessionMode::Parallel)),
            Some(&build()),
            [&rebooted, &process("p2", 0, 0)],
            [],
            0,
        );
        assert_eq!(desired.drain, vec!["p1".to_string()]);
    }

    #[test]
    fn revision_follows_content() {
        let a = desired_machine(&machine(MachineStatus::Active, 2), None, None, [], [], 0);
        let mut b = a.clone();
        assert_eq!(revision(&a).unwrap(), revision(&b).unwrap());
        b.process_count = 1;
        assert_ne!(revision(&a).unwrap(), revision(&b).unwrap());
    }
}
