//! The PostgreSQL backend: tokio-postgres on a runtime of its own (one thread); one session for
//! the ordered writes, bounded pools of sessions for reads and for writes that need no order. A
//! session found closed (the database restarted, a network cut) is opened again by the next
//! call; the call that met the closed session fails and says so.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use tokio::runtime::Handle;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, Config, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{Backend, Conn, DbError, Dialect, Row, Value};

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                _ => Err(format!("an integer cannot be given as {ty}").into()),
            },
            Value::Text(s) => s.to_sql(ty, out),
            Value::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn value(row: &tokio_postgres::Row, i: usize) -> Result<Value, DbError> {
    let ty = row.columns()[i].type_().clone();
    let e = DbError::postgres;
    Ok(match ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(e)?.into(),
        Type::INT4 => row.try_get::<_, Option<i32>>(i).map_err(e)?.into(),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)
            .map_err(e)?
            .map_or(Value::Null, |v| Value::Int(v.into())),
        Type::BOOL => row.try_get::<_, Option<bool>>(i).map_err(e)?.into(),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => {
            row.try_get::<_, Option<String>>(i).map_err(e)?.into()
        }
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i).map_err(e)?.into(),
        _ => {
            return Err(DbError::Type {
                column: i,
                expected: "an integer, text or bytes",
                found: "another type",
            })
        }
    })
}

/// `?N` (SQLite's numbered parameter) as `$N`, outside quoted text.
pub fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (None, '\'' | '"') => quoted = Some(c),
            (Some(q), c) if c == q => quoted = None,
            (None, '?') if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push('$');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// One connection and the statements prepared on it.
struct Session {
    client: Arc<Client>,
    statements: HashMap<String, Statement>,
}

/// Sessions of a pool at most: more callers wait for one (PostgreSQL's connections are few,
/// 100 by default, and shared by every server and key server on the database).
const POOL_SIZE: usize = 8;
/// Statements sent before their answers are read, at most (see `execute_many`).
const PIPELINE_WINDOW: usize = 1024;

/// The sessions of a pool: those not in use, and how many there are in all.
#[derive(Default)]
struct Sessions {
    idle: Vec<Session>,
    open: usize,
}

/// How a session is opened: the driver's settings and the TLS connector.
#[derive(Clone)]
struct Connect {
    config: Config,
    tls: MakeRustlsConnect,
}

/// A PostgreSQL database.
pub struct Postgres {
    location: String,
    connect: Connect,
    runtime: Option<tokio::runtime::Runtime>,
    handle: Handle,
    write: Mutex<Option<Session>>,
    readers: Pool,
    /// Sessions for writes that need no order among themselves ([`Backend::side_transaction`]).
    side: Pool,
}

/// A bounded pool of sessions.
#[derive(Default)]
struct Pool {
    sessions: Mutex<Sessions>,
    /// Signalled when a session is given back.
    returned: std::sync::Condvar,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Postgres({})", self.location)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A runtime may not be dropped where blocking is not allowed (inside another runtime).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The connection string without a password, for messages.
fn without_password(config: &Config) -> String {
    let host = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let port = config
        .get_ports()
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

/// Runs `fut` on the database's runtime and waits for it.
fn run<T: Send + 'static>(
    handle: &Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, DbError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| DbError::Postgres("the database connection stopped before it answered".into()))
}

/// Opens a connection.
fn open_session(handle: &Handle, connect: &Connect) -> Result<Session, DbError> {
    let config = connect.config.clone();
    let tls = connect.tls.clone();
    let spawner = handle.clone();
    let client = run(handle, async move {
        let (client, connection) = config.connect(tls).await?;
        spawner.spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "the connection to PostgreSQL ended");
            }
        });
        Ok::<_, tokio_postgres::Error>(client)
    })?;
    Ok(Session {
        client: Arc::new(client.map_err(DbError::postgres)?),
        statements: HashMap::new(),
    })
}

impl Postgres {
    /// Connects to `url` (`postgres://USER@HOST:PORT/DB`, TLS as libpq's `sslmode`,
    /// `sslrootcert`, `sslcert` and `sslkey` say; no password in it: `password`).
    pub fn connect(url: &str, password: Option<&str>) -> Result<Postgres, DbError> {
        let invalid = |reason: String| DbError::Open {
            location: "(the PostgreSQL connection string)".into(),
            reason,
        };
        let (url, tls) = crate::tls::split(url)
            .map_err(|e| invalid(format!("the connection string is invalid: {e}")))?;
        let mut config = Config::from_str(&url)
            .map_err(|e| invalid(format!("the connection string is invalid: {e}")))?;
        let location = without_password(&config);
        if config.get_password().is_some() {
            return Err(DbError::Open {
                location,
                reason: "the connection string holds a password; give it in a file instead (database_password_file)".into(),
            });
        }
        let (mode, connector) = tls.connector().map_err(|reason| DbError::Open {
            location: location.clone(),
            reason,
        })?;
        if tls.unverified() && !local(&config) {
            tracing::warn!(
                database = %location,
                sslmode = tls.mode.as_str(),
                "the connection to PostgreSQL is not checked: whoever sits between this host and the database can read and change what passes; add sslmode=verify-full&sslrootcert=CA.pem to the connection string"
            );
        }
        if let Some(p) = password {
            config.password(p.trim_end_matches(['\n', '\r']));
        }
        config
            .ssl_mode(mode)
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .application_name("tresor");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tresor-postgres")
            .enable_all()
            .build()
            .map_err(|e| DbError::Open {
                location: location.clone(),
                reason: format!("cannot start its runtime: {e}"),
            })?;
        let handle = runtime.handle().clone();
        let connect = Connect {
            config,
            tls: connector,
        };
        // Fail now, not on the first statement, when the database cannot be reached.
        let session = open_session(&handle, &connect).map_err(|e| DbError::Open {
            location: location.clone(),
            reason: explain(e, &tls),
        })?;
        Ok(Postgres {
            location,
            connect,
            runtime: Some(runtime),
            handle,
            write: Mutex::new(Some(session)),
            readers: Pool::default(),
            side: Pool::default(),
        })
    }
}

/// Whether every host of the connection is this machine (a Unix socket or a loopback address),
/// where nobody sits between.
fn local(config: &Config) -> bool {
    config.get_hosts().iter().all(|h| match h {
        tokio_postgres::config::Host::Unix(_) => true,
        tokio_postgres::config::Host::Tcp(h) => {
            h == "localhost"
                || h.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback())
        }
    })
}

/// A failed first connection, with what to do where TLS is the cause.
fn explain(e: DbError, tls: &crate::tls::TlsSettings) -> String {
    let text = e.to_string();
    let hint = if text.contains("server does not support TLS") {
        " (the database server has TLS off: turn on ssl in postgresql.conf, or write sslmode=disable if the connection never leaves this machine)"
    } else if text.contains("not valid for name") {
        " (the database server's certificate does not name the host in the connection string: connect by a name it holds, or write sslmode=verify-ca to check the chain only)"
    } else if text.contains("invalid peer certificate") {
        " (check that sslrootcert is the CA that issued the database server's certificate)"
    } else if text.contains("pg_hba.conf") && text.contains("no encryption") {
        " (the database server takes only TLS connections from this host: remove sslmode=disable)"
    } else if text.contains("requires a valid client certificate") && tls.cert.is_none() {
        " (give this host's client certificate and its key: sslcert=FILE&sslkey=FILE in the connection string)"
    } else {
        ""
    };
    format!("{text}{hint}")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A session lent to a store's statements.
struct PgConn<'a> {
    handle: &'a Handle,
    session: RefCell<&'a mut Session>,
}

impl PgConn<'_> {
    fn statement(&self, sql: &str) -> Result<(Arc<Client>, Statement), DbError> {
        let mut session = self.session.borrow_mut();
        let client = session.client.clone();
        if let Some(s) = session.statements.get(sql) {
            return Ok((client, s.clone()));
        }
        let text = numbered(sql);
        let c = client.clone();
        let stmt =
            run(self.handle, async move { c.prepare(&text).await })?.map_err(DbError::postgres)?;
        session.statements.insert(sql.to_owned(), stmt.clone());
        Ok((client, stmt))
    }
}

fn refs(args: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

impl Conn for PgConn<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&self, sql: &str, args: &[Value]) -> Result<u64, DbError> {
        let (client, stmt) = self.statement(sql)?;
        let args = args.to_vec();
        run(self.handle, async move {
            client.execute(&stmt, &refs(&args)).await
        })?
        .map_err(DbError::postgres)
    }

    fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError> {
        let (client, stmt) = self.statement(sql)?;
        let args = args.to_vec();
        let rows = run(self.handle, async move {
            client.query(&stmt, &refs(&args)).await
        })?
        .map_err(DbError::postgres)?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| value(r, i))
                    .collect::<Result<_, _>>()
                    .map(Row)
            })
            .collect()
    }

    fn execute_many(&self, sql: &str, rows: &[Vec<Value>]) -> Result<Vec<u64>, DbError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let (client, stmt) = self.statement(sql)?;
        let mut changed = Vec::with_capacity(rows.len());
        // A window of statements at a time: pipelined within it, and what waits to be sent
        // stays small however many rows there are (tens of thousands in a storm).
        for window in rows.chunks(PIPELINE_WINDOW) {
            let window = window.to_vec();
            let (client, stmt) = (client.clone(), stmt.clone());
            changed.extend(
                run(self.handle, async move {
                    // Issued together, the requests go out pipelined on the one connection.
                    futures_util::future::try_join_all(window.iter().map(|args| {
                        let (client, stmt) = (&client, &stmt);
                        async move { client.execute(stmt, &refs(args)).await }
                    }))
                    .await
                })?
                .map_err(DbError::postgres)?,
            );
        }
        Ok(changed)
    }

    fn batch(&self, sql: &str) -> Result<(), DbError> {
        let client = self.session.borrow().client.clone();
        let sql = sql.to_owned();
        run(self.handle, async move { client.batch_execute(&sql).await })?
            .map_err(DbError::postgres)
    }
}

/// A connection a worker keeps ([`Backend::connect`]); opened again when found closed.
struct OwnedSession {
    handle: Handle,
    connect: Connect,
    session: RefCell<Session>,
}

impl OwnedSession {
    fn with<T>(&self, f: impl FnOnce(&PgConn<'_>) -> Result<T, DbError>) -> Result<T, DbError> {
        let mut session = self.session.borrow_mut();
        if session.client.is_closed() {
            *session = open_session(&self.handle, &self.connect)?;
        }
        f(&PgConn {
            handle: &self.handle,
            session: RefCell::new(&mut session),
        })
    }
}

impl Conn for OwnedSession {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&self, sql: &str, args: &[Value]) -> Result<u64, DbError> {
        self.with(|c| c.execute(sql, args))
    }

    fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError> {
        self.with(|c| c.query(sql, args))
    }

    fn batch(&self, sql: &str) -> Result<(), DbError> {
        self.with(|c| c.batch(sql))
    }

    fn execute_many(&self, sql: &str, rows: &[Vec<Value>]) -> Result<Vec<u64>, DbError> {
        self.with(|c| c.execute_many(sql, rows))
    }
}

impl Postgres {
    /// Runs `f` on a session of `pool`: an idle one, or a new one while there are fewer than
    /// [`POOL_SIZE`], or the next one given back.
    fn pooled(&self, pool: &Pool, f: &mut dyn FnMut(&dyn Conn)) -> Result<(), DbError> {
        let idle = {
            let mut r = lock(&pool.sessions);
            loop {
                if let Some(s) = r.idle.pop() {
                    break Some(s);
                }
                if r.open < POOL_SIZE {
                    r.open += 1;
                    break None;
                }
                r = pool.returned.wait(r).unwrap_or_else(|p| p.into_inner());
            }
        };
        let opened = match idle.filter(|s| !s.client.is_closed()) {
            Some(s) => Ok(s),
            None => open_session(&self.handle, &self.connect),
        };
        let mut session = match opened {
            Ok(s) => s,
            Err(e) => {
                lock(&pool.sessions).open -= 1;
                pool.returned.notify_one();
                return Err(e);
            }
        };
        f(&PgConn {
            handle: &self.handle,
            session: RefCell::new(&mut session),
        });
        let mut r = lock(&pool.sessions);
        if session.client.is_closed() {
            r.open -= 1;
        } else {
            r.idle.push(session);
        }
        drop(r);
        pool.returned.notify_one();
        Ok(())
    }
}

impl Backend for Postgres {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn location(&self) -> &str {
        &self.location
    }

    fn transaction(&self, f: &mut dyn FnMut(&dyn Conn) -> bool) -> Result<(), DbError> {
        let mut guard = lock(&self.write);
        if guard.as_ref().is_none_or(|s| s.client.is_closed()) {
            *guard = Some(open_session(&self.handle, &self.connect)?);
        }
        let session = guard.as_mut().expect("opened above");
        let conn = PgConn {
            handle: &self.handle,
            session: RefCell::new(session),
        };
        conn.batch("BEGIN")?;
        if f(&conn) {
            conn.batch("COMMIT")
        } else {
            // A transaction that failed in the database is rolled back as well.
            conn.batch("ROLLBACK")
        }
    }

    fn read(&self, f: &mut dyn FnMut(&dyn Conn)) -> Result<(), DbError> {
        self.pooled(&self.readers, &mut |conn| f(conn))
    }

    fn side_transaction(&self, f: &mut dyn FnMut(&dyn Conn) -> bool) -> Result<(), DbError> {
        let mut result = Ok(());
        self.pooled(&self.side, &mut |conn| {
            result = conn.batch("BEGIN").and_then(|_| {
                if f(conn) {
                    conn.batch("COMMIT")
                } else {
                    conn.batch("ROLLBACK")
                }
            });
        })?;
        result
    }

    fn connect(&self) -> Result<Box<dyn Conn + Send>, DbError> {
        Ok(Box::new(OwnedSession {
            handle: self.handle.clone(),
            connect: self.connect.clone(),
            session: RefCell::new(open_session(&self.handle, &self.connect)?),
        }))
    }

    fn schema_version(&self, conn: &dyn Conn) -> Result<i64, DbError> {
        // Looked for first: CREATE TABLE IF NOT EXISTS would log a notice at every start.
        let exists = conn
            .value::<i64>(
                "SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'tresor_schema'",
                &[],
            )?
            .unwrap_or(0)
            > 0;
        if !exists {
            conn.batch("CREATE TABLE tresor_schema (version BIGINT NOT NULL)")?;
        }
        Ok(conn
            .value::<i64>("SELECT version FROM tresor_schema", &[])?
            .unwrap_or(0))
    }

    fn set_schema_version(&self, conn: &dyn Conn, version: i64) -> Result<(), DbError> {
        conn.execute("DELETE FROM tresor_schema", &[])?;
        conn.execute(
            "INSERT INTO tresor_schema (version) VALUES (?1)",
            &[Value::Int(version)],
        )?;
        Ok(())
    }

    fn lock_schema(&self, conn: &dyn Conn) -> Result<(), DbError> {
        // Held until the transaction ends: servers started together migrate one after another.
        conn.batch("SELECT pg_advisory_xact_lock(7206001)")
    }
}

#[cfg(test)]
mod tests {
    use super::{local, numbered};

    #[test]
    fn only_loopback_addresses_and_sockets_are_local() {
        let local = |url: &str| local(&url.parse().unwrap());
        assert!(local("postgres://t@127.0.0.1/x"));
        assert!(local("postgres://t@localhost/x"));
        assert!(local("postgres://t@[::1]:5432/x"));
        assert!(local("host=/run/postgresql user=t"));
        assert!(!local("postgres://t@db.example/x"));
        assert!(!local("postgres://t@10.0.0.1,127.0.0.1/x"));
    }

    #[test]
    fn numbered_parameters_become_dollars_outside_quotes() {
        assert_eq!(
            numbered("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND \"d?3\" = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND \"d?3\" = $12"
        );
    }
}
