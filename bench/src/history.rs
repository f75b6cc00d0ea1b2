//! History for the `simple-60k-history` scenario: ended sessions, each on its own exited
//! process, as simple mode leaves them, written straight into the store's SQLite file
//! (fleetformd keeps running; its writer waits its turn for the file's lock). They are
//! spread over the zone's live machines and ended within the last hour, so nothing prunes
//! them and every per-machine read meets them.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use fleetform_api::Machine;
use rusqlite::params;

/// Rows per transaction: short enough that fleetformd's writer never waits long.
const CHUNK: u64 = 10_000;

pub fn seed(
    database: &Path,
    fleet_id: &str,
    zone_id: &str,
    machines: &[Machine],
    count: u64,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !machines.is_empty(),
        "the zone has no machine to put history on"
    );
    let mut conn = rusqlite::Connection::open(database)
        .with_context(|| format!("open {}", database.display()))?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let build: String = conn.query_row(
        "SELECT build_id FROM fleets WHERE id = ?1",
        params![fleet_id],
        |row| row.get(0),
    )?;
    let mut written = 0;
    while written < count {
        let tx = conn.transaction()?;
        {
            let mut process = tx.prepare_cached(
                "INSERT INTO processes (id, machine_id, zone_id, fleet_id, build_id, port, pid, agent_state,
                    active_sessions, sessions_started, exit_code, started_at, ended_at, ready_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 7000, 0, 'EXITED', 0, 1, 0, ?6, ?7, ?6)",
            )?;
            let mut session = tx.prepare_cached(
                "INSERT INTO sessions (id, fleet_id, zone_id, zone_name, data_center, machine_id, process_id,
                    build_id, address, port, status, properties, created_at, ended_at)
                 VALUES (?1, ?2, ?3, 'eu', 'dc-1', ?4, ?5, ?6, 'sim', 7000, 'ENDED', '{}', ?7, ?8)",
            )?;
            let end = (written + CHUNK).min(count);
            for n in written..end {
                let machine = &machines[(n % machines.len() as u64) as usize].id;
                let at = now_ms - 3_600_000 + (n as i64 % 3_000_000);
                // Ids like the server's (UUIDv7: the time first), so they sort as old ones.
                let process_id = format!("proc-{at:012x}{n:020x}");
                process.execute(params![
                    process_id,
                    machine,
                    zone_id,
                    fleet_id,
                    build,
                    at,
                    at + 1000
                ])?;
                session.execute(params![
                    format!("sess-{at:012x}{n:020x}"),
                    fleet_id,
                    zone_id,
                    machine,
                    process_id,
                    build,
                    at,
                    at + 1000
                ])?;
            }
            written = end;
        }
        tx.commit()?;
    }
    Ok(())
}
