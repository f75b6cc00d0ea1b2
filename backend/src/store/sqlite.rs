//! SQLite: connecting (WAL, `synchronous = NORMAL` with the writer's flusher syncing the
//! log before any answer, so every answer is durable), pragmas, migrations and the
//! checkpoint thread. Everything else is the shared SQL engine in [`super::sql`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use rusqlite_migration::{Migrations, M};

use super::db::Conn;
use crate::{Error, Result};

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../../migrations/sqlite/0001_init.sql")),
        M::up(include_str!("../../migrations/sqlite/0002_report_seq.sql")),
        M::up(include_str!("../../migrations/sqlite/0003_scaling.sql")),
        M::up(include_str!("../../migrations/sqlite/0004_events.sql")),
        M::up(include_str!("../../migrations/sqlite/0005_crashes.sql")),
        M::up(include_str!("../../migrations/sqlite/0006_bare_metal.sql")),
        M::up(include_str!("../../migrations/sqlite/0007_reboot.sql")),
        M::up(include_str!(
            "../../migrations/sqlite/0008_build_updates.sql"
        )),
        M::up(include_str!("../../migrations/sqlite/0009_live_rows.sql")),
        M::up(include_str!("../../migrations/sqlite/0010_leases.sql")),
    ])
}

pub fn connect(path: &Path, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    // The writer's commits do not sync: its flusher fsyncs the write-ahead log before any
    // job is answered (see `writer`), so an acknowledged placement survives a power cut,
    // not only a kill -9. NORMAL still syncs around checkpoints, so the log is never
    // reused before the database file holds what it had.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Savepoint and statement journals in memory: every job of a batch runs in its own
    // savepoint, and a temporary file for each would cost a write per page it touches.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Pages of the live rows stay in memory; reads of the file go through the page cache
    // mapping instead of a read call each.
    conn.pragma_update(
        None,
        "cache_size",
        if read_only { -16_384 } else { -65_536 },
    )?;
    conn.pragma_update(None, "mmap_size", 256i64 << 20)?;
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// Write-ahead log frames past which a checkpoint waits for the writer (`RESTART`) instead
/// of running beside it, so the log cannot grow without bound (64 MiB of 4 KiB pages).
const WAL_FORCE_FRAMES: i64 = 16_384;

/// Copies the write-ahead log into the database file beside the writer (its commits never
/// do), as fast as frames come: a `PASSIVE` checkpoint never waits for the writer nor holds
/// it up, and once one has copied every frame, the writer's next transaction starts the log
/// over. Should the writer outrun it, past [`WAL_FORCE_FRAMES`] one checkpoint waits for a
/// gap between transactions and copies everything. Stops when the store is dropped.
pub fn checkpoints(path: &Path, alive: std::sync::Weak<()>) -> Result<()> {
    let conn = connect(path, false)?;
    std::thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || {
            let checkpoint = |mode: &str| -> rusqlite::Result<(i64, i64)> {
                conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
                    Ok((row.get(1)?, row.get(2)?))
                })
            };
            while alive.upgrade().is_some() {
                match checkpoint("PASSIVE") {
                    Ok((log, _)) if log > WAL_FORCE_FRAMES => {
                        if let Err(error) = checkpoint("RESTART") {
                            tracing::warn!(%error, "WAL checkpoint (restart) failed; retrying");
                        }
                    }
                    // Caught up: the log starts over at the next write.
                    Ok((log, copied)) if copied >= log => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(_) => std::thread::sleep(Duration::from_millis(1)),
                    Err(error) => {
                        tracing::warn!(%error, "WAL checkpoint failed; retrying");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map_err(|e| Error::Internal(format!("start the checkpoint thread: {e}")))?;
    Ok(())
}

/// Brings the schema to the latest version. A database made by an earlier fleetformd
/// (which tracked migrations in sqlx's `_sqlx_migrations` table) starts from the number
/// it had applied.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let sqlx_table: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            [],
            |row| row.get(0),
        )
        .ok();
    if version == 0 && sqlx_table.is_some() {
        let applied: i64 = conn.query_row(
            "SELECT COUNT(*) FROM _sqlx_migrations WHERE success",
            [],
            |row| row.get(0),
        )?;
        conn.pragma_update(None, "user_version", applied)?;
    }
    migrations()
        .to_latest(conn)
        .map_err(|e| Error::Internal(format!("migrations: {e}")))
}

/// The writer's connection to the database at `path` (created if needed), migrated, and
/// the path of its write-ahead log (the flusher syncs it).
pub fn open_writer(path: &Path) -> Result<(Conn, PathBuf)> {
    let mut conn = connect(path, false)?;
    migrate(&mut conn)?;
    // The checkpoint thread copies the log; the writer's commits never do.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    Ok((Conn::Sqlite(conn), wal))
}

/// A reader's connection (read-only; it sees the last commit).
pub fn open_reader(path: &Path) -> Result<Conn> {
    Ok(Conn::Sqlite(connect(path, true)?))
}
