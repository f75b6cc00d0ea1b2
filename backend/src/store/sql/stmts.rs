//! Statements several store operations share. Each carries its own guard: what it checks
//! is in its `WHERE`, so it is right whoever else writes (another connection, another
//! replica), not only because this store has one writer.

use crate::store::db::{args, Conn, Dialect, Violation};
use fleetform_api::agent::ProcessExit;
use fleetform_api::{EventLevel, EventProducer, MachineStatus};

use super::rows::{self, LIVE_STATES};
use crate::crash_loop::{self, BuildHealth, CrashSample, Verdict};
use crate::store::{EventRecord, MachineRecord};
use crate::{Error, Result};

/// Maps constraint violations to the conflict a client can act on; the rest stays internal.
pub fn fix_error(error: Error, what: &'static str, field: &str) -> Error {
    if let Error::Store(db) = &error {
        if db.is_transient() {
            // Another replica's transaction and this one waited on each other: this one
            // alone gives way (its savepoint rolls it back); the client retries.
            return Error::Unavailable {
                message: format!("the {what} could not be written now (another replica's write)"),
                retry_after_secs: 1,
            };
        }
        match db.violation() {
            Some(Violation::Unique) => {
                return Error::Conflict {
                    code: "already_exists",
                    message: format!("a {what} with this {field} already exists"),
                    field: Some(field.to_string()),
                }
            }
            Some(Violation::ForeignKey) => {
                return Error::Conflict {
                    code: "reference_not_found",
                    message: format!("the {what} refers to something that does not exist"),
                    field: None,
                }
            }
            None => {}
        }
    }
    error
}

/// Ends a live process: its state, and its active sessions `LOST`. Guard: only a process
/// that is live now ends (a late report cannot end one twice or revive one). True when it
/// ended here.
#[allow(clippy::too_many_arguments)]
pub fn process_ended(
    conn: &Conn,
    process_id: &str,
    crashed: bool,
    exit_code: Option<i32>,
    signal: Option<i32>,
    reason: &str,
    now_ms: i64,
) -> Result<bool> {
    let state = if crashed { "CRASHED" } else { "EXITED" };
    let ended = rows::run(
        conn,
        &format!(
            "UPDATE processes SET agent_state = ?1, exit_code = ?2, exit_signal = ?3, ended_at = ?4, active_sessions = 0
             WHERE id = ?5 AND agent_state IN {LIVE_STATES}"
        ),
        args![state, exit_code, signal, now_ms, process_id],
    )?;
    if ended == 0 {
        return Ok(false);
    }
    // Found through the machine's active sessions (a small index), then the process.
    rows::run(
        conn,
        "UPDATE sessions SET status = 'LOST', reason = ?1, ended_at = GREATEST(created_at, ?2)
         WHERE machine_id = (SELECT machine_id FROM processes WHERE id = ?3)
           AND process_id = ?3 AND status = 'ACTIVE'",
        args![reason, now_ms, process_id],
    )?;
    Ok(true)
}

/// Where an ended session was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedSession {
    pub process_id: String,
    pub machine_id: String,
    pub zone_id: String,
}

/// Ends one active session and frees its slot; `machine` limits it to that machine's
/// sessions (an agent may only end its own). Guards: the session must be `ACTIVE` now,
/// and the slot count never goes below zero. None when it was not active.
pub fn session_ended(
    conn: &Conn,
    session_id: &str,
    machine: Option<&str>,
    now_ms: i64,
) -> Result<Option<EndedSession>> {
    if conn.dialect() == Dialect::Postgres {
        // One statement (one round trip): the guarded end, its row, and the slot.
        return rows::first(
            conn,
            "WITH ended AS (
                UPDATE sessions SET status = 'ENDED', ended_at = ?1
                WHERE id = ?2 AND status = 'ACTIVE' AND (CAST(?3 AS TEXT) IS NULL OR machine_id = ?3)
                RETURNING process_id, machine_id, zone_id
             ), freed AS (
                UPDATE processes SET active_sessions = active_sessions - 1
                FROM ended WHERE processes.id = ended.process_id AND processes.active_sessions > 0
                RETURNING processes.id
             )
             SELECT process_id, machine_id, zone_id FROM ended",
            args![now_ms, session_id, machine],
            |row| {
                Ok(EndedSession {
                    process_id: row.get(0)?,
                    machine_id: row.get(1)?,
                    zone_id: row.get(2)?,
                })
            },
        );
    }
    // No RETURNING (SQLite runs it as a trigger, with a statement journal): the row is
    // read after the guarded update.
    let changed = rows::run(
        conn,
        "UPDATE sessions SET status = 'ENDED', ended_at = ?1
         WHERE id = ?2 AND status = 'ACTIVE' AND (CAST(?3 AS TEXT) IS NULL OR machine_id = ?3)",
        args![now_ms, session_id, machine],
    )?;
    if changed == 0 {
        return Ok(None);
    }
    let ended = rows::first(
        conn,
        "SELECT process_id, machine_id, zone_id FROM sessions WHERE id = ?1",
        args![session_id],
        |row| {
            Ok(EndedSession {
                process_id: row.get(0)?,
                machine_id: row.get(1)?,
                zone_id: row.get(2)?,
            })
        },
    )?;
    if let Some(ended) = &ended {
        rows::run(
            conn,
            "UPDATE processes SET active_sessions = active_sessions - 1 WHERE id = ?1 AND active_sessions > 0",
            args![ended.process_id],
        )?;
    }
    Ok(ended)
}

/// Ends the active sessions of `machine` among `sessions` (an agent's report): for each,
/// the guards of [`session_ended`] (`ACTIVE` now, this machine's), its process freed of a
/// slot, never below zero. The (session, process) pairs that ended. On Postgres in one
/// statement (one round trip for them all), on SQLite one session at a time.
pub fn sessions_ended(
    conn: &Conn,
    sessions: &[String],
    machine: &str,
    now_ms: i64,
) -> Result<Vec<(String, String)>> {
    if sessions.is_empty() {
        return Ok(Vec::new());
    }
    if conn.dialect() == Dialect::Sqlite {
        let mut ended = Vec::new();
        for session in sessions {
            if let Some(where_) = session_ended(conn, session, Some(machine), now_ms)? {
                ended.push((session.clone(), where_.process_id));
            }
        }
        return Ok(ended);
    }
    // Session ids have no commas (`sess-` and hex); a repeated id ends once.
    let ids: std::collections::BTreeSet<&str> = sessions.iter().map(String::as_str).collect();
    let ids: Vec<&str> = ids.into_iter().collect();
    rows::all(
        conn,
        "WITH ended AS (
            UPDATE sessions SET status = 'ENDED', ended_at = ?1
            WHERE id = ANY(string_to_array(?2, ',')) AND machine_id = ?3 AND status = 'ACTIVE'
            RETURNING id, process_id
         ), freed AS (
            UPDATE processes SET active_sessions = GREATEST(active_sessions - e.n, 0)
            FROM (SELECT process_id, COUNT(*) AS n FROM ended GROUP BY process_id) e
            WHERE processes.id = e.process_id
            RETURNING processes.id
         )
         SELECT id, process_id FROM ended",
        args![now_ms, ids.join(","), machine],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
}

/// Writes an event inside a transaction.
pub fn event_inserted(conn: &Conn, event: &EventRecord) -> Result<()> {
    rows::run(
        conn,
        "INSERT INTO events (id, at, level, producer, code, fleet_id, zone_id, machine_id, message,
             lease_generation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        args![
            event.id,
            event.at_ms,
            event.level.as_str(),
            event.producer.as_str(),
            event.code,
            event.fleet_id,
            event.zone_id,
            event.machine_id,
            event.message,
            event.lease_generation
        ],
    )
    .map_err(|e| fix_error(e, "event", "id"))?;
    Ok(())
}

/// How an exit ended, for people: "exit code 3", "signal 11".
pub fn exit_text(exit_code: Option<i32>, signal: Option<i32>) -> String {
    match (exit_code, signal) {
        (_, Some(signal)) => format!("signal {signal}"),
        (Some(code), None) => format!("exit code {code}"),
        (None, None) => "an unknown exit".to_string(),
    }
}

/// Records the crash an exit reports, once per process (a resent report adds nothing:
/// the unique `process_id` is the guard). `process` is what the store knows of the process
/// (its build and start), if anything. True when this call recorded it.
pub fn crash_recorded(
    conn: &Conn,
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
    let inserted = rows::run(
        conn,
        "INSERT INTO crashes (id, fleet_id, zone_id, machine_id, process_id, build_id, exit_code, signal, at,
            started_at, output_tail, core_dump)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) ON CONFLICT (process_id) DO NOTHING",
        args![
            crate::time::new_id("crash"),
            machine.fleet_id,
            machine.zone_id,
            machine.id,
            exit.process_id,
            build_id,
            exit.exit_code,
            exit.signal,
            at,
            started_at,
            output_tail,
            exit.core_dump
        ],
    )?;
    Ok(inserted > 0)
}

/// Applies the crash-loop rule ([`crash_loop::assess`]) to a fleet's current build and
/// records its verdict and event, inside the agent report's transaction. `new_crash`: the
/// report recorded a crash; without one only a fleet under a verdict can change (a
/// process became READY), so the others cost one primary-key read. Guard: the verdict's
/// `UPDATE` names the state it moves from, so a concurrent verdict is not written twice.
pub fn crash_loop_assessed(
    conn: &Conn,
    fleet_id: &str,
    new_crash: bool,
    now_ms: i64,
) -> Result<()> {
    let fleet = rows::first(
        conn,
        "SELECT name, build_id, crash_loop_build_id, crash_loop_since, crash_count_from FROM fleets WHERE id = ?1",
        args![fleet_id],
        |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, Option<i64>>(3)?,
                row.get::<_, i64>(4)?,
            ))
        },
    )?;
    let Some((name, build_id, loop_build, loop_since, count_from)) = fleet else {
        return Ok(());
    };
    let looping_since_ms = loop_since.filter(|_| loop_build.as_ref() == Some(&build_id));
    if looping_since_ms.is_none() && !new_crash {
        return Ok(());
    }
    let window_start = (now_ms - crash_loop::WINDOW_MS).max(count_from);
    let crashes = rows::all(
        conn,
        "SELECT * FROM crashes WHERE fleet_id = ?1 AND build_id = ?2 AND at >= ?3 ORDER BY seq",
        args![fleet_id, build_id, window_start],
        rows::crash,
    )?;
    let last_ready_ms: Option<i64> = conn
        .value(
            "SELECT MAX(ready_at) FROM processes WHERE fleet_id = ?1 AND build_id = ?2",
            args![fleet_id, build_id],
        )?
        .flatten();
    let ready_now = rows::first(
        conn,
        "SELECT 1 FROM processes WHERE fleet_id = ?1 AND build_id = ?2 AND agent_state = 'READY' LIMIT 1",
        args![fleet_id, build_id],
        |_| Ok(()),
    )?;
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
            let changed = rows::run(
                conn,
                "UPDATE fleets SET crash_loop_build_id = ?1, crash_loop_since = ?2
                 WHERE id = ?3 AND build_id = ?1 AND crash_loop_build_id IS DISTINCT FROM ?1",
                args![build_id, now_ms, fleet_id],
            )?;
            if changed == 0 {
                return Ok(());
            }
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
            event_inserted(conn, &event)?;
        }
        Verdict::Recovered => {
            let changed = rows::run(
                conn,
                "UPDATE fleets SET crash_loop_build_id = NULL, crash_loop_since = NULL, crash_count_from = ?1
                 WHERE id = ?2 AND crash_loop_build_id = ?3",
                args![now_ms, fleet_id, build_id],
            )?;
            if changed == 0 {
                return Ok(());
            }
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
            event_inserted(conn, &event)?;
        }
    }
    Ok(())
}

/// Ends a machine: see [`Store::machine_gone`](crate::store::Store::machine_gone).
/// Guard: only a machine that has not ended changes (its first end is the one kept).
/// True when it ended here.
pub fn end_machine(
    conn: &Conn,
    id: &str,
    reason: &str,
    now_ms: i64,
    status: MachineStatus,
) -> Result<bool> {
    let ended = rows::run(
        conn,
        "UPDATE machines SET status = ?1, terminated_at = COALESCE(terminated_at, ?2),
            termination_reason = COALESCE(termination_reason, ?3)
         WHERE id = ?4 AND status NOT IN ('TERMINATED', 'UNHEALTHY')",
        args![status.as_str(), now_ms, reason, id],
    )?;
    if ended == 0 {
        return Ok(false);
    }
    rows::run(
        conn,
        &format!(
            "UPDATE processes SET agent_state = 'EXITED', ended_at = ?1, active_sessions = 0
             WHERE machine_id = ?2 AND agent_state IN {LIVE_STATES}"
        ),
        args![now_ms, id],
    )?;
    sessions_lost(conn, id, reason, now_ms)?;
    Ok(true)
}

/// Ends a machine's active sessions as LOST with `reason`; how many.
pub fn sessions_lost(conn: &Conn, machine_id: &str, reason: &str, now_ms: i64) -> Result<u64> {
    Ok(rows::run(
        conn,
        "UPDATE sessions SET status = 'LOST', reason = ?1, ended_at = GREATEST(created_at, ?2) WHERE machine_id = ?3 AND status = 'ACTIVE'",
        args![reason, now_ms, machine_id],
    )? as u64)
}

/// Inserts a machine row (with its agent token's hash).
pub fn machine_inserted(conn: &Conn, machine: &MachineRecord, token_hash: &str) -> Result<()> {
    rows::run(
        conn,
        "INSERT INTO machines (id, zone_id, fleet_id, data_center, location, instance_type, processes_per_machine,
            status, build_id, token_hash, driver_ref, address, created_at, target_processes, bare_metal_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        args![
            machine.id,
            machine.zone_id,
            machine.fleet_id,
            machine.data_center,
            machine.location,
            machine.instance_type,
            i64::from(machine.processes_per_machine),
            machine.status.as_str(),
            machine.build_id,
            token_hash,
            machine.driver_ref,
            machine.address,
            machine.created_at_ms,
            i64::from(machine.target_processes),
            machine.bare_metal_id
        ],
    )?;
    Ok(())
}

/// `text` as a SQL `LIKE` pattern matching it anywhere, with `\` escaping `%`, `_` and
/// itself so a filter's text is matched literally.
pub fn like_pattern(text: &str) -> String {
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
