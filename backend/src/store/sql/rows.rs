//! Rows to domain types, and the column lists the hot reads select (by position, so a
//! large read does not look columns up by name).

use std::str::FromStr;

use crate::store::db::{args, Conn, Row, ToArg};
use fleetform_api::{BareMetalMachine, Build, Fleet, ResourceStatus, Session, Zone, ZoneSpecView};

use crate::store::{
    CrashRecord, EventRecord, MachineRecord, ProcessRecord, ProcessState, ZoneRecord,
};
use crate::time::rfc3339;
use crate::{Error, Result};

/// The states of a live process, as SQL. Every statement about live processes spells the
/// set exactly so, which is what lets SQLite use the partial indexes built on it.
pub const LIVE_STATES: &str = "('STARTING', 'READY', 'STOPPING')";

pub fn parse<T: FromStr>(text: &str, what: &str) -> Result<T> {
    text.parse()
        .map_err(|_| Error::Internal(format!("corrupt {what} in store: {text:?}")))
}

pub fn u32_of(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

pub const MACHINE_COLUMNS: &str = "id, zone_id, fleet_id, data_center, location, instance_type, \
    processes_per_machine, status, build_id, driver_ref, address, agent_error, created_at, \
    last_heartbeat_at, target_processes, terminating_since, terminated_at, termination_reason, \
    bare_metal_id";

pub fn machine(row: &Row<'_>) -> Result<MachineRecord> {
    let processes_per_machine = u32_of(row.get(6)?);
    Ok(MachineRecord {
        id: row.get(0)?,
        zone_id: row.get(1)?,
        fleet_id: row.get(2)?,
        data_center: row.get(3)?,
        location: row.get(4)?,
        instance_type: row.get(5)?,
        processes_per_machine,
        status: parse(&row.get::<_, String>(7)?, "machine status")?,
        build_id: row.get(8)?,
        driver_ref: row.get(9)?,
        address: row.get(10)?,
        agent_error: row.get(11)?,
        created_at_ms: row.get(12)?,
        last_heartbeat_ms: row.get(13)?,
        target_processes: row
            .get::<_, Option<i64>>(14)?
            .map(u32_of)
            .unwrap_or(processes_per_machine),
        terminating_since_ms: row.get(15)?,
        terminated_at_ms: row.get(16)?,
        termination_reason: row.get(17)?,
        bare_metal_id: row.get(18)?,
    })
}

pub const PROCESS_COLUMNS: &str = "id, machine_id, zone_id, fleet_id, build_id, port, pid, \
    agent_state, active_sessions, sessions_started, started_at, restart_requested";

pub fn process(row: &Row<'_>) -> Result<ProcessRecord> {
    Ok(ProcessRecord {
        id: row.get(0)?,
        machine_id: row.get(1)?,
        zone_id: row.get(2)?,
        fleet_id: row.get(3)?,
        build_id: row.get(4)?,
        port: u16::try_from(row.get::<_, i64>(5)?).unwrap_or(0),
        pid: row
            .get::<_, Option<i64>>(6)?
            .and_then(|pid| u32::try_from(pid).ok()),
        state: ProcessState::parse(&row.get::<_, String>(7)?),
        active_sessions: u32_of(row.get(8)?),
        sessions_started: u32_of(row.get(9)?),
        started_at_ms: row.get(10)?,
        restart_requested: row.get(11)?,
    })
}

pub const SESSION_COLUMNS: &str = "id, fleet_id, zone_name, zone_id, data_center, machine_id, \
    process_id, build_id, address, port, status, max_players, properties, created_at, ended_at, \
    reason";

pub fn session(row: &Row<'_>) -> Result<Session> {
    let properties: String = row.get(12)?;
    Ok(Session {
        id: row.get(0)?,
        fleet_id: row.get(1)?,
        zone: row.get(2)?,
        zone_id: row.get(3)?,
        data_center: row.get(4)?,
        machine_id: row.get(5)?,
        process_id: row.get(6)?,
        build_id: row.get(7)?,
        address: row.get(8)?,
        port: u16::try_from(row.get::<_, i64>(9)?).unwrap_or(0),
        status: parse(&row.get::<_, String>(10)?, "session status")?,
        max_players: row.get::<_, Option<i64>>(11)?.map(u32_of),
        properties: serde_json::from_str(&properties).unwrap_or_default(),
        created_at: rfc3339(row.get(13)?),
        ended_at: row.get::<_, Option<i64>>(14)?.map(rfc3339),
        reason: row.get(15)?,
    })
}

pub fn build(row: &Row<'_>) -> Result<Build> {
    Ok(Build {
        id: row.get("id")?,
        name: row.get("name")?,
        version: row.get("version")?,
        operating_system: parse(&row.get::<_, String>("operating_system")?, "os")?,
        source: row.get("source")?,
        sha256: row.get("sha256")?,
        created_at: rfc3339(row.get("created_at")?),
    })
}

pub fn fleet(row: &Row<'_>) -> Result<Fleet> {
    let build_id: String = row.get("build_id")?;
    let crash_loop_build: Option<String> = row.get("crash_loop_build_id")?;
    let status = if crash_loop_build.as_ref() == Some(&build_id) {
        ResourceStatus::Unavailable
    } else {
        parse(&row.get::<_, String>("status")?, "status")?
    };
    Ok(Fleet {
        id: row.get("id")?,
        name: row.get("name")?,
        description: row.get("description")?,
        build_id,
        update_mode: parse(&row.get::<_, String>("update_mode")?, "update_mode")?,
        launch_path: row.get("launch_path")?,
        launch_parameters: row.get("launch_parameters")?,
        process_restart_hours: u32_of(row.get("process_restart_hours")?),
        session_mode: parse(&row.get::<_, String>("session_mode")?, "session_mode")?,
        sessions_per_process: u32_of(row.get("sessions_per_process")?),
        storage_gb: u32_of(row.get("storage_gb")?),
        force_destroy: row.get("force_destroy")?,
        status,
        created_at: rfc3339(row.get("created_at")?),
    })
}

pub fn zone(row: &Row<'_>) -> Result<ZoneRecord> {
    let spec: String = row.get("spec")?;
    let spec: ZoneSpecView = serde_json::from_str(&spec)
        .map_err(|e| Error::Internal(format!("corrupt zone spec: {e}")))?;
    let created_at: i64 = row.get("created_at")?;
    Ok(ZoneRecord {
        zone: Zone {
            id: row.get("id")?,
            spec,
            status: parse(&row.get::<_, String>("status")?, "status")?,
            created_at: rfc3339(created_at),
        },
        deleting: row.get("deleting")?,
        idle_since_ms: row
            .get::<_, Option<i64>>("idle_since")?
            .unwrap_or(created_at),
    })
}

pub fn event(row: &Row<'_>) -> Result<EventRecord> {
    Ok(EventRecord {
        id: row.get("id")?,
        at_ms: row.get("at")?,
        level: parse(&row.get::<_, String>("level")?, "event level")?,
        producer: parse(&row.get::<_, String>("producer")?, "event producer")?,
        code: row.get("code")?,
        fleet_id: row.get("fleet_id")?,
        zone_id: row.get("zone_id")?,
        machine_id: row.get("machine_id")?,
        message: row.get("message")?,
        lease_generation: row.get("lease_generation")?,
    })
}

pub fn crash(row: &Row<'_>) -> Result<CrashRecord> {
    let output_tail: String = row.get("output_tail")?;
    Ok(CrashRecord {
        id: row.get("id")?,
        fleet_id: row.get("fleet_id")?,
        zone_id: row.get("zone_id")?,
        machine_id: row.get("machine_id")?,
        process_id: row.get("process_id")?,
        build_id: row.get("build_id")?,
        exit_code: row.get("exit_code")?,
        signal: row.get("signal")?,
        at_ms: row.get("at")?,
        started_at_ms: row.get("started_at")?,
        output_tail: serde_json::from_str(&output_tail)
            .map_err(|e| Error::Internal(format!("corrupt crash output_tail: {e}")))?,
        core_dump: row.get("core_dump")?,
    })
}

/// The pool columns and the live machine a pool machine serves.
pub const BARE_METAL_SELECT: &str =
    "SELECT b.*, m.id AS serving_machine_id, m.zone_id AS serving_zone_id,
        m.last_heartbeat_at AS serving_heartbeat_at
     FROM bare_metal_machines b LEFT JOIN machines m
       ON m.bare_metal_id = b.id AND m.status NOT IN ('TERMINATED', 'UNHEALTHY')";

pub fn bare_metal(row: &Row<'_>) -> Result<BareMetalMachine> {
    let labels: String = row.get("labels")?;
    let heartbeat: Option<i64> = row
        .get::<_, Option<i64>>("serving_heartbeat_at")?
        .or(row.get("last_heartbeat_at")?);
    Ok(BareMetalMachine {
        id: row.get("id")?,
        name: row.get("name")?,
        location: row.get("location")?,
        address: row.get("address")?,
        cores: row.get::<_, Option<i64>>("cores")?.map(u32_of),
        memory_gb: row.get::<_, Option<i64>>("memory_gb")?.map(u32_of),
        labels: serde_json::from_str(&labels)
            .map_err(|e| Error::Internal(format!("corrupt bare-metal labels: {e}")))?,
        agent_token: row.get("agent_token")?,
        created_at: rfc3339(row.get("created_at")?),
        machine_id: row.get("serving_machine_id")?,
        zone_id: row.get("serving_zone_id")?,
        last_heartbeat_at: heartbeat.map(rfc3339),
    })
}

/// Runs a query and maps every row.
pub fn all<T>(
    conn: &Conn,
    sql: &str,
    args: &[&dyn ToArg],
    map: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    conn.all(sql, args, map)
}

/// Runs a query and maps its first row, if any.
pub fn first<T>(
    conn: &Conn,
    sql: &str,
    args: &[&dyn ToArg],
    map: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    conn.first(sql, args, map)
}

/// A machine's row by id.
pub fn machine_by_id(conn: &Conn, id: &str) -> Result<Option<MachineRecord>> {
    first(
        conn,
        &format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE id = ?1"),
        args![id],
        machine,
    )
}

/// A session's row by id.
pub fn session_by_id(conn: &Conn, id: &str) -> Result<Option<Session>> {
    first(
        conn,
        &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"),
        args![id],
        session,
    )
}

/// Runs a statement; the rows it changed.
pub fn run(conn: &Conn, sql: &str, args: &[&dyn ToArg]) -> Result<usize> {
    Ok(conn.run(sql, args)?)
}
