//! One connection type for both databases: the store's statements are written once, in
//! the SQL SQLite and Postgres share, and run through [`Conn`].
//!
//! The few real differences are the dialect's ([`Dialect`]):
//! - placeholders: statements are written with SQLite's `?NNN` (or `?`); Postgres gets
//!   them as `$NNN` (a bare `?` numbered as SQLite numbers it);
//! - two-argument `GREATEST(a, b)` / `LEAST(a, b)`, which SQLite spells as scalar
//!   `MAX`/`MIN`;
//! - row locks (`FOR UPDATE`, `FOR SHARE`) exist only on Postgres: statements that need
//!   one ask [`Conn::dialect`] (SQLite has one writer, which serializes them anyway);
//! - integer widths and booleans: values are bound by what the column is (an `i64` into a
//!   Postgres `INTEGER` or `BOOLEAN` column is converted, checked), so callers bind `i64`,
//!   `bool`, `f64` and text alike on both, and read them back the same way.
//!
//! Statements are prepared once per connection and cached (rusqlite's cache; a map of
//! prepared statements on Postgres).

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use bytes::BytesMut;
use postgres::types::{FromSql, IsNull, ToSql, Type};

/// Which database a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Starts a write transaction. SQLite's takes the write lock at once (`IMMEDIATE`),
    /// so a transaction never fails half-way for want of it.
    pub fn begin(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }

    /// The database's clock in milliseconds since the epoch, as SQL (leases expire by it,
    /// so replicas on hosts whose clocks differ agree on them).
    pub fn now_ms(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
            Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }
}

/// A database error: the driver's, or a value that did not fit.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("{0}")]
    Value(String),
}

/// What a failed statement broke, when it was a constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A unique or primary key.
    Unique,
    /// A foreign key.
    ForeignKey,
}

impl DbError {
    /// The constraint a statement violated, if that is why it failed.
    pub fn violation(&self) -> Option<Violation> {
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => {
                match failure.extended_code {
                    rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY => Some(Violation::Unique),
                    rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => Some(Violation::ForeignKey),
                    _ => None,
                }
            }
            DbError::Postgres(error) => match error.code() {
                Some(code) if *code == postgres::error::SqlState::UNIQUE_VIOLATION => {
                    Some(Violation::Unique)
                }
                Some(code) if *code == postgres::error::SqlState::FOREIGN_KEY_VIOLATION => {
                    Some(Violation::ForeignKey)
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether trying again may succeed: Postgres chose this transaction as a deadlock's
    /// victim, or could not serialize it, or a lock was not to be had.
    pub fn is_transient(&self) -> bool {
        use postgres::error::SqlState;
        matches!(self, DbError::Postgres(error) if error.code().is_some_and(|code| {
            *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::LOCK_NOT_AVAILABLE
        }))
    }

    /// Whether the connection itself is gone (a reconnect, not a retry, helps).
    pub fn is_closed(&self) -> bool {
        matches!(self, DbError::Postgres(error) if error.is_closed())
    }
}

/// A value bound to a statement, borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Null,
    Int(i64),
    Bool(bool),
    Real(f64),
    Text(&'a str),
}

/// What can be bound to a statement.
pub trait ToArg {
    fn arg(&self) -> Arg<'_>;
}

macro_rules! int_arg {
    ($($t:ty),*) => {$(
        impl ToArg for $t {
            fn arg(&self) -> Arg<'_> {
                Arg::Int(i64::from(*self))
            }
        }
    )*};
}
int_arg!(i64, i32, u32, u16, u8, i16);

impl ToArg for usize {
    fn arg(&self) -> Arg<'_> {
        Arg::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToArg for bool {
    fn arg(&self) -> Arg<'_> {
        Arg::Bool(*self)
    }
}

impl ToArg for f64 {
    fn arg(&self) -> Arg<'_> {
        Arg::Real(*self)
    }
}

impl ToArg for str {
    fn arg(&self) -> Arg<'_> {
        Arg::Text(self)
    }
}

impl ToArg for String {
    fn arg(&self) -> Arg<'_> {
        Arg::Text(self)
    }
}

impl<T: ToArg + ?Sized> ToArg for &T {
    fn arg(&self) -> Arg<'_> {
        (**self).arg()
    }
}

impl<T: ToArg> ToArg for Option<T> {
    fn arg(&self) -> Arg<'_> {
        match self {
            Some(value) => value.arg(),
            None => Arg::Null,
        }
    }
}

/// An owned value: what a dynamic filter binds, and what a column holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl ToArg for Value {
    fn arg(&self) -> Arg<'_> {
        match self {
            Value::Null | Value::Blob(_) => Arg::Null,
            Value::Int(value) => Arg::Int(*value),
            Value::Real(value) => Arg::Real(*value),
            Value::Text(value) => Arg::Text(value),
        }
    }
}

/// Binds values in order: `args![a, b, c]`.
#[macro_export]
macro_rules! args {
    () => { &[] as &[&dyn $crate::store::db::ToArg] };
    ($($value:expr),+ $(,)?) => {
        &[$(&$value as &dyn $crate::store::db::ToArg),+] as &[&dyn $crate::store::db::ToArg]
    };
}
pub use args;

/// What a column can be read as.
pub trait FromValue: Sized {
    fn from_value(value: Value) -> Result<Self, DbError>;
}

fn mismatch(want: &str, got: &Value) -> DbError {
    DbError::Value(format!("expected {want}, found {got:?}"))
}

impl FromValue for i64 {
    fn from_value(value: Value) -> Result<Self, DbError> {
        match value {
            Value::Int(v) => Ok(v),
            other => Err(mismatch("an integer", &other)),
        }
    }
}

impl FromValue for i32 {
    fn from_value(value: Value) -> Result<Self, DbError> {
        let v = i64::from_value(value)?;
        i32::try_from(v).map_err(|_| DbError::Value(format!("{v} does not fit in 32 bits")))
    }
}

impl FromValue for bool {
    fn from_value(value: Value) -> Result<Self, DbError> {
        Ok(i64::from_value(value)? != 0)
    }
}

impl FromValue for f64 {
    fn from_value(value: Value) -> Result<Self, DbError> {
        match value {
            Value::Real(v) => Ok(v),
            Value::Int(v) => Ok(v as f64),
            other => Err(mismatch("a number", &other)),
        }
    }
}

impl FromValue for String {
    fn from_value(value: Value) -> Result<Self, DbError> {
        match value {
            Value::Text(v) => Ok(v),
            other => Err(mismatch("text", &other)),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: Value) -> Result<Self, DbError> {
        match value {
            Value::Blob(v) => Ok(v),
            Value::Text(v) => Ok(v.into_bytes()),
            other => Err(mismatch("bytes", &other)),
        }
    }
}

impl FromValue for Value {
    fn from_value(value: Value) -> Result<Self, DbError> {
        Ok(value)
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: Value) -> Result<Self, DbError> {
        match value {
            Value::Null => Ok(None),
            value => T::from_value(value).map(Some),
        }
    }
}

/// A column: by position or by name.
#[derive(Debug, Clone, Copy)]
pub enum Col<'a> {
    At(usize),
    Named(&'a str),
}

impl From<usize> for Col<'_> {
    fn from(at: usize) -> Self {
        Col::At(at)
    }
}

impl<'a> From<&'a str> for Col<'a> {
    fn from(name: &'a str) -> Self {
        Col::Named(name)
    }
}

/// A row of a result, from either database.
pub enum Row<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a postgres::Row),
}

impl Row<'_> {
    /// Column `col` as a `T`.
    pub fn get<'c, C: Into<Col<'c>>, T: FromValue>(&self, col: C) -> Result<T, DbError> {
        let col = col.into();
        let value = match (self, col) {
            (Row::Sqlite(row), Col::At(at)) => sqlite_value(row.get_ref(at)?),
            (Row::Sqlite(row), Col::Named(name)) => sqlite_value(row.get_ref(name)?),
            (Row::Postgres(row), Col::At(at)) => row.try_get::<_, PgValue>(at)?.0,
            (Row::Postgres(row), Col::Named(name)) => row.try_get::<_, PgValue>(name)?.0,
        };
        T::from_value(value).map_err(|error| DbError::Value(format!("column {col:?}: {error}")))
    }
}

fn sqlite_value(value: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(v) => Value::Int(v),
        ValueRef::Real(v) => Value::Real(v),
        ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
        ValueRef::Blob(v) => Value::Blob(v.to_vec()),
    }
}

struct SqliteArg<'a>(Arg<'a>);

impl rusqlite::ToSql for SqliteArg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Arg::Null => ValueRef::Null,
            Arg::Int(v) => ValueRef::Integer(v),
            Arg::Bool(v) => ValueRef::Integer(i64::from(v)),
            Arg::Real(v) => ValueRef::Real(v),
            Arg::Text(v) => ValueRef::Text(v.as_bytes()),
        }))
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// A value bound by what its Postgres parameter is.
#[derive(Debug)]
struct PgArg<'a>(Arg<'a>);

impl ToSql for PgArg<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let int = |v: i64, out: &mut BytesMut| -> Result<IsNull, BoxError> {
            match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
                Type::BOOL => (v != 0).to_sql(ty, out),
                Type::FLOAT8 => (v as f64).to_sql(ty, out),
                Type::FLOAT4 => (v as f32).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    v.to_string().as_str().to_sql(ty, out)
                }
                _ => Err(format!("an integer cannot be bound to a {ty} parameter").into()),
            }
        };
        match self.0 {
            Arg::Null => Ok(IsNull::Yes),
            Arg::Int(v) => int(v, out),
            Arg::Bool(v) => match *ty {
                Type::BOOL => v.to_sql(ty, out),
                _ => int(i64::from(v), out),
            },
            Arg::Real(v) => match *ty {
                Type::FLOAT8 => v.to_sql(ty, out),
                Type::FLOAT4 => (v as f32).to_sql(ty, out),
                _ => Err(format!("a number cannot be bound to a {ty} parameter").into()),
            },
            Arg::Text(v) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    v.to_sql(ty, out)
                }
                _ => Err(format!("text cannot be bound to a {ty} parameter").into()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// A column read by what its Postgres type is.
struct PgValue(Value);

impl<'a> FromSql<'a> for PgValue {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(PgValue(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT2 => Value::Int(i64::from(i16::from_sql(ty, raw)?)),
            Type::BOOL => Value::Int(i64::from(bool::from_sql(ty, raw)?)),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f64::from(f32::from_sql(ty, raw)?)),
            Type::BYTEA => Value::Blob(raw.to_vec()),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                Value::Text(String::from_sql(ty, raw)?)
            }
            _ => return Err(format!("a {ty} column is not read by the store (CAST it)").into()),
        }))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(PgValue(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Rewrites a statement for Postgres: `?NNN` and `?` placeholders to `$NNN`, outside
/// quoted text.
pub fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut highest = 0u32;
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                out.push(c);
            }
            '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                let n = if digits.is_empty() {
                    highest + 1
                } else {
                    digits.parse().unwrap_or(0)
                };
                highest = highest.max(n);
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(c),
        }
    }
    out
}

/// Rewrites a statement for SQLite: two-argument `GREATEST`/`LEAST` to scalar `MAX`/`MIN`.
pub fn to_sqlite(sql: &str) -> Cow<'_, str> {
    if sql.contains("GREATEST(") || sql.contains("LEAST(") {
        Cow::Owned(sql.replace("GREATEST(", "MAX(").replace("LEAST(", "MIN("))
    } else {
        Cow::Borrowed(sql)
    }
}

/// Statements a Postgres connection keeps prepared, at most (dynamic list filters make new
/// texts; past this the cache starts over).
const PG_STATEMENT_CACHE: usize = 512;

/// A Postgres connection with its prepared statements.
pub struct PgConn {
    client: RefCell<postgres::Client>,
    statements: RefCell<HashMap<String, postgres::Statement>>,
    /// Rows changed by statements so far (SQLite's `total_changes`).
    changed: Cell<u64>,
    /// Statements that failed so far: on Postgres a failed statement aborts the
    /// transaction it is in.
    failed: Cell<u64>,
}

impl PgConn {
    pub fn new(client: postgres::Client) -> Self {
        PgConn {
            client: RefCell::new(client),
            statements: RefCell::new(HashMap::new()),
            changed: Cell::new(0),
            failed: Cell::new(0),
        }
    }

    /// The client itself (listening for notifications).
    pub fn client_mut(&self) -> std::cell::RefMut<'_, postgres::Client> {
        self.client.borrow_mut()
    }

    /// Counts a failed statement.
    fn failing<T>(&self, result: Result<T, postgres::Error>) -> Result<T, DbError> {
        if result.is_err() {
            self.failed.set(self.failed.get() + 1);
        }
        Ok(result?)
    }

    fn statement(&self, sql: &str) -> Result<postgres::Statement, DbError> {
        if let Some(statement) = self.statements.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self
            .failing(self.client.borrow_mut().prepare(&to_postgres(sql)))
            .map_err(|error| DbError::Value(format!("{error}: in {sql}")))?;
        let mut statements = self.statements.borrow_mut();
        if statements.len() >= PG_STATEMENT_CACHE {
            statements.clear();
        }
        statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

/// A connection to either database.
pub enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<PgConn>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conn::{:?}", self.dialect())
    }
}

fn pg_args<'a>(args: &'a [&'a dyn ToArg]) -> Vec<PgArg<'a>> {
    args.iter().map(|a| PgArg(a.arg())).collect()
}

fn pg_refs<'a>(args: &'a [PgArg<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

impl Conn {
    pub fn dialect(&self) -> Dialect {
        match self {
            Conn::Sqlite(_) => Dialect::Sqlite,
            Conn::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Whether the connection is gone (Postgres closed it, or the network did): a new one
    /// is needed.
    pub fn is_broken(&self) -> bool {
        match self {
            Conn::Sqlite(_) => false,
            Conn::Postgres(pg) => pg.client.borrow().is_closed(),
        }
    }

    /// The SQLite connection, for what only SQLite has (pragmas, checkpoints).
    pub fn sqlite(&self) -> Option<&rusqlite::Connection> {
        match self {
            Conn::Sqlite(conn) => Some(conn),
            Conn::Postgres(_) => None,
        }
    }

    /// Runs a statement; the rows it changed.
    pub fn run(&self, sql: &str, args: &[&dyn ToArg]) -> Result<usize, DbError> {
        match self {
            Conn::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(&to_sqlite(sql))?;
                Ok(statement.execute(rusqlite::params_from_iter(
                    args.iter().map(|a| SqliteArg(a.arg())),
                ))?)
            }
            Conn::Postgres(pg) => {
                let statement = pg.statement(sql)?;
                let bound = pg_args(args);
                let changed =
                    pg.failing(pg.client.borrow_mut().execute(&statement, &pg_refs(&bound)))?;
                pg.changed.set(pg.changed.get() + changed);
                Ok(usize::try_from(changed).unwrap_or(usize::MAX))
            }
        }
    }

    /// Runs a query and maps each row, in order.
    pub fn all<T, E: From<DbError>>(
        &self,
        sql: &str,
        args: &[&dyn ToArg],
        mut map: impl FnMut(&Row<'_>) -> Result<T, E>,
    ) -> Result<Vec<T>, E> {
        let mut out = Vec::new();
        self.each(sql, args, |row| -> Result<bool, E> {
            out.push(map(row)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Runs a query and maps its first row, if any (more rows are not an error).
    pub fn first<T, E: From<DbError>>(
        &self,
        sql: &str,
        args: &[&dyn ToArg],
        mut map: impl FnMut(&Row<'_>) -> Result<T, E>,
    ) -> Result<Option<T>, E> {
        let mut first = None;
        self.each(sql, args, |row| -> Result<bool, E> {
            first = Some(map(row)?);
            Ok(false)
        })?;
        Ok(first)
    }

    /// Runs a query, handing its rows in order to `each` until it answers false.
    fn each<E: From<DbError>>(
        &self,
        sql: &str,
        args: &[&dyn ToArg],
        mut each: impl FnMut(&Row<'_>) -> Result<bool, E>,
    ) -> Result<(), E> {
        match self {
            Conn::Sqlite(conn) => {
                let mut statement = conn
                    .prepare_cached(&to_sqlite(sql))
                    .map_err(DbError::from)?;
                let mut rows = statement
                    .query(rusqlite::params_from_iter(
                        args.iter().map(|a| SqliteArg(a.arg())),
                    ))
                    .map_err(DbError::from)?;
                while let Some(row) = rows.next().map_err(DbError::from)? {
                    if !each(&Row::Sqlite(row))? {
                        break;
                    }
                }
            }
            Conn::Postgres(pg) => {
                // Every row is read, so the statement has finished (its error, if any, is
                // seen here) before the next one is sent.
                let statement = pg.statement(sql)?;
                let bound = pg_args(args);
                let rows =
                    pg.failing(pg.client.borrow_mut().query(&statement, &pg_refs(&bound)))?;
                for row in &rows {
                    if !each(&Row::Postgres(row))? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// One value of the first row (`None` when there is no row).
    pub fn value<T: FromValue>(
        &self,
        sql: &str,
        args: &[&dyn ToArg],
    ) -> Result<Option<T>, DbError> {
        self.first(sql, args, |row| row.get(0))
    }

    /// Runs statements without parameters, as one text (transaction control, migrations).
    pub fn batch(&self, sql: &str) -> Result<(), DbError> {
        match self {
            Conn::Sqlite(conn) => Ok(conn.prepare_cached(sql)?.execute([]).map(|_| ())?),
            Conn::Postgres(pg) => pg.failing(pg.client.borrow_mut().batch_execute(sql)),
        }
    }

    /// Statements that failed on this connection so far (counted on Postgres, where a
    /// failure aborts the transaction; SQLite rolls back only the failed statement).
    pub fn total_errors(&self) -> u64 {
        match self {
            Conn::Sqlite(_) => 0,
            Conn::Postgres(pg) => pg.failed.get(),
        }
    }

    /// Forgets failures since `errors_before`: they were rolled back to a savepoint, which
    /// left the transaction usable.
    pub fn recovered(&self, errors_before: u64) {
        if let Conn::Postgres(pg) = self {
            pg.failed.set(errors_before);
        }
    }

    /// Rows changed on this connection so far.
    pub fn total_changes(&self) -> u64 {
        match self {
            Conn::Sqlite(conn) => conn.total_changes(),
            Conn::Postgres(pg) => pg.changed.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered_for_postgres() {
        let cases = [
            (
                "SELECT 1 FROM t WHERE a = ?1 AND b = ?2",
                "SELECT 1 FROM t WHERE a = $1 AND b = $2",
            ),
            ("WHERE a = ? AND b = ?", "WHERE a = $1 AND b = $2"),
            ("WHERE a = ?3 AND b = ?", "WHERE a = $3 AND b = $4"),
            ("WHERE a = '?' AND b = ?1", "WHERE a = '?' AND b = $1"),
            (
                "WHERE a LIKE ? ESCAPE '\\' AND b = ?",
                "WHERE a LIKE $1 ESCAPE '\\' AND b = $2",
            ),
            ("WHERE a = ?12", "WHERE a = $12"),
        ];
        for (sqlite, postgres) in cases {
            assert_eq!(to_postgres(sqlite), postgres, "{sqlite}");
        }
    }

    #[test]
    fn greatest_becomes_max_for_sqlite() {
        assert_eq!(
            to_sqlite("SET a = GREATEST(a, ?1), b = LEAST(b, 2)"),
            "SET a = MAX(a, ?1), b = MIN(b, 2)"
        );
        assert!(matches!(
            to_sqlite("SELECT MAX(a) FROM t"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn sqlite_values_round_trip() {
        let conn = Conn::Sqlite(rusqlite::Connection::open_in_memory().unwrap());
        conn.batch("CREATE TABLE t (a INTEGER, b TEXT, c BOOLEAN, d REAL)")
            .unwrap();
        let name = String::from("x");
        assert_eq!(
            conn.run(
                "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
                args![7i64, name, true, 1.5f64]
            )
            .unwrap(),
            1
        );
        let row: (i64, String, bool, f64, Option<i64>) = conn
            .first("SELECT a, b, c, d, NULL FROM t", args![], |row| {
                Ok::<_, DbError>((
                    row.get(0)?,
                    row.get("b")?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            })
            .unwrap()
            .unwrap();
        assert_eq!(row, (7, "x".into(), true, 1.5, None));
        assert_eq!(
            conn.value::<i64>("SELECT GREATEST(a, ?1) FROM t", args![9])
                .unwrap(),
            Some(9)
        );
    }
}
