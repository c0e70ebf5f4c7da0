//! The SQL layer under Tresor's stores: the server's and the key server's persistence speak SQL
//! through [`Database`] and [`Conn`] only, and either backend takes their place:
//!
//! - **SQLite** ([`sqlite`]), the embedded default: one file, WAL, `synchronous=FULL`, one
//!   connection for writes and pooled read-only ones;
//! - **PostgreSQL** ([`postgres`]), for more than one machine: tokio-postgres on a small runtime
//!   of its own, one session for ordered writes, bounded pools for reads and for writes that
//!   need no order, each reopened when lost.
//!
//! Statements are written once, with SQLite's numbered parameters (`?1`, `?2`), in the SQL both
//! engines share (`INSERT ... ON CONFLICT ... DO UPDATE`, `RETURNING`); PostgreSQL gets them with
//! `$1`, `$2`. Where the dialects differ (the schema's DDL), a [`Migration`] holds both forms.
//! Integers are 64-bit in both (`BIGINT` in PostgreSQL), truth values are integers 0 and 1.
//!
//! The calls block their caller until the database answers, as SQLite's do: the stores are
//! called from synchronous code (the engine's passes, the services). The wait is not announced
//! to tokio with `block_in_place`: that hands the worker's tasks to a new thread each time, and
//! thousands of agent sessions touching the store at once made hundreds of threads (5.6 GiB in
//! the unlock storm); a round trip on a local network is as short as SQLite's own waits.

use std::fmt::{self, Write as _};

pub mod migrate;
pub mod postgres;
pub mod sqlite;
pub mod testing;
mod tls;

pub use migrate::Migration;

/// Why the database failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("Cannot open the database {location}: {reason}")]
    Open { location: String, reason: String },
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("Column {column} holds {found}, not {expected}")]
    Type {
        column: usize,
        expected: &'static str,
        found: &'static str,
    },
    #[error("A row has no column {0}")]
    NoColumn(usize),
    /// The database was made or migrated by a newer release.
    #[error("The database has schema {found}, written by tresor {release}; this release knows schemas up to {known}")]
    TooNew {
        found: i64,
        known: usize,
        release: String,
    },
}

impl DbError {
    pub(crate) fn postgres(e: tokio_postgres::Error) -> DbError {
        // The server's own message (and its detail) says what went wrong; the driver's
        // Display of a database error is only "db error".
        match e.as_db_error() {
            Some(db) => match db.detail() {
                Some(detail) => DbError::Postgres(format!("{} ({detail})", db.message())),
                None => DbError::Postgres(db.message().to_owned()),
            },
            // The driver's own message names the step ("error performing TLS handshake"), its
            // sources the cause.
            None => {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    let said = s.to_string();
                    if !text.contains(&said) {
                        text = format!("{text}: {said}");
                    }
                    source = s.source();
                }
                DbError::Postgres(text)
            }
        }
    }
}

/// Which SQL a backend speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A value given to or read from a statement.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl fmt::Debug for Value {
    // Never the contents: a value may be sealed material or a password hash.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Text(_) => "text",
            Value::Blob(_) => "bytes",
        }
    }
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::Int(v as i64)
            }
        }
    )*};
}
int_value!(i64, i32, u32, u16, u8, usize, u64);

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(v as i64)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Value::Blob(v)
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::Blob(v.to_vec())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}
impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Value {
        v.as_deref().map_or(Value::Null, Into::into)
    }
}

/// The values of a statement's parameters: `args![a, b]`.
#[macro_export]
macro_rules! args {
    () => { &[] as &[$crate::Value] };
    ($($v:expr),+ $(,)?) => { &[$($crate::Value::from($v)),+] as &[$crate::Value] };
}

/// A value read from a row.
pub trait FromValue: Sized {
    fn from_value(v: &Value, column: usize) -> Result<Self, DbError>;
}

fn mismatch<T>(v: &Value, column: usize, expected: &'static str) -> Result<T, DbError> {
    Err(DbError::Type {
        column,
        expected,
        found: v.kind(),
    })
}

impl FromValue for i64 {
    fn from_value(v: &Value, column: usize) -> Result<i64, DbError> {
        match v {
            Value::Int(i) => Ok(*i),
            other => mismatch(other, column, "an integer"),
        }
    }
}

macro_rules! narrow_int {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: &Value, column: usize) -> Result<$t, DbError> {
                let i = i64::from_value(v, column)?;
                <$t>::try_from(i).or_else(|_| mismatch(v, column, stringify!($t)))
            }
        }
    )*};
}
narrow_int!(i32, u32, u16, u8, u64, usize);

impl FromValue for bool {
    fn from_value(v: &Value, column: usize) -> Result<bool, DbError> {
        Ok(i64::from_value(v, column)? != 0)
    }
}
impl FromValue for String {
    fn from_value(v: &Value, column: usize) -> Result<String, DbError> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            other => mismatch(other, column, "text"),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: &Value, column: usize) -> Result<Vec<u8>, DbError> {
        match v {
            Value::Blob(b) => Ok(b.clone()),
            other => mismatch(other, column, "bytes"),
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value, column: usize) -> Result<Option<T>, DbError> {
        match v {
            Value::Null => Ok(None),
            other => T::from_value(other, column).map(Some),
        }
    }
}

/// One row of a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row(pub Vec<Value>);

impl Row {
    /// Column `i` (0-based) as a `T`.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T, DbError> {
        T::from_value(self.0.get(i).ok_or(DbError::NoColumn(i))?, i)
    }
}

/// A connection: what a store's statements run on (in a transaction, for writes).
pub trait Conn {
    fn dialect(&self) -> Dialect;
    /// Runs one statement; the number of rows it changed.
    fn execute(&self, sql: &str, args: &[Value]) -> Result<u64, DbError>;
    /// Runs one statement; the rows it returned.
    fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError>;
    /// Runs statements without parameters, separated by semicolons.
    fn batch(&self, sql: &str) -> Result<(), DbError>;
    /// Runs one statement once for each set of arguments, in order; the rows each changed.
    /// PostgreSQL sends them all before it reads the first answer (one round trip, not one
    /// each).
    fn execute_many(&self, sql: &str, rows: &[Vec<Value>]) -> Result<Vec<u64>, DbError> {
        rows.iter().map(|args| self.execute(sql, args)).collect()
    }
}

/// Parameters in one statement at most: within SQLite's 32,766 and PostgreSQL's 65,535.
const MAX_PARAMS: usize = 30_000;

/// `rows` cut into runs of many rows for one statement each, every run's length a power of two
/// (a few texts of statement for any number of rows, as each text is prepared and kept once a
/// connection), at most `MAX_PARAMS` parameters each.
fn runs_of_rows(rows: &[Vec<Value>]) -> Vec<&[Vec<Value>]> {
    let width = rows.first().map_or(1, |r| r.len().max(1));
    let most = (MAX_PARAMS / width).max(1);
    let most = if most.is_power_of_two() {
        most
    } else {
        most.next_power_of_two() / 2
    };
    let mut runs = Vec::new();
    let mut rest = rows;
    while !rest.is_empty() {
        let n = most.min(1 << rest.len().ilog2());
        let (run, after) = rest.split_at(n);
        runs.push(run);
        rest = after;
    }
    runs
}

/// `head VALUES (?1, ?2), (?3, ?4) tail` for `n` rows of `width` values.
fn insert_text(head: &str, width: usize, n: usize, tail: &str) -> String {
    let mut sql = String::with_capacity(head.len() + tail.len() + n * width * 6);
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for row in 0..n {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for col in 0..width {
            if col > 0 {
                sql.push_str(", ");
            }
            // Into the text itself: tens of thousands of placeholders in a storm's write.
            let _ = write!(sql, "?{}", row * width + col + 1);
        }
        sql.push(')');
    }
    if !tail.is_empty() {
        sql.push(' ');
        sql.push_str(tail);
    }
    sql
}

impl dyn Conn + '_ {
    /// Inserts `rows` (each with one value for each column `head` names, as in
    /// `INSERT INTO t (a, b)`) with statements of many rows each: for thousands of rows far
    /// less work for the database than a statement each. The number of rows inserted.
    pub fn insert_rows(&self, head: &str, rows: &[Vec<Value>]) -> Result<u64, DbError> {
        self.insert_rows_then(head, rows, "")
    }

    /// [`insert_rows`](Self::insert_rows) with `tail` after each statement's rows (an
    /// `ON CONFLICT` clause). No two rows may conflict with each other.
    pub fn insert_rows_then(
        &self,
        head: &str,
        rows: &[Vec<Value>],
        tail: &str,
    ) -> Result<u64, DbError> {
        let mut inserted = 0;
        for run in runs_of_rows(rows) {
            let args: Vec<Value> = run.iter().flatten().cloned().collect();
            inserted += self.execute(&insert_text(head, run[0].len(), run.len(), tail), &args)?;
        }
        Ok(inserted)
    }

    /// [`insert_rows`](Self::insert_rows) with `RETURNING id`: the ids of the new rows, in the
    /// order of `rows` (ids are given in the order rows are inserted; the rows a statement
    /// returns are in no promised order, so they are sorted).
    pub fn insert_rows_returning_ids(
        &self,
        head: &str,
        rows: &[Vec<Value>],
    ) -> Result<Vec<i64>, DbError> {
        let mut ids = Vec::with_capacity(rows.len());
        for run in runs_of_rows(rows) {
            let args: Vec<Value> = run.iter().flatten().cloned().collect();
            let sql = insert_text(head, run[0].len(), run.len(), "RETURNING id");
            let mut run_ids = self.map(&sql, &args, |r| r.get::<i64>(0))?;
            run_ids.sort_unstable();
            ids.extend(run_ids);
        }
        Ok(ids)
    }

    /// The first row, if any.
    pub fn query_opt(&self, sql: &str, args: &[Value]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// The first column of the first row (None without a row).
    pub fn value<T: FromValue>(&self, sql: &str, args: &[Value]) -> Result<Option<T>, DbError> {
        self.query_opt(sql, args)?.map(|r| r.get(0)).transpose()
    }

    /// Each row read by `f`.
    pub fn map<T>(
        &self,
        sql: &str,
        args: &[Value],
        f: impl FnMut(&Row) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        self.query(sql, args)?.iter().map(f).collect()
    }
}

/// What both backends do; [`Database`] is its face to the stores.
pub trait Backend: Send + Sync {
    fn dialect(&self) -> Dialect;
    /// Where the database is, for messages (never a password).
    fn location(&self) -> &str;
    /// Runs `f` in a transaction on the connection for writes: committed when `f` says
    /// true, rolled back otherwise.
    fn transaction(&self, f: &mut dyn FnMut(&dyn Conn) -> bool) -> Result<(), DbError>;
    /// Runs `f` on a connection for reads.
    fn read(&self, f: &mut dyn FnMut(&dyn Conn)) -> Result<(), DbError>;
    /// [`Backend::transaction`] for writes that need no order with the others (records that
    /// only ever grow): PostgreSQL runs several at once on connections of their own; SQLite,
    /// with one writer, runs them as any other.
    fn side_transaction(&self, f: &mut dyn FnMut(&dyn Conn) -> bool) -> Result<(), DbError> {
        self.transaction(f)
    }
    /// A connection of its own, for a worker that keeps one (a group-commit writer): its
    /// transactions are its own business (`BEGIN`, `SAVEPOINT`, `COMMIT` through
    /// [`Conn::batch`]).
    fn connect(&self) -> Result<Box<dyn Conn + Send>, DbError>;
    /// The schema version recorded (0 for a new database).
    fn schema_version(&self, conn: &dyn Conn) -> Result<i64, DbError>;
    fn set_schema_version(&self, conn: &dyn Conn, version: i64) -> Result<(), DbError>;
    /// Keeps other processes from migrating the same database until the transaction ends.
    fn lock_schema(&self, conn: &dyn Conn) -> Result<(), DbError>;
}

/// Where a store's database is.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL connection string (`postgres://USER@HOST:PORT/DB`) and the password, read
    /// from a file by the caller.
    Postgres {
        url: String,
        password: Option<zeroize::Zeroizing<String>>,
    },
}

impl Location {
    /// The location a daemon's configuration names: `database` (a PostgreSQL connection
    /// string) with its password read from `password_file`, or the SQLite file `sqlite` when
    /// `database` is unset. The error says what to change.
    pub fn configured(
        sqlite: std::path::PathBuf,
        database: Option<&str>,
        password_file: Option<&std::path::Path>,
    ) -> Result<Location, String> {
        let Some(url) = database else {
            if password_file.is_some() {
                return Err("database_password_file is set but database is not; set database = \"postgres://USER@HOST:PORT/DB\" or remove it".into());
            }
            return Ok(Location::Sqlite(sqlite));
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(format!(
                "database = {url:?} is not a PostgreSQL connection string; write postgres://USER@HOST:PORT/DB, or leave database unset for the SQLite file in data_dir"
            ));
        }
        let password = password_file
            .map(|f| {
                std::fs::read_to_string(f)
                    .map(zeroize::Zeroizing::new)
                    .map_err(|e| {
                        format!(
                            "Cannot read the database password from {}: {e}",
                            f.display()
                        )
                    })
            })
            .transpose()?;
        Ok(Location::Postgres {
            url: url.to_owned(),
            password,
        })
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "Sqlite({})", p.display()),
            Location::Postgres { url, .. } => write!(f, "Postgres({url})"),
        }
    }
}

/// A store's database, on either backend.
pub struct Database {
    backend: Box<dyn Backend>,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Database({})", self.backend.location())
    }
}

impl Database {
    /// Opens the database at `location` (an SQLite file is created, private to this user).
    pub fn open(location: &Location) -> Result<Database, DbError> {
        Ok(match location {
            Location::Sqlite(path) => Database {
                backend: Box::new(sqlite::Sqlite::open(path)?),
            },
            Location::Postgres { url, password } => Database {
                backend: Box::new(postgres::Postgres::connect(
                    url,
                    password.as_ref().map(|p| p.as_str()),
                )?),
            },
        })
    }

    /// An SQLite database in memory (tests).
    pub fn in_memory() -> Result<Database, DbError> {
        Ok(Database {
            backend: Box::new(sqlite::Sqlite::in_memory()?),
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.backend.dialect()
    }

    pub fn location(&self) -> &str {
        self.backend.location()
    }

    /// Runs `f` in a transaction: committed when it returns `Ok`, rolled back when `Err`.
    pub fn write<T, E: From<DbError>>(
        &self,
        f: impl FnOnce(&dyn Conn) -> Result<T, E>,
    ) -> Result<T, E> {
        self.in_transaction(false, f)
    }

    /// Runs `f` in a transaction that need not wait for the others (see
    /// [`Backend::side_transaction`]): committed when it returns `Ok`.
    pub fn write_aside<T, E: From<DbError>>(
        &self,
        f: impl FnOnce(&dyn Conn) -> Result<T, E>,
    ) -> Result<T, E> {
        self.in_transaction(true, f)
    }

    fn in_transaction<T, E: From<DbError>>(
        &self,
        aside: bool,
        f: impl FnOnce(&dyn Conn) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut f = Some(f);
        let mut out = None;
        let mut run = |conn: &dyn Conn| {
            let r = f.take().map(|f| f(conn));
            let ok = matches!(r, Some(Ok(_)));
            out = r;
            ok
        };
        match aside {
            false => self.backend.transaction(&mut run)?,
            true => self.backend.side_transaction(&mut run)?,
        }
        out.expect("the transaction ran its closure")
    }

    /// Runs `f` on the connection for reads.
    pub fn read<T, E: From<DbError>>(
        &self,
        f: impl FnOnce(&dyn Conn) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut f = Some(f);
        let mut out = None;
        self.backend
            .read(&mut |conn| out = f.take().map(|f| f(conn)))?;
        out.expect("the read ran its closure")
    }

    /// Applies the migrations the database lacks; see [`migrate`].
    pub fn migrate<E: From<DbError>>(
        &self,
        migrations: &[Migration],
        meta_from: usize,
        after: impl Fn(&dyn Conn, usize) -> Result<(), E>,
    ) -> Result<(), E> {
        migrate::run(self, migrations, meta_from, after)
    }

    /// A connection of its own (see [`Backend::connect`]).
    pub fn connect(&self) -> Result<Box<dyn Conn + Send>, DbError> {
        self.backend.connect()
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, width: usize) -> Vec<Vec<Value>> {
        (0..n)
            .map(|i| {
                (0..width)
                    .map(|c| Value::from((i * width + c) as i64))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn rows_are_cut_into_runs_of_powers_of_two_within_the_parameter_limit() {
        let lengths = |n, width| -> Vec<usize> {
            runs_of_rows(&rows(n, width))
                .iter()
                .map(|r| r.len())
                .collect()
        };
        assert_eq!(lengths(0, 3), Vec::<usize>::new());
        assert_eq!(lengths(1, 3), [1]);
        assert_eq!(lengths(13, 3), [8, 4, 1]);
        // 30,000 parameters: 8,192 rows of 3, 2,048 of 9.
        assert_eq!(lengths(20_000, 3), [8192, 8192, 2048, 1024, 512, 32]);
        assert_eq!(lengths(5000, 9), [2048, 2048, 512, 256, 128, 8]);
        assert_eq!(
            insert_text("INSERT INTO t (a, b)", 2, 2, "RETURNING id"),
            "INSERT INTO t (a, b) VALUES (?1, ?2), (?3, ?4) RETURNING id"
        );
    }

    fn many_rows_are_inserted_in_order(db: &Database) {
        db.write(|c| {
            c.batch(match c.dialect() {
                Dialect::Sqlite => {
                    "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, a BIGINT NOT NULL, b TEXT)"
                }
                Dialect::Postgres => {
                    "CREATE TABLE t (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, a BIGINT NOT NULL, b TEXT)"
                }
            })
        })
        .unwrap();
        // More rows than one statement takes, one without its text.
        let rows: Vec<Vec<Value>> = (0..20_000i64)
            .map(|i| {
                let b = (i != 7).then(|| format!("row {i}"));
                vec![Value::from(i), Value::from(b)]
            })
            .collect();
        let (first, rest) = rows.split_at(5);
        let ids = db
            .write(|c| c.insert_rows_returning_ids("INSERT INTO t (a, b)", first))
            .unwrap();
        assert_eq!(ids.len(), 5);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let n = db
            .write(|c| c.insert_rows("INSERT INTO t (a, b)", rest))
            .unwrap();
        assert_eq!(n, rest.len() as u64);
        let stored: Vec<(i64, i64, Option<String>)> = db
            .read(|c| {
                c.map("SELECT id, a, b FROM t ORDER BY id", &[], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
            })
            .unwrap();
        assert_eq!(stored.len(), 20_000);
        assert_eq!(
            stored[..5].iter().map(|s| s.0).collect::<Vec<_>>(),
            ids,
            "the ids given back are those of the rows, in order"
        );
        assert!(stored.iter().enumerate().all(|(i, s)| s.1 == i as i64));
        assert_eq!(stored[7].2, None);
        assert_eq!(stored[19_999].2.as_deref(), Some("row 19999"));
    }

    #[test]
    fn many_rows_are_inserted_in_order_sqlite() {
        many_rows_are_inserted_in_order(&Database::in_memory().unwrap());
    }

    #[test]
    fn many_rows_are_inserted_in_order_postgres() {
        let scratch = testing::ScratchPostgres::new();
        many_rows_are_inserted_in_order(&Database::open(scratch.location()).unwrap());
    }
}
