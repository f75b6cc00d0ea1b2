//! Postgres: connecting and migrations. Everything else is the shared SQL engine in
//! [`super::sql`], the same statements SQLite runs.
//!
//! Migrations live in `migrations/postgres/` (the schema SQLite reached through its own
//! nine, in Postgres types: `BIGINT` for every integer, identity columns for sequences)
//! and are recorded in `fleetform_migrations`. They run under a transaction-scoped
//! advisory lock, so replicas starting together migrate once.

use std::str::FromStr;

use super::db::{Conn, PgConn};
use crate::{Error, Result};

/// The migrations, in order: (version, SQL).
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (2, include_str!("../../migrations/postgres/0002_leases.sql")),
    (
        3,
        include_str!("../../migrations/postgres/0003_fillfactor.sql"),
    ),
];

/// The advisory lock migrations hold ("fleetfrm" in ASCII).
const MIGRATION_LOCK: i64 = 0x666c_6565_7466_726d;

fn config(url: &str) -> Result<postgres::Config> {
    let mut config = postgres::Config::from_str(url)
        .map_err(|e| Error::Internal(format!("--database: not a Postgres URL: {e}")))?;
    if config.get_application_name().is_none() {
        config.application_name("fleetformd");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    Ok(config)
}

/// A connection to the database at `url`. Blocking: call it from a store thread, not from
/// async code (the client runs a small runtime of its own).
pub fn connect(url: &str) -> Result<Conn> {
    let client = config(url)?.connect(postgres::NoTls)?;
    Ok(Conn::Postgres(Box::new(PgConn::new(client))))
}

/// Brings the schema to the latest version.
pub fn migrate(url: &str) -> Result<()> {
    let mut client = config(url)?.connect(postgres::NoTls)?;
    let mut transaction = client.transaction()?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    transaction.batch_execute(
        "CREATE TABLE IF NOT EXISTS fleetform_migrations (
            version    BIGINT PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )?;
    let applied: Vec<i64> = transaction
        .query("SELECT version FROM fleetform_migrations", &[])?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        transaction
            .batch_execute(sql)
            .map_err(|e| Error::Internal(format!("postgres migration {version}: {e}")))?;
        transaction.execute(
            "INSERT INTO fleetform_migrations (version) VALUES ($1)",
            &[version],
        )?;
    }
    transaction.commit()?;
    Ok(())
}

/// Tables whose statistics the placement path's plans depend on.
const ANALYZED: &[&str] = &[
    "fleets",
    "zones",
    "machines",
    "processes",
    "sessions",
    "zone_leases",
];

/// Keeps the planner's statistics up to date on a thread of its own: every 5 s it
/// `ANALYZE`s each hot table with more rows changed since its last analysis than 10% of
/// its rows (and at least 50). Autovacuum does the same, but at most once a minute: a zone
/// just created would otherwise be planned from an empty table's statistics (a placement
/// scanning every process of its fleet instead of taking one by its key). Stops when
/// `alive` is gone.
pub fn maintain(url: String, alive: std::sync::Weak<()>) -> Result<()> {
    std::thread::Builder::new()
        .name("store-analyze".into())
        .spawn(move || {
            let mut client: Option<postgres::Client> = None;
            while alive.upgrade().is_some() {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = config(&url)
                        .ok()
                        .and_then(|c| c.connect(postgres::NoTls).ok());
                }
                if let Some(client) = client.as_mut() {
                    if let Err(error) = analyze_stale(client) {
                        tracing::debug!(%error, "refreshing the planner's statistics failed");
                    }
                }
                std::thread::sleep(std::time::Duration::from_secs(5));
            }
        })
        .map_err(|e| Error::Internal(format!("start the statistics thread: {e}")))?;
    Ok(())
}

fn analyze_stale(client: &mut postgres::Client) -> std::result::Result<(), postgres::Error> {
    let stale: Vec<String> = client
        .query(
            "SELECT relname FROM pg_stat_user_tables
             WHERE relname = ANY($1) AND n_mod_since_analyze > GREATEST(50, n_live_tup / 10)",
            &[&ANALYZED],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for table in stale {
        // The names come from ANALYZED, not from the database.
        if ANALYZED.contains(&table.as_str()) {
            client.batch_execute(&format!("ANALYZE {table}"))?;
        }
    }
    Ok(())
}
