//! Applying an agent's report: heartbeat, ended sessions, exits and crashes, process
//! states, in one job (one savepoint of the batch's transaction).

use std::collections::{BTreeSet, HashMap};

use crate::store::db::{args, Conn};
use fleetform_api::agent::{AgentProcessState, SyncRequest};
use fleetform_api::MachineStatus;

use super::load;
use super::rows::{self, parse, LIVE_STATES};
use super::stmts;
use super::writer::Ctx;
use crate::store::{MachineRecord, ProcessRecord, ProcessState, ReportOutcome};
use crate::{Error, Result};

/// Ended sessions a report applies in one job (see [`end_sessions`]).
pub const ENDS_PER_JOB: usize = 256;

/// Sessions a machine's game servers ended, apart from the rest of its report: each ends
/// alone (guard: [`stmts::session_ended`], an `ACTIVE` session of this machine), so a
/// report's ends can be split over several jobs. A machine that ended has no active
/// session left (its end lost them), so its late ends change nothing here and [`apply`]
/// refuses the rest of its report. How many ended here.
pub fn end_sessions(
    ctx: &mut Ctx<'_>,
    machine: &MachineRecord,
    sessions: &[String],
    now_ms: i64,
) -> Result<u32> {
    super::leases::fence(ctx, &machine.zone_id)?;
    let ended = stmts::sessions_ended(ctx.conn, sessions, &machine.id, now_ms)?;
    if !ended.is_empty() {
        if let Some(zone) = ctx.hot.zone_of_machine(&machine.id) {
            for (session, process_id) in &ended {
                zone.ended(&machine.id, process_id, session);
            }
        }
        ctx.machine_changed(&machine.id, &machine.zone_id);
    }
    Ok(ended.len() as u32)
}

/// A reporting machine's status; an unknown or ended one is refused (`Unauthorized`: its
/// agent stops).
fn live_status(conn: &Conn, machine_id: &str) -> Result<MachineStatus> {
    let status: String = rows::first(
        conn,
        "SELECT status FROM machines WHERE id = ?1",
        args![machine_id],
        |row| Ok(row.get(0)?),
    )?
    .ok_or(Error::Unauthorized)?;
    let status: MachineStatus = parse(&status, "machine status")?;
    if matches!(status, MachineStatus::Terminated | MachineStatus::Unhealthy) {
        return Err(Error::Unauthorized);
    }
    Ok(status)
}

/// See [`Store::apply_agent_report`](crate::store::Store::apply_agent_report).
pub fn apply(
    ctx: &mut Ctx<'_>,
    machine: &MachineRecord,
    report: &SyncRequest,
    now_ms: i64,
) -> Result<ReportOutcome> {
    super::leases::fence(ctx, &machine.zone_id)?;
    let conn = ctx.conn;
    let status = live_status(conn, &machine.id)?;
    let seq = i64::try_from(report.report_seq).unwrap_or(i64::MAX);
    // Guard: the machine is live and the report newer than the last one applied (a late,
    // older report — a cancelled long-poll — must not undo a newer one).
    let applied = rows::run(
        conn,
        "UPDATE machines SET last_heartbeat_at = ?1,
            address = CASE WHEN bare_metal_id IS NULL THEN ?2 ELSE address END, agent_error = ?3,
            last_report_seq = GREATEST(last_report_seq, ?4),
            status = CASE WHEN status IN ('PENDING', 'LAUNCHING') THEN 'ACTIVE' ELSE status END
         WHERE id = ?5 AND status NOT IN ('TERMINATED', 'UNHEALTHY') AND (CAST(?4 AS BIGINT) = 0 OR last_report_seq < ?4)",
        args![now_ms, report.address, report.error, seq, machine.id],
    )?;
    if applied == 0 {
        // It still proves the machine alive, nothing more.
        rows::run(
            conn,
            "UPDATE machines SET last_heartbeat_at = ?1 WHERE id = ?2 AND status NOT IN ('TERMINATED', 'UNHEALTHY')",
            args![now_ms, machine.id],
        )?;
        if let Some(zone) = ctx.hot.zone_of_machine(&machine.id) {
            if let Some(hot) = zone.machines.get_mut(&machine.id) {
                hot.record_mut().last_heartbeat_ms = Some(now_ms);
            }
        }
        return Ok(ReportOutcome::default());
    }
    let mut sessions_ended = 0u32;
    let mut placement_changed = matches!(status, MachineStatus::Pending | MachineStatus::Launching);
    // What the SQL changed, for the picture once it all succeeded.
    let mut edits: Vec<Edit> = Vec::new();

    // Sessions the game servers ended, before exits: a process that ends its session and
    // then exits (simple mode) has not lost it.
    for (session_id, process_id) in
        stmts::sessions_ended(conn, &report.ended_sessions, &machine.id, now_ms)?
    {
        placement_changed = true;
        sessions_ended += 1;
        edits.push(Edit::Ended {
            process_id,
            session_id,
        });
    }
    // Whether the fleet's crash-loop verdict may change: a new crash, or a process that
    // became READY.
    let mut new_crash = false;
    let mut became_ready = false;
    for exit in &report.exited {
        let crashed = exit.is_crash();
        let reason = match (exit.exit_code, exit.signal) {
            (_, Some(signal)) => format!("process {} killed by signal {signal}", exit.process_id),
            (Some(code), _) => format!("process {} exited with status {code}", exit.process_id),
            _ => format!("process {} exited", exit.process_id),
        };
        let known: Option<(String, String, i64)> = rows::first(
            conn,
            "SELECT machine_id, build_id, started_at FROM processes WHERE id = ?1",
            args![exit.process_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        // Another machine's process is not this agent's to report.
        if known
            .as_ref()
            .is_some_and(|(owner, ..)| owner != &machine.id)
        {
            continue;
        }
        let process = known.map(|(_, build, started)| (build, started));
        // A crash is recorded even for a process that died before any report listed it
        // alive (a crash at start usually does).
        if crashed && stmts::crash_recorded(conn, machine, exit, process.as_ref(), now_ms)? {
            new_crash = true;
        }
        if process.is_none() {
            continue;
        }
        if stmts::process_ended(
            conn,
            &exit.process_id,
            crashed,
            exit.exit_code,
            exit.signal,
            &reason,
            now_ms,
        )? {
            placement_changed = true;
            edits.push(Edit::Removed(exit.process_id.clone()));
        }
    }

    let known: HashMap<String, String> = rows::all(
        conn,
        &format!(
            "SELECT id, agent_state FROM processes WHERE machine_id = ?1 AND agent_state IN {LIVE_STATES}"
        ),
        args![machine.id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?
    .into_iter()
    .collect();
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
                // Guard: only a live process of this machine changes state.
                let changed = rows::run(
                    conn,
                    &format!(
                        "UPDATE processes SET agent_state = ?1, pid = ?2, port = ?3,
                            ready_at = CASE WHEN ?1 = 'READY' THEN COALESCE(ready_at, ?4) ELSE ready_at END
                         WHERE id = ?5 AND machine_id = ?6 AND agent_state IN {LIVE_STATES}"
                    ),
                    args![
                        state,
                        i64::from(process.pid),
                        i64::from(process.port),
                        now_ms,
                        process.process_id,
                        machine.id
                    ],
                )?;
                if changed > 0 {
                    placement_changed = true;
                    became_ready |= process.state == AgentProcessState::Ready;
                    edits.push(Edit::State {
                        process_id: process.process_id.clone(),
                        state: process.state,
                        pid: process.pid,
                        port: process.port,
                    });
                }
            }
            None => {
                // Guard: ON CONFLICT DO NOTHING, so a report about a process that already
                // ended (a late, retried report) does not bring it back to life.
                let started = crate::time::parse_rfc3339(&process.started_at).unwrap_or(now_ms);
                let ready_at = (process.state == AgentProcessState::Ready).then_some(now_ms);
                let inserted = rows::run(
                    conn,
                    "INSERT INTO processes (id, machine_id, zone_id, fleet_id, build_id, port, pid, agent_state, started_at, ready_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (id) DO NOTHING",
                    args![
                        process.process_id,
                        machine.id,
                        machine.zone_id,
                        machine.fleet_id,
                        process.build_id,
                        i64::from(process.port),
                        i64::from(process.pid),
                        state,
                        started,
                        ready_at
                    ],
                )?;
                if inserted > 0 {
                    became_ready |= ready_at.is_some();
                    placement_changed = true;
                    edits.push(Edit::Added(ProcessRecord {
                        id: process.process_id.clone(),
                        machine_id: machine.id.clone(),
                        zone_id: machine.zone_id.clone(),
                        fleet_id: machine.fleet_id.clone(),
                        build_id: process.build_id.clone(),
                        port: process.port,
                        pid: Some(process.pid),
                        state: ProcessState::Live(process.state),
                        active_sessions: 0,
                        sessions_started: 0,
                        started_at_ms: started,
                        restart_requested: false,
                    }));
                }
            }
        }
    }
    // A process the store thinks is live but the agent no longer runs has ended without
    // the agent telling us how (e.g. the agent restarted).
    for process in known.keys().filter(|id| !reported.contains(id.as_str())) {
        let reason = format!("process {process} is no longer running on its machine");
        if stmts::process_ended(conn, process, false, None, None, &reason, now_ms)? {
            placement_changed = true;
            edits.push(Edit::Removed(process.clone()));
        }
    }
    if new_crash || became_ready {
        stmts::crash_loop_assessed(conn, &machine.fleet_id, new_crash, now_ms)?;
    }
    // The picture follows what the SQL did. A change to a process it did not know means
    // it had drifted: the machine is read again.
    let mut doubt = false;
    if let Some(zone) = ctx.hot.zone_of_machine(&machine.id) {
        zone.update_record(&machine.id, |record| {
            record.last_heartbeat_ms = Some(now_ms);
            record.agent_error = report.error.clone();
            if record.bare_metal_id.is_none() {
                record.address = Some(report.address.clone());
            }
            if matches!(
                record.status,
                MachineStatus::Pending | MachineStatus::Launching
            ) {
                record.status = MachineStatus::Active;
            }
        });
        for edit in edits {
            match edit {
                Edit::Ended {
                    process_id,
                    session_id,
                } => zone.ended(&machine.id, &process_id, &session_id),
                Edit::Removed(process_id) => zone.remove_process(&machine.id, &process_id),
                Edit::Added(process) => zone.put_process(&machine.id, process),
                Edit::State {
                    process_id,
                    state,
                    pid,
                    port,
                } => match zone.process(&machine.id, &process_id) {
                    Some(known) => {
                        let mut process = known.record.clone();
                        process.state = ProcessState::Live(state);
                        process.pid = Some(pid);
                        process.port = port;
                        zone.put_process(&machine.id, process);
                    }
                    None => doubt = true,
                },
            }
        }
    }
    if doubt {
        load::machine(ctx, &machine.id)?;
    }
    if placement_changed {
        ctx.machine_changed(&machine.id, &machine.zone_id);
    }
    Ok(ReportOutcome {
        placement_changed,
        sessions_ended,
    })
}

/// A change the report made to a live process, for the picture.
enum Edit {
    Ended {
        process_id: String,
        session_id: String,
    },
    Removed(String),
    Added(ProcessRecord),
    State {
        process_id: String,
        state: AgentProcessState,
        pid: u32,
        port: u16,
    },
}
