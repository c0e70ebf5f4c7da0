//! The SQLite backend: one file, WAL, `synchronous=FULL`; one connection for writes and pooled
//! read-only ones, so that reading does not wait for a large write.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::Connection;

use crate::{Backend, Conn, DbError, Dialect, Row, Value};

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn value(v: ValueRef<'_>, column: usize) -> Result<Value, DbError> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Text(t) => Value::Text(
            std::str::from_utf8(t)
                .map_err(|e| DbError::Sqlite(rusqlite::Error::Utf8Error(column, e)))?
                .to_owned(),
        ),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        ValueRef::Real(_) => {
            return Err(DbError::Type {
                column,
                expected: "an integer, text or bytes",
                found: "a real number",
            })
        }
    })
}

impl Conn for Connection {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&self, sql: &str, args: &[Value]) -> Result<u64, DbError> {
        let mut stmt = self.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(args))? as u64)
    }

    fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError> {
        let mut stmt = self.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(columns);
            for i in 0..columns {
                row.push(value(r.get_ref(i)?, i)?);
            }
            out.push(Row(row));
        }
        Ok(out)
    }

    fn batch(&self, sql: &str) -> Result<(), DbError> {
        Ok(self.execute_batch(sql)?)
    }
}

/// An SQLite database.
pub struct Sqlite {
    location: String,
    /// None in memory.
    path: Option<std::path::PathBuf>,
    write: Mutex<Connection>,
    /// Read-only connections not in use (none in memory: reads use the connection for writes).
    readers: Mutex<Vec<Connection>>,
}

/// Read-only connections kept for reuse at most.
const READERS: usize = 16;

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sqlite({})", self.location)
    }
}

impl Sqlite {
    /// Opens (creating) the file at `path`, readable by this user only in a folder only this
    /// user may enter: a store holds password hashes and sealed material.
    pub fn open(path: &Path) -> Result<Sqlite, DbError> {
        let location = path.display().to_string();
        let err = |reason: String| DbError::Open {
            location: location.clone(),
            reason,
        };
        private_file(path).map_err(|e| {
            err(format!(
                "cannot make it and its folder private (0600, 0700): {e}"
            ))
        })?;
        let write = Connection::open(path).map_err(|e| err(e.to_string()))?;
        setup(&write).map_err(|e| err(e.to_string()))?;
        // WAL files are made with the database's mode; set it again for those just made.
        private_file(path).map_err(|e| err(e.to_string()))?;
        Ok(Sqlite {
            location,
            path: Some(path.to_owned()),
            write: Mutex::new(write),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn reader(&self, path: &Path) -> Result<Connection, DbError> {
        if let Some(c) = self.readers.lock().ok().and_then(|mut r| r.pop()) {
            return Ok(c);
        }
        let c = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        c.busy_timeout(Duration::from_secs(10))?;
        Ok(c)
    }

    /// A database in memory (tests).
    pub fn in_memory() -> Result<Sqlite, DbError> {
        let conn = Connection::open_in_memory()?;
        setup(&conn)?;
        Ok(Sqlite {
            location: ":memory:".into(),
            path: None,
            write: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
        })
    }
}

fn setup(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // In memory there is no WAL; that is not an error.
    let _ = conn.pragma_update(None, "journal_mode", "WAL");
    conn.pragma_update(None, "synchronous", "FULL")
}

impl Backend for Sqlite {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn location(&self) -> &str {
        &self.location
    }

    fn transaction(&self, f: &mut dyn FnMut(&dyn Conn) -> bool) -> Result<(), DbError> {
        let mut conn = lock(&self.write);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if f(&*tx) {
            tx.commit()?;
        }
        // Dropped uncommitted: rolled back.
        Ok(())
    }

    fn read(&self, f: &mut dyn FnMut(&dyn Conn)) -> Result<(), DbError> {
        let Some(path) = &self.path else {
            f(&*lock(&self.write));
            return Ok(());
        };
        let conn = self.reader(path)?;
        f(&conn);
        if let Ok(mut readers) = self.readers.lock() {
            if readers.len() < READERS {
                readers.push(conn);
            }
        }
        Ok(())
    }

    fn connect(&self) -> Result<Box<dyn Conn + Send>, DbError> {
        let path = self.path.as_ref().ok_or_else(|| DbError::Open {
            location: self.location.clone(),
            reason: "a database in memory has one connection only".into(),
        })?;
        let conn = Connection::open(path)?;
        setup(&conn)?;
        Ok(Box::new(conn))
    }

    fn schema_version(&self, conn: &dyn Conn) -> Result<i64, DbError> {
        Ok(conn
            .query("PRAGMA user_version", &[])?
            .first()
            .map(|r| r.get(0))
            .transpose()?
            .unwrap_or(0))
    }

    fn set_schema_version(&self, conn: &dyn Conn, version: i64) -> Result<(), DbError> {
        conn.batch(&format!("PRAGMA user_version = {version}"))
    }

    fn lock_schema(&self, _conn: &dyn Conn) -> Result<(), DbError> {
        // The migration's transaction is IMMEDIATE: it holds the write lock already.
        Ok(())
    }
}

/// Creates `path` with mode 0600 (or sets it, and its WAL files'), and makes its folder 0700.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}
