//! The SQLite store: one file, WAL, `synchronous = FULL`.
//!
//! Writes go through a pool of exactly one connection, so write transactions are
//! serialised in-process: a placement's read-then-update cannot race another placement
//! (SQLite has one writer anyway; this makes the wait a queue instead of `SQLITE_BUSY`).
//! Reads use their own pool and see the last committed state (WAL).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use fleetform_api::agent::{ProcessExit, SyncRequest};
use fleetform_api::{
    BareMetalMachine, Build, Fleet, MachineStatus, ResourceStatus, Session, SessionMode, Zone,
    ZoneSpecView,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

use super::*;
use crate::crash_loop::{self, BuildHealth, CrashSample, Verdict};
use crate::placement::{self, Candidate};
use crate::time::rfc3339;
use crate::{Error, Result};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// fleetformd's store on a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
}

/// A `SELECT * FROM table` narrowed by the filters a list request set, its values bound in
/// order (the session, event and crash lists).
struct Filtered {
    sql: String,
    binds: Vec<String>,
}

impl Filtered {
    fn select(table: &str) -> Self {
        Filtered {
            sql: format!("SELECT * FROM {table} WHERE 1 = 1"),
            binds: Vec::new(),
        }
    }

    /// `AND column = value`, when a value is given.
    fn equal(self, column: &str, value: Option<&str>) -> Self {
        match value {
            Some(value) => self.clause(&format!(" AND {column} = ?"), [value.to_string()]),
            None => self,
        }
    }

    /// Any other condition, with its values.
    fn clause(mut self, sql: &str, values: impl IntoIterator<Item = String>) -> Self {
        self.sql.push_str(sql);
        self.binds.extend(values);
        self
    }

    async fn fetch(
        mut self,
        pool: &sqlx::SqlitePool,
        order_by: &str,
        limit: u32,
    ) -> Result<Vec<SqliteRow>> {
        self.sql
            .push_str(&format!(" ORDER BY {order_by} LIMIT {}", limit.max(1)));
        let mut query = sqlx::query(&self.sql);
        for value in &self.binds {
            query = query.bind(value);
        }
        Ok(query.fetch_all(pool).await?)
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs the migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before the client hears of it, so an acknowledged
            // placement survives even a power cut, not only a kill -9.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        MIGRATOR
            .run(&write)
            .await
            .map_err(|e| Error::Internal(format!("migrations: {e}")))?;
        let read = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore { write, read })
    }
}

/// Maps constraint violations to the conflict a client can act on; the rest stays internal.
fn fix_error(error: sqlx::Error, what: &'static str, field: &str) -> Error {
    if let sqlx::Error::Database(db) = &error {
        if db.is_unique_violation() {
            return Error::Conflict {
                code: "already_exists",
                message: format!("a {what} with this {field} already exists"),
                field: Some(field.to_string()),
            };
        }
        if db.is_foreign_key_violation() {
            return Error::Conflict {
                code: "reference_not_found",
                message: format!("the {what} refers to something that does not exist"),
                field: None,
            };
        }
    }
    Error::Store(error)
}

fn parse<T: FromStr>(text: &str, what: &str) -> Result<T> {
    text.parse()
        .map_err(|_| Error::Internal(format!("corrupt {what} in store: {text:?}")))
}

fn u32_of(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

fn build_from_row(row: &SqliteRow) -> Result<Build> {
    Ok(Build {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        operating_system: parse(&row.try_get::<String, _>("operating_system")?, "os")?,
        source: row.try_get("source")?,
        sha256: row.try_get("sha256")?,
        created_at: rfc3339(row.try_get("created_at")?),
    })
}

fn fleet_from_row(row: &SqliteRow) -> Result<Fleet> {
    let build_id: String = row.try_get("build_id")?;
    let crash_loop_build: Option<String> = row.try_get("crash_loop_build_id")?;
    let status = if crash_loop_build.as_ref() == Some(&build_id) {
        ResourceStatus::Unavailable
    } else {
        parse(&row.try_get::<String, _>("status")?, "status")?
    };
    Ok(Fleet {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        build_id,
        update_mode: parse(&row.try_get::<String, _>("update_mode")?, "update_mode")?,
        launch_path: row.try_get("launch_path")?,
        launch_parameters: row.try_get("launch_parameters")?,
        process_restart_hours: u32_of(row.try_get("process_restart_hours")?),
        session_mode: parse(&row.try_get::<String, _>("session_mode")?, "session_mode")?,
        sessions_per_process: u32_of(row.try_get("sessions_per_process")?),
        storage_gb: u32_of(row.try_get("storage_gb")?),
        force_destroy: row.try_get("force_destroy")?,
        status,
        created_at: rfc3339(row.try_get("created_at")?),
    })
}

fn zone_from_row(row: &SqliteRow) -> Result<ZoneRecord> {
    let spec: String = row.try_get("spec")?;
    let spec: ZoneSpecView = serde_json::from_str(&spec)
        .map_err(|e| Error::Internal(format!("corrupt zone spec: {e}")))?;
    Ok(ZoneRecord {
        zone: Zone {
            id: row.try_get("id")?,
            spec,
            status: parse(&row.try_get::<String, _>("status")?, "status")?,
            created_at: rfc3339(row.try_get("created_at")?),
        },
        deleting: row.try_get("deleting")?,
        idle_since_ms: row
            .try_get::<Option<i64>, _>("idle_since")?
            .unwrap_or(row.try_get("created_at")?),
    })
}

fn machine_from_row(row: &SqliteRow) -> Result<MachineRecord> {
    Ok(MachineRecord {
        id: row.try_get("id")?,
        zone_id: row.try_get("zone_id")?,
        fleet_id: row.try_get("fleet_id")?,
        data_center: row.try_get("data_center")?,
        location: row.try_get("location")?,
        instance_type: row.try_get("instance_type")?,
        processes_per_machine: u32_of(row.try_get("processes_per_machine")?),
        status: parse(&row.try_get::<String, _>("status")?, "machine status")?,
        build_id: row.try_get("build_id")?,
        driver_ref: row.try_get("driver_ref")?,
        address: row.try_get("address")?,
        agent_error: row.try_get("agent_error")?,
        created_at_ms: row.try_get("created_at")?,
        last_heartbeat_ms: row.try_get("last_heartbeat_at")?,
        target_processes: row
            .try_get::<Option<i64>, _>("target_processes")?
            .map(u32_of)
            .unwrap_or(u32_of(row.try_get("processes_per_machine")?)),
        terminating_since_ms: row.try_get("terminating_since")?,
        terminated_at_ms: row.try_get("terminated_at")?,
        termination_reason: row.try_get("termination_reason")?,
        bare_metal_id: row.try_get("bare_metal_id")?,
    })
}

fn event_from_row(row: &SqliteRow) -> Result<EventRecord> {
    Ok(EventRecord {
        id: row.try_get("id")?,
        at_ms: row.try_get("at")?,
        level: parse(&row.try_get::<String, _>("level")?, "event level")?,
        producer: parse(&row.try_get::<String, _>("producer")?, "event producer")?,
        code: row.try_get("code")?,
        fleet_id: row.try_get("fleet_id")?,
        zone_id: row.try_get("zone_id")?,
        machine_id: row.try_get("machine_id")?,
        message: row.try_get("message")?,
    })
}

fn crash_from_row(row: &SqliteRow) -> Result<CrashRecord> {
    let output_tail: String = row.try_get("output_tail")?;
    Ok(CrashRecord {
        id: row.try_get("id")?,
        fleet_id: row.try_get("fleet_id")?,
        zone_id: row.try_get("zone_id")?,
        machine_id: row.try_get("machine_id")?,
        process_id: row.try_get("process_id")?,
        build_id: row.try_get("build_id")?,
        exit_code: row.try_get("exit_code")?,
        signal: row.try_get("signal")?,
        at_ms: row.try_get("at")?,
        started_at_ms: row.try_get("started_at")?,
        output_tail: serde_json::from_str(&output_tail)
            .map_err(|e| Error::Internal(format!("corrupt crash output_tail: {e}")))?,
        core_dump: row.try_get("core_dump")?,
    })
}

/// `text` as a SQL `LIKE` pattern matching it anywhere, with `\` escaping `%`, `_` and
/// itself so a filter's text is matched literally.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn process_from_row(row: &SqliteRow) -> Result<ProcessRecord> {
    Ok(ProcessRecord {
        id: row.try_get("id")?,
        machine_id: row.try_get("machine_id")?,
        zone_id: row.try_get("zone_id")?,
        fleet_id: row.try_get("fleet_id")?,
        build_id: row.try_get("build_id")?,
        port: u16::try_from(row.try_get::<i64, _>("port")?).unwrap_or(0),
        pid: row
            .try_get::<Option<i64>, _>("pid")?
            .and_then(|pid| u32::try_from(pid).ok()),
        state: ProcessState::parse(&row.try_get::<String, _>("agent_state")?),
        active_sessions: u32_of(row.try_get("active_sessions")?),
        sessions_started: u32_of(row.try_get("sessions_started")?),
        started_at_ms: row.try_get("started_at")?,
        restart_requested: row.try_get("restart_requested")?,
    })
}

fn session_from_row(row: &SqliteRow) -> Result<Session> {
    let properties: String = row.try_get("properties")?;
    Ok(Session {
        id: row.try_get("id")?,
        fleet_id: row.try_get("fleet_id")?,
        zone: row.try_get("zone_name")?,
        zone_id: row.try_get("zone_id")?,
        data_center: row.try_get("data_center")?,
        machine_id: row.try_get("machine_id")?,
        process_id: row.try_get("process_id")?,
        build_id: row.try_get("build_id")?,
        address: row.try_get("address")?,
        port: u16::try_from(row.try_get::<i64, _>("port")?).unwrap_or(0),
        status: parse(&row.try_get::<String, _>("status")?, "session status")?,
        max_players: row.try_get::<Option<i64>, _>("max_players")?.map(u32_of),
        properties: serde_json::from_str(&properties).unwrap_or_default(),
        created_at: rfc3339(row.try_get("created_at")?),
        ended_at: row.try_get::<Option<i64>, _>("ended_at")?.map(rfc3339),
        reason: row.try_get("reason")?,
    })
}

const LIVE_STATES: &str = "('STARTING', 'READY', 'STOPPING')";

/// Ends a process's life in the store: its state, and its active sessions `LOST`.
async fn process_ended(
    tx: &mut sqlx::SqliteConnection,
    process_id: &str,
    crashed: bool,
    exit_code: Option<i32>,
    signal: Option<i32>,
    reason: &str,
    now_ms: i64,
) -> Result<()> {
    let state = if crashed { "CRASHED" } else { "EXITED" };
    sqlx::query(&format!(
        "UPDATE processes SET agent_state = ?, exit_code = ?, exit_signal = ?, ended_at = ?, active_sessions = 0
         WHERE id = ? AND agent_state IN {LIVE_STATES}"
    ))
    .bind(state)
    .bind(exit_code)
    .bind(signal)
    .bind(now_ms)
    .bind(process_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE sessions SET status = 'LOST', reason = ?, ended_at = ? WHERE process_id = ? AND status = 'ACTIVE'",
    )
    .bind(reason)
    .bind(now_ms)
    .bind(process_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Ends one active session and frees its slot; `machine` limits it to that machine's
/// sessions (an agent may only end its own). False when it was not active.
async fn session_ended(
    tx: &mut sqlx::SqliteConnection,
    session_id: &str,
    machine: Option<&str>,
    now_ms: i64,
) -> Result<bool> {
    let process: Option<String> = sqlx::query_scalar(
        "UPDATE sessions SET status = 'ENDED', ended_at = ?
         WHERE id = ? AND status = 'ACTIVE' AND (? IS NULL OR machine_id = ?) RETURNING process_id",
    )
    .bind(now_ms)
    .bind(session_id)
    .bind(machine)
    .bind(machine)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(process) = process else {
        return Ok(false);
    };
    sqlx::query("UPDATE processes SET active_sessions = MAX(active_sessions - 1, 0) WHERE id = ?")
        .bind(process)
        .execute(&mut *tx)
        .await?;
    Ok(true)
}

/// Writes an event inside a transaction.
async fn event_inserted(tx: &mut sqlx::SqliteConnection, event: &EventRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (id, at, level, producer, code, fleet_id, zone_id, machine_id, message)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&event.id)
    .bind(event.at_ms)
    .bind(event.level.as_str())
    .bind(event.producer.as_str())
    .bind(&event.code)
    .bind(&event.fleet_id)
    .bind(&event.zone_id)
    .bind(&event.machine_id)
    .bind(&event.message)
    .execute(&mut *tx)
    .await
    .map_err(|e| fix_error(e, "event", "id"))?;
    Ok(())
}

/// How an exit ended, for people: "exit code 3", "signal 11".
fn exit_text(exit_code: Option<i32>, signal: Option<i32>) -> String {
    match (exit_code, signal) {
        (_, Some(signal)) => format!("signal {signal}"),
        (Some(code), None) => format!("exit code {code}"),
        (None, None) => "an unknown exit".to_string(),
    }
}

/// Records the crash an exit reports, once per process (a resent report adds nothing).
/// `process` is what the store knows of the process (its build and start), if anything.
/// True when this call recorded it.
async fn crash_recorded(
    tx: &mut sqlx::SqliteConnection,
    machine: &MachineRecord,
    exit: &ProcessExit,
    process: Option<&(String, i64)>,
    now_ms: i64,
) -> Result<bool> {
    let build_id = exit
        .build_id
        .clone()
        .or_else(|| process.map(|(build, _)| build.clone()))
        .unwrap_or_else(|| machine.build_id.clone());
    // The agent's clock says when; a clock running ahead must not put it in the future.
    let at = crate::time::parse_rfc3339(&exit.exited_at)
        .unwrap_or(now_ms)
        .min(now_ms);
    let started_at = exit
        .started_at
        .as_deref()
        .and_then(crate::time::parse_rfc3339)
        .or(process.map(|(_, started)| *started));
    let output_tail =
        serde_json::to_string(&exit.output_tail).map_err(|e| Error::Internal(e.to_string()))?;
    let inserted = sqlx::query(
        "INSERT INTO crashes (id, fleet_id, zone_id, machine_id, process_id, build_id, exit_code, signal, at,
            started_at, output_tail, core_dump)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (process_id) DO NOTHING",
    )
    .bind(crate::time::new_id("crash"))
    .bind(&machine.fleet_id)
    .bind(&machine.zone_id)
    .bind(&machine.id)
    .bind(&exit.process_id)
    .bind(&build_id)
    .bind(exit.exit_code)
    .bind(exit.signal)
    .bind(at)
    .bind(started_at)
    .bind(output_tail)
    .bind(&exit.core_dump)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(inserted > 0)
}

/// Applies the crash-loop rule ([`crash_loop::assess`]) to a fleet's current build and
/// records its verdict and event, inside the agent report's transaction. `new_crash`: the
/// report recorded a crash; without one only a fleet under a verdict can change (a
/// process became READY), so the others cost one primary-key read.
async fn crash_loop_assessed(
    tx: &mut sqlx::SqliteConnection,
    fleet_id: &str,
    new_crash: bool,
    now_ms: i64,
) -> Result<()> {
    let fleet = sqlx::query(
        "SELECT name, build_id, crash_loop_build_id, crash_loop_since, crash_count_from FROM fleets WHERE id = ?",
    )
    .bind(fleet_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(fleet) = fleet else {
        return Ok(());
    };
    let name: String = fleet.try_get("name")?;
    let build_id: String = fleet.try_get("build_id")?;
    let loop_build: Option<String> = fleet.try_get("crash_loop_build_id")?;
    let loop_since: Option<i64> = fleet.try_get("crash_loop_since")?;
    let count_from: i64 = fleet.try_get("crash_count_from")?;
    let looping_since_ms = loop_since.filter(|_| loop_build.as_ref() == Some(&build_id));
    if looping_since_ms.is_none() && !new_crash {
        return Ok(());
    }
    let window_start = (now_ms - crash_loop::WINDOW_MS).max(count_from);
    let crashes = sqlx::query(
        "SELECT * FROM crashes WHERE fleet_id = ? AND build_id = ? AND at >= ? ORDER BY seq",
    )
    .bind(fleet_id)
    .bind(&build_id)
    .bind(window_start)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(crash_from_row)
    .collect::<Result<Vec<_>>>()?;
    let last_ready_ms: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(ready_at) FROM processes WHERE fleet_id = ? AND build_id = ?",
    )
    .bind(fleet_id)
    .bind(&build_id)
    .fetch_one(&mut *tx)
    .await?;
    let ready_now: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM processes WHERE fleet_id = ? AND build_id = ? AND agent_state = 'READY' LIMIT 1",
    )
    .bind(fleet_id)
    .bind(&build_id)
    .fetch_optional(&mut *tx)
    .await?;
    let health = BuildHealth {
        looping_since_ms,
        crashes: crashes
            .iter()
            .map(|crash| CrashSample {
                at_ms: crash.at_ms,
                started_at_ms: crash.started_at_ms,
            })
            .collect(),
        last_ready_ms,
        ready_now: ready_now.is_some(),
    };
    match crash_loop::assess(&health, now_ms) {
        Verdict::Steady => {}
        Verdict::CrashLoop { start_crashes } => {
            sqlx::query(
                "UPDATE fleets SET crash_loop_build_id = ?, crash_loop_since = ? WHERE id = ?",
            )
            .bind(&build_id)
            .bind(now_ms)
            .bind(fleet_id)
            .execute(&mut *tx)
            .await?;
            let last = crashes
                .last()
                .map(|crash| {
                    format!(
                        "; last exit: {} (process {} on machine {})",
                        exit_text(crash.exit_code, crash.signal),
                        crash.process_id,
                        crash.machine_id
                    )
                })
                .unwrap_or_default();
            let message = format!(
                "fleet {name} is UNAVAILABLE: build {build_id} is crash-looping, {start_crashes} of its processes \
                 crashed within {}s of their start in the last {}s and none became READY{last}; \
                 restarts are backed off until a process becomes READY or the fleet's build or launch settings change",
                crash_loop::START_CRASH_MS / 1000,
                crash_loop::WINDOW_MS / 1000,
            );
            let event = EventRecord::new(
                EventLevel::Error,
                EventProducer::Fleet,
                "CRASH_LOOP",
                message,
            )
            .fleet(fleet_id)
            .at(now_ms);
            event_inserted(tx, &event).await?;
        }
        Verdict::Recovered => {
            sqlx::query(
                "UPDATE fleets SET crash_loop_build_id = NULL, crash_loop_since = NULL, crash_count_from = ? WHERE id = ?",
            )
            .bind(now_ms)
            .bind(fleet_id)
            .execute(&mut *tx)
            .await?;
            let message = format!(
                "fleet {name} recovered: a process of build {build_id} became READY after its crash loop"
            );
            let event = EventRecord::new(
                EventLevel::Info,
                EventProducer::Fleet,
                "FLEET_RECOVERED",
                message,
            )
            .fleet(fleet_id)
            .at(now_ms);
            event_inserted(tx, &event).await?;
        }
    }
    Ok(())
}

impl SqliteStore {
    /// A machine's end, in one transaction: its live processes EXITED, its active sessions
    /// LOST with `reason`, and the machine `status` (TERMINATED or UNHEALTHY) with the time
    /// and reason. The first end is the one recorded: a machine already ended keeps its.
    async fn end_machine(
        &self,
        id: &str,
        reason: &str,
        now_ms: i64,
        status: MachineStatus,
    ) -> Result<()> {
        let mut tx = self.write.begin().await?;
        end_machine_in(&mut tx, id, reason, now_ms, status).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Ends a machine inside `tx`: see [`Store::machine_gone`]. A machine already ended keeps
/// its end.
async fn end_machine_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: &str,
    reason: &str,
    now_ms: i64,
    status: MachineStatus,
) -> Result<()> {
    let ended: Option<(String,)> = sqlx::query_as(
        "SELECT status FROM machines WHERE id = ? AND status IN ('TERMINATED', 'UNHEALTHY')",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    if ended.is_some() {
        return Ok(());
    }
    sqlx::query(&format!(
        "UPDATE processes SET agent_state = 'EXITED', ended_at = ?, active_sessions = 0
         WHERE machine_id = ? AND agent_state IN {LIVE_STATES}"
    ))
    .bind(now_ms)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    sessions_lost(tx, id, reason, now_ms).await?;
    sqlx::query(
        "UPDATE machines SET status = ?, terminated_at = COALESCE(terminated_at, ?),
            termination_reason = COALESCE(termination_reason, ?)
         WHERE id = ?",
    )
    .bind(status.as_str())
    .bind(now_ms)
    .bind(reason)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends a machine's active sessions as LOST with `reason`; how many.
async fn sessions_lost(
    connection: &mut sqlx::SqliteConnection,
    machine_id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE sessions SET status = 'LOST', reason = ?, ended_at = ? WHERE machine_id = ? AND status = 'ACTIVE'",
    )
    .bind(reason)
    .bind(now_ms)
    .bind(machine_id)
    .execute(&mut *connection)
    .await?
    .rows_affected())
}

/// Inserts a machine row (with its agent token's hash).
async fn machine_inserted(
    connection: &mut sqlx::SqliteConnection,
    machine: &MachineRecord,
    token_hash: &str,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO machines (id, zone_id, fleet_id, data_center, location, instance_type, processes_per_machine,
            status, build_id, token_hash, driver_ref, address, created_at, target_processes, bare_metal_id)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&machine.id)
    .bind(&machine.zone_id)
    .bind(&machine.fleet_id)
    .bind(&machine.data_center)
    .bind(&machine.location)
    .bind(&machine.instance_type)
    .bind(i64::from(machine.processes_per_machine))
    .bind(machine.status.as_str())
    .bind(&machine.build_id)
    .bind(token_hash)
    .bind(&machine.driver_ref)
    .bind(&machine.address)
    .bind(machine.created_at_ms)
    .bind(i64::from(machine.target_processes))
    .bind(&machine.bare_metal_id)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// The pool columns and the live machine a pool machine serves.
const BARE_METAL_SELECT: &str =
    "SELECT b.*, m.id AS serving_machine_id, m.zone_id AS serving_zone_id,
        m.last_heartbeat_at AS serving_heartbeat_at
     FROM bare_metal_machines b LEFT JOIN machines m
       ON m.bare_metal_id = b.id AND m.status NOT IN ('TERMINATED', 'UNHEALTHY')";

fn bare_metal_from_row(row: &SqliteRow) -> Result<BareMetalMachine> {
    let labels: String = row.try_get("labels")?;
    let heartbeat: Option<i64> = row
        .try_get::<Option<i64>, _>("serving_heartbeat_at")?
        .or(row.try_get("last_heartbeat_at")?);
    Ok(BareMetalMachine {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        location: row.try_get("location")?,
        address: row.try_get("address")?,
        cores: row.try_get::<Option<i64>, _>("cores")?.map(u32_of),
        memory_gb: row.try_get::<Option<i64>, _>("memory_gb")?.map(u32_of),
        labels: serde_json::from_str(&labels)
            .map_err(|e| Error::Internal(format!("corrupt bare-metal labels: {e}")))?,
        agent_token: row.try_get("agent_token")?,
        created_at: rfc3339(row.try_get("created_at")?),
        machine_id: row.try_get("serving_machine_id")?,
        zone_id: row.try_get("serving_zone_id")?,
        last_heartbeat_at: heartbeat.map(rfc3339),
    })
}

fn labels_json(machine: &BareMetalMachine) -> Result<String> {
    serde_json::to_string(&machine.labels).map_err(|e| Error::Internal(e.to_string()))
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_build(&self, build: &Build) -> Result<()> {
        sqlx::query(
            "INSERT INTO builds (id, name, version, operating_system, source, sha256, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&build.id)
        .bind(&build.name)
        .bind(&build.version)
        .bind(build.operating_system.as_str())
        .bind(&build.source)
        .bind(&build.sha256)
        .bind(crate::time::parse_rfc3339(&build.created_at).unwrap_or_default())
        .execute(&self.write)
        .await
        .map_err(|e| fix_error(e, "build", "id"))?;
        Ok(())
    }

    async fn get_build(&self, id: &str) -> Result<Option<Build>> {
        sqlx::query("SELECT * FROM builds WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .map(|row| build_from_row(&row))
            .transpose()
    }

    async fn update_build(&self, build: &Build) -> Result<()> {
        sqlx::query("UPDATE builds SET name = ?, version = ? WHERE id = ?")
            .bind(&build.name)
            .bind(&build.version)
            .bind(&build.id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn delete_build(&self, id: &str) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        let users: Vec<String> = sqlx::query_scalar("SELECT name FROM fleets WHERE build_id = ?")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
        if !users.is_empty() {
            return Err(Error::conflict(
                "build_in_use",
                format!("build {id} is used by fleet(s) {}", users.join(", ")),
            ));
        }
        let deleted = sqlx::query("DELETE FROM builds WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted > 0)
    }

    async fn insert_fleet(&self, fleet: &Fleet) -> Result<()> {
        sqlx::query(
            "INSERT INTO fleets (id, name, description, build_id, update_mode, launch_path, launch_parameters,
                process_restart_hours, session_mode, sessions_per_process, storage_gb, force_destroy, status, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&fleet.id)
        .bind(&fleet.name)
        .bind(&fleet.description)
        .bind(&fleet.build_id)
        .bind(fleet.update_mode.as_str())
        .bind(&fleet.launch_path)
        .bind(&fleet.launch_parameters)
        .bind(i64::from(fleet.process_restart_hours))
        .bind(fleet.session_mode.as_str())
        .bind(i64::from(fleet.sessions_per_process))
        .bind(i64::from(fleet.storage_gb))
        .bind(fleet.force_destroy)
        .bind(fleet.status.as_str())
        .bind(crate::time::parse_rfc3339(&fleet.created_at).unwrap_or_default())
        .execute(&self.write)
        .await
        .map_err(|e| fix_error(e, "fleet", "name"))?;
        Ok(())
    }

    async fn get_fleet(&self, id_or_name: &str) -> Result<Option<Fleet>> {
        sqlx::query("SELECT * FROM fleets WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1")
            .bind(id_or_name)
            .bind(id_or_name)
            .bind(id_or_name)
            .fetch_optional(&self.read)
            .await?
            .map(|row| fleet_from_row(&row))
            .transpose()
    }

    async fn update_fleet(&self, fleet: &Fleet) -> Result<()> {
        let now_ms = crate::time::now_ms();
        let mut tx = self.write.begin().await?;
        let before: Option<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT build_id, launch_path, launch_parameters, crash_loop_build_id FROM fleets WHERE id = ?",
        )
        .bind(&fleet.id)
        .fetch_optional(&mut *tx)
        .await?;
        // A new build or launch settings void the crash-loop verdict: it was about what
        // ran before. Earlier crashes no longer count toward a new one.
        let relaunched = before.as_ref().is_some_and(|(build, path, parameters, _)| {
            build != &fleet.build_id
                || path != &fleet.launch_path
                || parameters != &fleet.launch_parameters
        });
        if let Some((old_build, _, _, Some(loop_build))) = &before {
            if relaunched && loop_build == old_build {
                let message = if old_build == &fleet.build_id {
                    format!(
                        "fleet {}: launch settings changed; the crash loop of build {old_build} no longer applies",
                        fleet.name
                    )
                } else {
                    format!(
                        "fleet {}: build changed from {old_build} to {}; the crash loop of build {old_build} no longer applies",
                        fleet.name, fleet.build_id
                    )
                };
                let event = EventRecord::new(
                    EventLevel::Info,
                    EventProducer::Fleet,
                    "FLEET_RECOVERED",
                    message,
                )
                .fleet(&fleet.id)
                .at(now_ms);
                event_inserted(&mut tx, &event).await?;
            }
        }
        if let Some((old_build, ..)) = before.as_ref().filter(|(b, ..)| b != &fleet.build_id) {
            // A build update starts (or, mid-update, is redirected to the newer build).
            sqlx::query(
                "INSERT INTO build_updates (fleet_id, from_build, to_build, mode, started_at) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (fleet_id) DO UPDATE SET to_build = excluded.to_build, mode = excluded.mode",
            )
            .bind(&fleet.id)
            .bind(old_build)
            .bind(&fleet.build_id)
            .bind(fleet.update_mode.as_str())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            let how = match fleet.update_mode {
                fleetform_api::UpdateMode::Soft => {
                    "soft: processes of the old build finish their sessions, take no new one, and are replaced once idle"
                }
                fleetform_api::UpdateMode::Force => {
                    "force: every process moves now; sessions on the old build end LOST"
                }
            };
            let event = EventRecord::new(
                EventLevel::Info,
                EventProducer::Fleet,
                "BUILD_UPDATE_STARTED",
                format!(
                    "fleet {}: build update from {old_build} to {} ({how})",
                    fleet.name, fleet.build_id
                ),
            )
            .fleet(&fleet.id)
            .at(now_ms);
            event_inserted(&mut tx, &event).await?;
        }
        if relaunched {
            sqlx::query(
                "UPDATE fleets SET crash_loop_build_id = NULL, crash_loop_since = NULL, crash_count_from = ? WHERE id = ?",
            )
            .bind(now_ms)
            .bind(&fleet.id)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE fleets SET description = ?, build_id = ?, update_mode = ?, launch_path = ?, launch_parameters = ?,
                process_restart_hours = ?, sessions_per_process = ?, storage_gb = ?, force_destroy = ?
             WHERE id = ?",
        )
        .bind(&fleet.description)
        .bind(&fleet.build_id)
        .bind(fleet.update_mode.as_str())
        .bind(&fleet.launch_path)
        .bind(&fleet.launch_parameters)
        .bind(i64::from(fleet.process_restart_hours))
        .bind(i64::from(fleet.sessions_per_process))
        .bind(i64::from(fleet.storage_gb))
        .bind(fleet.force_destroy)
        .bind(&fleet.id)
        .execute(&mut *tx)
        .await
        .map_err(|e| fix_error(e, "fleet", "build_id"))?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_fleet(&self, id: &str) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        let zones: Vec<String> = sqlx::query_scalar("SELECT name FROM zones WHERE fleet_id = ?")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
        if !zones.is_empty() {
            return Err(Error::conflict(
                "fleet_has_zones",
                format!(
                    "fleet {id} still has zone(s) {}; delete them first",
                    zones.join(", ")
                ),
            ));
        }
        sqlx::query("DELETE FROM build_updates WHERE fleet_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM sessions WHERE fleet_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM fleets WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted > 0)
    }

    async fn insert_zone(&self, zone: &Zone) -> Result<()> {
        let spec = serde_json::to_string(&zone.spec).map_err(|e| Error::Internal(e.to_string()))?;
        sqlx::query(
            "INSERT INTO zones (id, fleet_id, name, spec, status, deleting, created_at) VALUES (?, ?, ?, ?, ?, FALSE, ?)",
        )
        .bind(&zone.id)
        .bind(&zone.spec.fleet_id)
        .bind(&zone.spec.name)
        .bind(spec)
        .bind(zone.status.as_str())
        .bind(crate::time::parse_rfc3339(&zone.created_at).unwrap_or_default())
        .execute(&self.write)
        .await
        .map_err(|e| fix_error(e, "zone", "name"))?;
        Ok(())
    }

    async fn get_zone(&self, id: &str) -> Result<Option<ZoneRecord>> {
        sqlx::query("SELECT * FROM zones WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .map(|row| zone_from_row(&row))
            .transpose()
    }

    async fn find_zone(&self, fleet_id: &str, id_or_name: &str) -> Result<Option<ZoneRecord>> {
        sqlx::query("SELECT * FROM zones WHERE fleet_id = ? AND (id = ? OR name = ?) LIMIT 1")
            .bind(fleet_id)
            .bind(id_or_name)
            .bind(id_or_name)
            .fetch_optional(&self.read)
            .await?
            .map(|row| zone_from_row(&row))
            .transpose()
    }

    async fn update_zone(&self, zone: &Zone) -> Result<()> {
        let spec = serde_json::to_string(&zone.spec).map_err(|e| Error::Internal(e.to_string()))?;
        // The status is the reconciler's; only the spec changes here.
        let changed = sqlx::query("UPDATE zones SET spec = ? WHERE id = ? AND NOT deleting")
            .bind(spec)
            .bind(&zone.id)
            .execute(&self.write)
            .await?
            .rows_affected();
        if changed == 0 {
            return Err(Error::conflict(
                "zone_deleting",
                format!("zone {} is being deleted (or is gone)", zone.id),
            ));
        }
        Ok(())
    }

    async fn begin_zone_deletion(&self, id: &str, force: bool) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sessions WHERE zone_id = ? AND status = 'ACTIVE'",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if active > 0 && !force {
            return Err(Error::conflict(
                "sessions_active",
                format!(
                    "zone {id} hosts {active} active session(s); end them, or set force_destroy = true on the fleet"
                ),
            ));
        }
        let changed =
            sqlx::query("UPDATE zones SET deleting = TRUE, status = 'DELETING' WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        tx.commit().await?;
        if changed == 0 {
            return Err(Error::not_found("zone", id));
        }
        Ok(())
    }

    async fn list_zones(&self) -> Result<Vec<ZoneRecord>> {
        sqlx::query("SELECT * FROM zones ORDER BY id")
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(zone_from_row)
            .collect()
    }

    async fn set_zone_status(&self, id: &str, status: ResourceStatus) -> Result<()> {
        sqlx::query("UPDATE zones SET status = ? WHERE id = ? AND status <> ?")
            .bind(status.as_str())
            .bind(id)
            .bind(status.as_str())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn remove_zone(&self, id: &str) -> Result<()> {
        let mut tx = self.write.begin().await?;
        for statement in [
            "DELETE FROM sessions WHERE zone_id = ?",
            "DELETE FROM processes WHERE zone_id = ?",
            "DELETE FROM machines WHERE zone_id = ?",
            "DELETE FROM zones WHERE id = ?",
        ] {
            sqlx::query(statement).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn zone_observation(&self, zone_id: &str) -> Result<ZoneObservation> {
        let machines = sqlx::query(
            "SELECT * FROM machines WHERE zone_id = ? AND status NOT IN ('TERMINATED', 'UNHEALTHY') ORDER BY id",
        )
        .bind(zone_id)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(machine_from_row)
        .collect::<Result<Vec<_>>>()?;
        let processes = sqlx::query(&format!(
            "SELECT * FROM processes WHERE zone_id = ? AND agent_state IN {LIVE_STATES} ORDER BY id"
        ))
        .bind(zone_id)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(process_from_row)
        .collect::<Result<Vec<_>>>()?;
        Ok(ZoneObservation {
            machines,
            processes,
        })
    }

    async fn zone_active_sessions(&self, zone_id: &str) -> Result<Vec<Session>> {
        sqlx::query("SELECT * FROM sessions WHERE zone_id = ? AND status = 'ACTIVE' ORDER BY id")
            .bind(zone_id)
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(session_from_row)
            .collect()
    }

    async fn insert_machine(&self, machine: &MachineRecord, token_hash: &str) -> Result<()> {
        let mut connection = self.write.acquire().await?;
        machine_inserted(&mut connection, machine, token_hash)
            .await
            .map_err(|e| fix_error(e, "machine", "id"))
    }

    async fn get_machine(&self, id: &str) -> Result<Option<MachineRecord>> {
        sqlx::query("SELECT * FROM machines WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .map(|row| machine_from_row(&row))
            .transpose()
    }

    async fn machine_by_token(&self, token_hash: &str) -> Result<Option<MachineRecord>> {
        sqlx::query("SELECT * FROM machines WHERE token_hash = ?")
            .bind(token_hash)
            .fetch_optional(&self.read)
            .await?
            .map(|row| machine_from_row(&row))
            .transpose()
    }

    async fn set_machine_status(&self, id: &str, status: MachineStatus) -> Result<()> {
        // A machine that is gone stays gone: a reconciler pass that read it before
        // `machine_gone` must not bring it back to `TERMINATING`.
        sqlx::query(
            "UPDATE machines SET status = ?,
                terminating_since = CASE WHEN ? = 'TERMINATING' THEN COALESCE(terminating_since, ?) ELSE terminating_since END
             WHERE id = ? AND status NOT IN ('TERMINATED', 'UNHEALTHY')",
        )
        .bind(status.as_str())
        .bind(status.as_str())
        .bind(crate::time::now_ms())
        .bind(id)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn begin_idle_termination(&self, id: &str) -> Result<bool> {
        let changed = sqlx::query(
            "UPDATE machines SET status = 'TERMINATING', terminating_since = COALESCE(terminating_since, ?)
             WHERE id = ? AND status NOT IN ('TERMINATED', 'UNHEALTHY')
               AND NOT EXISTS (SELECT 1 FROM sessions WHERE machine_id = ? AND status = 'ACTIVE')",
        )
        .bind(crate::time::now_ms())
        .bind(id)
        .bind(id)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(changed > 0)
    }

    async fn set_machine_targets(&self, targets: &[(String, u32)]) -> Result<()> {
        if targets.is_empty() {
            return Ok(());
        }
        let mut tx = self.write.begin().await?;
        for (id, target) in targets {
            sqlx::query("UPDATE machines SET target_processes = ? WHERE id = ?")
                .bind(i64::from(*target))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn touch_zone(&self, zone_id: &str, now_ms: i64) -> Result<()> {
        sqlx::query("UPDATE zones SET idle_since = MAX(COALESCE(idle_since, 0), ?) WHERE id = ?")
            .bind(now_ms)
            .bind(zone_id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn set_machine_driver_ref(&self, id: &str, driver_ref: &str) -> Result<()> {
        sqlx::query("UPDATE machines SET driver_ref = ?, status = CASE WHEN status = 'PENDING' THEN 'LAUNCHING' ELSE status END WHERE id = ?")
            .bind(driver_ref)
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn machine_gone(&self, id: &str, reason: &str, now_ms: i64) -> Result<()> {
        self.end_machine(id, reason, now_ms, MachineStatus::Terminated)
            .await
    }

    async fn lose_old_build_sessions(
        &self,
        zone_id: &str,
        build_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<u32> {
        let mut tx = self.write.begin().await?;
        let lost = sqlx::query(
            "UPDATE sessions SET status = 'LOST', reason = ?, ended_at = ?
             WHERE zone_id = ? AND status = 'ACTIVE' AND build_id <> ?",
        )
        .bind(reason)
        .bind(now_ms)
        .bind(zone_id)
        .bind(build_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if lost > 0 {
            sqlx::query(
                "UPDATE processes SET active_sessions = 0 WHERE zone_id = ? AND build_id <> ?",
            )
            .bind(zone_id)
            .bind(build_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(lost as u32)
    }

    async fn revoke_machine(&self, id: &str, reason: &str, now_ms: i64) -> Result<Option<u32>> {
        let mut tx = self.write.begin().await?;
        let updated = sqlx::query(
            "UPDATE machines SET status = 'TERMINATING', terminating_since = COALESCE(terminating_since, ?),
                termination_reason = COALESCE(termination_reason, ?)
             WHERE id = ? AND status NOT IN ('TERMINATED', 'UNHEALTHY')",
        )
        .bind(now_ms)
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        let lost = sessions_lost(&mut tx, id, reason, now_ms).await?;
        sqlx::query("UPDATE processes SET active_sessions = 0 WHERE machine_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(lost as u32))
    }

    async fn machine_unhealthy(&self, id: &str, reason: &str, now_ms: i64) -> Result<()> {
        self.end_machine(id, reason, now_ms, MachineStatus::Unhealthy)
            .await
    }

    async fn reboot_machine(&self, id: &str, reason: &str, now_ms: i64) -> Result<Option<u32>> {
        let mut tx = self.write.begin().await?;
        let in_service: Option<(String,)> = sqlx::query_as(
            "SELECT status FROM machines WHERE id = ? AND status IN ('PENDING', 'LAUNCHING', 'ACTIVE')",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if in_service.is_none() {
            return Ok(None);
        }
        let lost = sessions_lost(&mut tx, id, reason, now_ms).await?;
        sqlx::query(&format!(
            "UPDATE processes SET active_sessions = 0, restart_requested = TRUE
             WHERE machine_id = ? AND agent_state IN {LIVE_STATES}"
        ))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(lost as u32))
    }

    async fn insert_bare_metal(&self, machine: &BareMetalMachine, token_hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO bare_metal_machines (id, name, location, address, cores, memory_gb, labels, agent_token, token_hash, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&machine.id)
        .bind(&machine.name)
        .bind(&machine.location)
        .bind(&machine.address)
        .bind(machine.cores.map(i64::from))
        .bind(machine.memory_gb.map(i64::from))
        .bind(labels_json(machine)?)
        .bind(&machine.agent_token)
        .bind(token_hash)
        .bind(crate::time::parse_rfc3339(&machine.created_at).unwrap_or_default())
        .execute(&self.write)
        .await
        .map_err(|e| fix_error(e, "bare-metal machine", "name"))?;
        Ok(())
    }

    async fn get_bare_metal(&self, id: &str) -> Result<Option<BareMetalMachine>> {
        sqlx::query(&format!("{BARE_METAL_SELECT} WHERE b.id = ?"))
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .map(|row| bare_metal_from_row(&row))
            .transpose()
    }

    async fn list_bare_metal(&self, location: Option<&str>) -> Result<Vec<BareMetalMachine>> {
        sqlx::query(&format!(
            "{BARE_METAL_SELECT} WHERE (? IS NULL OR b.location = ?) ORDER BY b.name"
        ))
        .bind(location)
        .bind(location)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(bare_metal_from_row)
        .collect()
    }

    async fn update_bare_metal(&self, machine: &BareMetalMachine) -> Result<()> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "UPDATE bare_metal_machines SET name = ?, address = ?, cores = ?, memory_gb = ?, labels = ? WHERE id = ?",
        )
        .bind(&machine.name)
        .bind(&machine.address)
        .bind(machine.cores.map(i64::from))
        .bind(machine.memory_gb.map(i64::from))
        .bind(labels_json(machine)?)
        .bind(&machine.id)
        .execute(&mut *tx)
        .await
        .map_err(|e| fix_error(e, "bare-metal machine", "name"))?;
        // New sessions on the machine it serves go to its new address.
        sqlx::query(
            "UPDATE machines SET address = ? WHERE bare_metal_id = ? AND status NOT IN ('TERMINATED', 'UNHEALTHY')",
        )
        .bind(&machine.address)
        .bind(&machine.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_bare_metal(&self, id: &str, now_ms: i64) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        let known: Option<(String,)> =
            sqlx::query_as("SELECT id FROM bare_metal_machines WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if known.is_none() {
            return Ok(false);
        }
        let serving: Option<(String, String, String, i64)> = sqlx::query_as(
            "SELECT m.id, m.fleet_id, m.zone_id,
                (SELECT COUNT(*) FROM sessions s WHERE s.machine_id = m.id AND s.status = 'ACTIVE')
             FROM machines m WHERE m.bare_metal_id = ? AND m.status NOT IN ('TERMINATED', 'UNHEALTHY')",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((machine_id, fleet_id, zone_id, sessions)) = serving {
            if sessions > 0 {
                return Err(Error::conflict(
                    "machine_in_use",
                    format!(
                        "bare-metal machine {id} hosts {sessions} active sessions (machine {machine_id}); end them, or lower the zone's bare_metal_machines and wait for it to drain"
                    ),
                ));
            }
            let reason = "its bare-metal machine was removed from the pool";
            end_machine_in(
                &mut tx,
                &machine_id,
                reason,
                now_ms,
                MachineStatus::Terminated,
            )
            .await?;
            let event = EventRecord::new(
                EventLevel::Warning,
                EventProducer::Machine,
                "BARE_METAL_REMOVED",
                format!("machine {machine_id} ended: bare-metal machine {id} was removed from the pool; its zone takes another if the pool has one"),
            )
            .fleet(&fleet_id)
            .zone(&zone_id)
            .machine(&machine_id)
            .at(now_ms);
            event_inserted(&mut tx, &event).await?;
        }
        sqlx::query("DELETE FROM bare_metal_machines WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn bare_metal_by_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<(BareMetalMachine, Option<MachineRecord>)>> {
        let Some(pool) = sqlx::query(&format!("{BARE_METAL_SELECT} WHERE b.token_hash = ?"))
            .bind(token_hash)
            .fetch_optional(&self.read)
            .await?
            .map(|row| bare_metal_from_row(&row))
            .transpose()?
        else {
            return Ok(None);
        };
        let serving = match &pool.machine_id {
            Some(machine_id) => self.get_machine(machine_id).await?,
            None => None,
        };
        Ok(Some((pool, serving)))
    }

    async fn touch_bare_metal(&self, id: &str, now_ms: i64) -> Result<()> {
        sqlx::query("UPDATE bare_metal_machines SET last_heartbeat_at = ? WHERE id = ?")
            .bind(now_ms)
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn assign_bare_metal(
        &self,
        template: &MachineRecord,
        count: u32,
    ) -> Result<Vec<MachineRecord>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.write.begin().await?;
        // Free machines whose agent was heard from most recently first: they serve soonest.
        let free: Vec<(String, String)> = sqlx::query_as(
            "SELECT b.id, b.address FROM bare_metal_machines b
             WHERE b.location = ? AND NOT EXISTS (
                SELECT 1 FROM machines m WHERE m.bare_metal_id = b.id AND m.status NOT IN ('TERMINATED', 'UNHEALTHY'))
             ORDER BY COALESCE(b.last_heartbeat_at, 0) DESC, b.name LIMIT ?",
        )
        .bind(&template.location)
        .bind(i64::from(count))
        .fetch_all(&mut *tx)
        .await?;
        let mut assigned = Vec::with_capacity(free.len());
        for (pool_id, address) in free {
            let machine = MachineRecord {
                id: crate::time::new_id("mch"),
                status: MachineStatus::Launching,
                driver_ref: Some(pool_id.clone()),
                address: Some(address),
                bare_metal_id: Some(pool_id),
                ..template.clone()
            };
            // Its agent authenticates with the pool machine's token, never with this one.
            let unusable_token = format!("bare-metal:{}", machine.id);
            machine_inserted(&mut tx, &machine, &unusable_token).await?;
            assigned.push(machine);
        }
        tx.commit().await?;
        Ok(assigned)
    }

    async fn finish_build_update(&self, fleet_id: &str, now_ms: i64) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        let update: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT from_build, to_build, started_at FROM build_updates WHERE fleet_id = ?",
        )
        .bind(fleet_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((from_build, to_build, started_at)) = update else {
            return Ok(false);
        };
        let old: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM processes WHERE fleet_id = ? AND build_id <> ? AND agent_state IN {LIVE_STATES}"
        ))
        .bind(fleet_id)
        .bind(&to_build)
        .fetch_one(&mut *tx)
        .await?;
        if old > 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM build_updates WHERE fleet_id = ?")
            .bind(fleet_id)
            .execute(&mut *tx)
            .await?;
        let event = EventRecord::new(
            EventLevel::Info,
            EventProducer::Fleet,
            "BUILD_UPDATE_COMPLETED",
            format!(
                "build update from {from_build} to {to_build} complete: no process of another build runs ({:.1} s)",
                (now_ms - started_at) as f64 / 1000.0
            ),
        )
        .fleet(fleet_id)
        .at(now_ms);
        event_inserted(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn fleet_machines(&self, fleet_id: &str) -> Result<Vec<MachineRecord>> {
        sqlx::query("SELECT * FROM machines WHERE fleet_id = ? ORDER BY id")
            .bind(fleet_id)
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(machine_from_row)
            .collect()
    }

    async fn fleet_processes(&self, fleet_id: &str) -> Result<Vec<ProcessRecord>> {
        sqlx::query("SELECT * FROM processes WHERE fleet_id = ? ORDER BY started_at, id")
            .bind(fleet_id)
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(process_from_row)
            .collect()
    }

    async fn machine_processes(&self, machine_id: &str) -> Result<Vec<ProcessRecord>> {
        sqlx::query(&format!(
            "SELECT * FROM processes WHERE machine_id = ? AND agent_state IN {LIVE_STATES} ORDER BY id"
        ))
        .bind(machine_id)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(process_from_row)
        .collect()
    }

    async fn apply_agent_report(
        &self,
        machine: &MachineRecord,
        report: &SyncRequest,
        now_ms: i64,
    ) -> Result<ReportOutcome> {
        let mut tx = self.write.begin().await?;
        // The machine as it is now, not as the caller read it: the reconciler may have
        // started terminating it since.
        let (status, last_seq): (String, i64) =
            sqlx::query_as("SELECT status, last_report_seq FROM machines WHERE id = ?")
                .bind(&machine.id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(Error::Unauthorized)?;
        let status: MachineStatus = parse(&status, "machine status")?;
        if matches!(status, MachineStatus::Terminated | MachineStatus::Unhealthy) {
            return Err(Error::Unauthorized);
        }
        let seq = i64::try_from(report.report_seq).unwrap_or(i64::MAX);
        if report.report_seq != 0 && seq <= last_seq {
            // A late, older report: it still proves the machine alive, nothing more.
            sqlx::query("UPDATE machines SET last_heartbeat_at = ? WHERE id = ?")
                .bind(now_ms)
                .bind(&machine.id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(ReportOutcome::default());
        }
        let mut sessions_ended = 0u32;
        let mut placement_changed =
            matches!(status, MachineStatus::Pending | MachineStatus::Launching);
        sqlx::query(
            "UPDATE machines SET last_heartbeat_at = ?,
                address = CASE WHEN bare_metal_id IS NULL THEN ? ELSE address END, agent_error = ?,
                last_report_seq = MAX(last_report_seq, ?),
                status = CASE WHEN status IN ('PENDING', 'LAUNCHING') THEN 'ACTIVE' ELSE status END
             WHERE id = ?",
        )
        .bind(now_ms)
        .bind(&report.address)
        .bind(&report.error)
        .bind(seq)
        .bind(&machine.id)
        .execute(&mut *tx)
        .await?;

        // Sessions the game servers ended, before exits: a process that ends its session
        // and then exits (simple mode) has not lost it.
        for session in &report.ended_sessions {
            if session_ended(&mut tx, session, Some(&machine.id), now_ms).await? {
                placement_changed = true;
                sessions_ended += 1;
            }
        }
        // Whether the fleet's crash-loop verdict may change: a new crash, or a process
        // that became READY.
        let mut new_crash = false;
        let mut became_ready = false;
        for exit in &report.exited {
            let crashed = exit.is_crash();
            let reason = match (exit.exit_code, exit.signal) {
                (_, Some(signal)) => {
                    format!("process {} killed by signal {signal}", exit.process_id)
                }
                (Some(code), _) => format!("process {} exited with status {code}", exit.process_id),
                _ => format!("process {} exited", exit.process_id),
            };
            let known: Option<(String, String, i64)> = sqlx::query_as(
                "SELECT machine_id, build_id, started_at FROM processes WHERE id = ?",
            )
            .bind(&exit.process_id)
            .fetch_optional(&mut *tx)
            .await?;
            // Another machine's process is not this agent's to report.
            if known
                .as_ref()
                .is_some_and(|(owner, ..)| owner != &machine.id)
            {
                continue;
            }
            let process = known.map(|(_, build, started)| (build, started));
            // A crash is recorded even for a process that died before any report listed
            // it alive (a crash at start usually does).
            if crashed && crash_recorded(&mut tx, machine, exit, process.as_ref(), now_ms).await? {
                new_crash = true;
            }
            if process.is_none() {
                continue;
            }
            process_ended(
                &mut tx,
                &exit.process_id,
                crashed,
                exit.exit_code,
                exit.signal,
                &reason,
                now_ms,
            )
            .await?;
            placement_changed = true;
        }

        let known: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT id, agent_state FROM processes WHERE machine_id = ? AND agent_state IN {LIVE_STATES}"
        ))
        .bind(&machine.id)
        .fetch_all(&mut *tx)
        .await?;
        let known: HashMap<String, String> = known.into_iter().collect();
        let reported: BTreeSet<&str> = report
            .processes
            .iter()
            .map(|p| p.process_id.as_str())
            .collect();
        for process in &report.processes {
            let state = process.state.as_str();
            match known.get(&process.process_id) {
                Some(previous) if previous == state => {}
                Some(_) => {
                    sqlx::query(
                        "UPDATE processes SET agent_state = ?, pid = ?, port = ?,
                            ready_at = CASE WHEN ? = 'READY' THEN COALESCE(ready_at, ?) ELSE ready_at END
                         WHERE id = ?",
                    )
                    .bind(state)
                    .bind(i64::from(process.pid))
                    .bind(i64::from(process.port))
                    .bind(state)
                    .bind(now_ms)
                    .bind(&process.process_id)
                    .execute(&mut *tx)
                    .await?;
                    placement_changed = true;
                    became_ready |= process.state == AgentProcessState::Ready;
                }
                None => {
                    // INSERT OR IGNORE: a report about a process that already ended (a
                    // late, retried report) must not bring it back to life.
                    let started = crate::time::parse_rfc3339(&process.started_at).unwrap_or(now_ms);
                    let ready_at = (process.state == AgentProcessState::Ready).then_some(now_ms);
                    became_ready |= ready_at.is_some();
                    sqlx::query(
                        "INSERT INTO processes (id, machine_id, zone_id, fleet_id, build_id, port, pid, agent_state, started_at, ready_at)
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(&process.process_id)
                    .bind(&machine.id)
                    .bind(&machine.zone_id)
                    .bind(&machine.fleet_id)
                    .bind(&process.build_id)
                    .bind(i64::from(process.port))
                    .bind(i64::from(process.pid))
                    .bind(state)
                    .bind(started)
                    .bind(ready_at)
                    .execute(&mut *tx)
                    .await?;
                    placement_changed = true;
                }
            }
        }
        // A process the store thinks is live but the agent no longer runs has ended
        // without the agent telling us how (e.g. the agent restarted).
        for (process, _) in known
            .iter()
            .filter(|(id, _)| !reported.contains(id.as_str()))
        {
            let reason = format!("process {process} is no longer running on its machine");
            process_ended(&mut tx, process, false, None, None, &reason, now_ms).await?;
            placement_changed = true;
        }
        if new_crash || became_ready {
            crash_loop_assessed(&mut tx, &machine.fleet_id, new_crash, now_ms).await?;
        }
        tx.commit().await?;
        Ok(ReportOutcome {
            placement_changed,
            sessions_ended,
        })
    }

    async fn machine_active_sessions(&self, machine_id: &str) -> Result<Vec<Session>> {
        sqlx::query("SELECT * FROM sessions WHERE machine_id = ? AND status = 'ACTIVE' ORDER BY id")
            .bind(machine_id)
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(session_from_row)
            .collect()
    }

    async fn place_session(&self, args: PlaceArgs<'_>) -> Result<PlaceOutcome> {
        let mut tx = self.write.begin().await?;
        if let Some(key) = &args.idempotency_key {
            let earlier =
                sqlx::query("SELECT * FROM sessions WHERE fleet_id = ? AND idempotency_key = ?")
                    .bind(&args.fleet.id)
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(row) = earlier {
                return Ok(PlaceOutcome::Repeated(session_from_row(&row)?));
            }
        }
        let capacity = match args.fleet.session_mode {
            SessionMode::Simple => 1,
            SessionMode::Parallel => i64::from(args.fleet.sessions_per_process.max(1)),
        };
        let simple = args.fleet.session_mode == SessionMode::Simple;
        // The SQL mirror of `ProcessRecord::takes_sessions`, on active machines of a zone
        // that is not being deleted, best first in `placement::choose`'s order within one
        // data center (priority and latency are the same for all its processes). Only each
        // data center's best goes to `choose`, which then picks exactly what it would have
        // picked over every candidate, without loading a large zone's processes.
        let order = match args.strategy {
            PlacementStrategy::Pack => "machine_sessions DESC, p.active_sessions DESC, p.id",
            PlacementStrategy::Spread => "machine_sessions ASC, p.active_sessions ASC, p.id",
        };
        let best_in_data_center = format!(
            "WITH busy AS (
                SELECT machine_id, SUM(active_sessions) AS sessions FROM processes
                WHERE zone_id = ? AND active_sessions > 0 GROUP BY machine_id)
             SELECT p.id AS process_id, p.machine_id, p.port, p.build_id, p.active_sessions, m.data_center, m.address,
                    COALESCE(b.sessions, 0) AS machine_sessions
             FROM processes p JOIN machines m ON m.id = p.machine_id JOIN zones z ON z.id = p.zone_id
                  LEFT JOIN busy b ON b.machine_id = p.machine_id
             WHERE p.zone_id = ? AND m.data_center = ? AND p.agent_state = 'READY' AND m.status = 'ACTIVE'
               AND p.build_id = ? AND p.started_at >= ? AND NOT p.restart_requested
               AND NOT z.deleting AND p.active_sessions < ? AND (? = FALSE OR p.sessions_started = 0)
             ORDER BY {order} LIMIT 1"
        );
        let mut rows = Vec::new();
        for dc in &args.zone.spec.data_centers {
            let row = sqlx::query(&best_in_data_center)
                .bind(&args.zone.id)
                .bind(&args.zone.id)
                .bind(&dc.name)
                // Only the fleet's current build takes new sessions: during a build update,
                // processes of the old one serve the sessions they have, nothing more.
                .bind(&args.fleet.build_id)
                // A process past `process_restart_hours` takes no new session.
                .bind(super::restart_cutoff_ms(
                    args.fleet.process_restart_hours,
                    args.now_ms,
                ))
                .bind(capacity)
                .bind(simple)
                .fetch_optional(&mut *tx)
                .await?;
            rows.extend(row);
        }
        let priorities: BTreeMap<&str, (u32, bool)> = args
            .zone
            .spec
            .data_centers
            .iter()
            .map(|dc| {
                (
                    dc.name.as_str(),
                    (
                        dc.priority,
                        dc.machine_type == fleetform_api::MachineType::BareMetal,
                    ),
                )
            })
            .collect();
        let mut candidates = Vec::with_capacity(rows.len());
        let mut details = HashMap::with_capacity(rows.len());
        for row in &rows {
            let data_center: String = row.try_get("data_center")?;
            let process_id: String = row.try_get("process_id")?;
            let (priority, bare_metal) = priorities
                .get(data_center.as_str())
                .copied()
                .unwrap_or((u32::MAX, false));
            candidates.push(Candidate {
                process_id: process_id.clone(),
                machine_id: row.try_get("machine_id")?,
                priority,
                bare_metal,
                data_center,
                machine_active_sessions: u32_of(row.try_get("machine_sessions")?),
                process_active_sessions: u32_of(row.try_get("active_sessions")?),
            });
            let address: Option<String> = row.try_get("address")?;
            details.insert(
                process_id,
                (
                    row.try_get::<i64, _>("port")?,
                    row.try_get::<String, _>("build_id")?,
                    address.unwrap_or_default(),
                ),
            );
        }
        let Some(chosen) = placement::choose(
            &candidates,
            &args.latencies_ms,
            args.max_latency_ms,
            args.strategy,
        ) else {
            return Ok(PlaceOutcome::NoCapacity);
        };
        let (port, build_id, address) = details.remove(&chosen.process_id).unwrap_or_default();
        sqlx::query(
            "UPDATE processes SET active_sessions = active_sessions + 1, sessions_started = sessions_started + 1 WHERE id = ?",
        )
        .bind(&chosen.process_id)
        .execute(&mut *tx)
        .await?;
        let properties =
            serde_json::to_string(&args.properties).map_err(|e| Error::Internal(e.to_string()))?;
        sqlx::query(
            "INSERT INTO sessions (id, fleet_id, zone_id, zone_name, data_center, machine_id, process_id, build_id, address, port,
                status, max_players, properties, idempotency_key, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'ACTIVE', ?, ?, ?, ?)",
        )
        .bind(&args.session_id)
        .bind(&args.fleet.id)
        .bind(&args.zone.id)
        .bind(&args.zone.spec.name)
        .bind(&chosen.data_center)
        .bind(&chosen.machine_id)
        .bind(&chosen.process_id)
        .bind(&build_id)
        .bind(&address)
        .bind(port)
        .bind(args.max_players.map(i64::from))
        .bind(properties)
        .bind(&args.idempotency_key)
        .bind(args.now_ms)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT * FROM sessions WHERE id = ?")
            .bind(&args.session_id)
            .fetch_one(&mut *tx)
            .await?;
        let session = session_from_row(&row)?;
        tx.commit().await?;
        Ok(PlaceOutcome::Placed(session))
    }

    async fn get_session(&self, id: &str) -> Result<Option<Session>> {
        sqlx::query("SELECT * FROM sessions WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .map(|row| session_from_row(&row))
            .transpose()
    }

    async fn end_session(&self, id: &str, now_ms: i64) -> Result<Option<Session>> {
        let mut tx = self.write.begin().await?;
        session_ended(&mut tx, id, None, now_ms).await?;
        let row = sqlx::query("SELECT * FROM sessions WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.map(|row| session_from_row(&row)).transpose()
    }

    async fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<Session>> {
        Filtered::select("sessions")
            .equal("fleet_id", filter.fleet_id.as_deref())
            .equal("zone_id", filter.zone_id.as_deref())
            .equal("data_center", filter.data_center.as_deref())
            .equal("machine_id", filter.machine_id.as_deref())
            .equal("build_id", filter.build_id.as_deref())
            .equal("status", filter.status.map(SessionStatus::as_str))
            .fetch(&self.read, "created_at, id", filter.limit)
            .await?
            .iter()
            .map(session_from_row)
            .collect()
    }

    async fn insert_event(&self, event: &EventRecord) -> Result<()> {
        let mut connection = self.write.acquire().await?;
        event_inserted(&mut connection, event).await
    }

    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>> {
        let mut list = Filtered::select("events")
            .equal("fleet_id", filter.fleet_id.as_deref())
            .equal("zone_id", filter.zone_id.as_deref())
            .equal("machine_id", filter.machine_id.as_deref())
            .equal("level", filter.level.map(EventLevel::as_str))
            .equal("producer", filter.producer.map(EventProducer::as_str));
        if let Some(text) = &filter.text {
            // LOWER on both sides rather than SQLite's case-blind LIKE, so the SQL means
            // the same on Postgres (whose LIKE is case-sensitive).
            let pattern = like_pattern(text);
            list = list.clause(
                " AND (LOWER(message) LIKE LOWER(?) ESCAPE '\\' OR LOWER(code) LIKE LOWER(?) ESCAPE '\\')",
                [pattern.clone(), pattern],
            );
        }
        list.fetch(&self.read, "seq DESC", filter.limit)
            .await?
            .iter()
            .map(event_from_row)
            .collect()
    }

    async fn list_crashes(&self, filter: &CrashFilter) -> Result<Vec<CrashRecord>> {
        Filtered::select("crashes")
            .equal("fleet_id", filter.fleet_id.as_deref())
            .equal("zone_id", filter.zone_id.as_deref())
            .equal("machine_id", filter.machine_id.as_deref())
            .equal("build_id", filter.build_id.as_deref())
            .fetch(&self.read, "seq DESC", filter.limit)
            .await?
            .iter()
            .map(crash_from_row)
            .collect()
    }
}
