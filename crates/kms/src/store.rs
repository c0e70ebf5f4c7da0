//! Persistence: the only module that speaks SQL.
//!
//! Objects live in SQLite (WAL mode, `synchronous=FULL`; a thread of its own copies the log into
//! the database, so that commits do not wait for that) or, for several key servers that serve
//! the same keys, in PostgreSQL (through [`tresor_db`], the same statements). All changes go through one writer thread
//! that runs the changes of many connections in one transaction and commits them together (group
//! commit): a change is durable on disk before its caller hears back, and one fsync serves many
//! callers. Each change runs in its own savepoint, so a change that fails leaves the others intact.
//! Reads use a small pool of read-only connections and never wait for the writer.
//!
//! A whole request that changes objects may also run on the writer thread ([`Store::submit`]):
//! its reads and changes then use the writer's connection inside the group's transaction (so a
//! batch reads what it wrote), and its answer is released only after the group is committed.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OpenFlags};
use tresor_db::{args, Conn, Database, DbError, Dialect, Location, Migration, Row};
use tresor_kmip::message::{Attribute, TemplateAttribute};
use tresor_kmip::spec::tag;
use tresor_kmip::ttlv::{self, Limits};

/// How many changes the writer commits together at most.
const MAX_GROUP: usize = 512;

/// How often committed changes are copied from the write-ahead log into the database, by a
/// thread of its own so that commits do not wait for it.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// The write-ahead log's size (in 4 KiB pages) at which a commit copies it into the database
/// itself: only reached if the background checkpoints cannot keep up.
const CHECKPOINT_IN_COMMIT_PAGES: i64 = 16_384;

thread_local! {
    /// The writer's connection, set on the writer thread only: reads and changes made there
    /// (by requests given to [`Store::submit`]) join the transaction of the group it is running.
    static WRITER: RefCell<Option<Box<dyn Conn + Send>>> = const { RefCell::new(None) };
}

fn on_writer_thread() -> bool {
    WRITER.with_borrow(|w| w.is_some())
}

/// Runs `f` on the writer's connection (only on the writer thread).
fn with_writer<T, E: From<StoreError>>(f: impl FnOnce(&dyn Conn) -> Result<T, E>) -> Result<T, E> {
    WRITER.with_borrow(|w| match w {
        Some(conn) => f(conn.as_ref()),
        None => Err(StoreError::WriterGone.into()),
    })
}

/// Runs `f` on `conn` in a savepoint of its own, inside the group's transaction: unless `keep`
/// says otherwise of its result, what it changed is undone and the rest of the group stays.
fn savepoint<R>(
    conn: &dyn Conn,
    f: impl FnOnce(&dyn Conn) -> R,
    keep: impl FnOnce(&R) -> bool,
) -> Result<R, DbError> {
    // Statements prepared once: a group may hold thousands of small changes.
    let run = |sql: &str| conn.execute(sql, &[]);
    run("SAVEPOINT change")?;
    let result = f(conn);
    if !keep(&result) {
        let _ = run("ROLLBACK TO change");
    }
    let _ = run("RELEASE change");
    Ok(result)
}

/// A change made on the writer thread by a request given to [`Store::submit`].
fn in_savepoint<T, E: From<StoreError>>(f: impl FnOnce(&dyn Conn) -> Result<T, E>) -> Result<T, E> {
    with_writer(|conn| {
        savepoint(conn, f, Result::is_ok).map_err(|e| E::from(StoreError::from(e)))?
    })
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Cannot open the key server database: {0}")]
    Open(DbError),
    #[error("Database error: {0}")]
    Db(#[from] DbError),
    #[error("Stored attributes of object {0} are corrupt")]
    Corrupt(String),
    #[error("The database writer has stopped; restart the key server")]
    WriterGone,
    #[error("Cannot commit to the database (is the disk full or read-only?): {0}")]
    Commit(String),
    #[error("The request failed inside the key server and changed nothing; see the key server's log and report it")]
    HandlerFailed,
    /// The database was made or migrated by a newer release.
    #[error("The key server database {path} has schema {found}, written by tresor {release}; this tresor {ours} knows schemas up to {known}. Run tresor {release} or newer, or restore a backup made by this release")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
        release: String,
        ours: &'static str,
    },
    /// A backup copies an SQLite file; a database on PostgreSQL is backed up with its tools.
    #[error("The key server database is on PostgreSQL ({0}); back it up with pg_dump (tresor kms backup copies a database in an SQLite file), and keep master.key apart from it")]
    NotAFile(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Db(DbError::Sqlite(e))
    }
}

/// A stored object: everything but the key material is in the clear; the key material is sealed
/// under the master key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRow {
    pub uid: String,
    pub object_type: u32,
    pub state: u32,
    pub owner: String,
    pub attributes: Vec<Attribute>,
    /// The object structure sealed under the master key; `None` once destroyed.
    pub sealed: Option<Vec<u8>>,
    pub created: i64,
    pub updated: i64,
}

/// One line of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub time: i64,
    pub actor: String,
    pub action: String,
    pub uid: Option<String>,
    pub detail: String,
}

/// What Get needs to know about an object: who may use it, its state and its sealed material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectAccess {
    pub uid: String,
    pub object_type: u32,
    pub state: u32,
    pub owner: String,
    pub sealed: Option<Vec<u8>>,
    pub fresh: bool,
}

/// A filter for listing objects. Fields left `None` match everything.
#[derive(Clone, Debug, Default)]
pub struct ObjectFilter<'a> {
    pub owner: Option<&'a str>,
    pub object_type: Option<u32>,
    pub states: Option<&'a [u32]>,
    pub name: Option<&'a str>,
    pub uid: Option<&'a str>,
}

struct Completion {
    keep: bool,
    finish: Box<dyn FnOnce(Option<StoreError>) + Send>,
}

/// What a job does on the writer's connection.
type JobRun = Box<dyn FnOnce(&dyn Conn) -> Completion + Send>;

struct Job {
    run: JobRun,
    fail: Box<dyn FnOnce(StoreError) + Send>,
}

/// The key server's database.
pub struct Store {
    db: Database,
    writer: Mutex<Option<SyncSender<Job>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpointer: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("database", &self.db.location())
            .finish_non_exhaustive()
    }
}

const MIGRATIONS: &[Migration] = &[
    // 1: objects, their names, grants, audit log. Objects made in the same second are listed
    // as they were made (SQLite's rowid, PostgreSQL's seq).
    Migration {
        sqlite: "CREATE TABLE objects (
            uid TEXT PRIMARY KEY,
            object_type INTEGER NOT NULL,
            state INTEGER NOT NULL,
            owner TEXT NOT NULL,
            attributes BLOB NOT NULL,
            sealed BLOB,
            created INTEGER NOT NULL,
            updated INTEGER NOT NULL
        );
        CREATE INDEX objects_owner ON objects(owner);
        CREATE TABLE names (
            uid TEXT NOT NULL REFERENCES objects(uid) ON DELETE CASCADE,
            name TEXT NOT NULL
        );
        CREATE INDEX names_name ON names(name);
        CREATE INDEX names_uid ON names(uid);
        CREATE TABLE grants (
            uid TEXT NOT NULL REFERENCES objects(uid) ON DELETE CASCADE,
            identity TEXT NOT NULL,
            PRIMARY KEY (uid, identity)
        );
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            time INTEGER NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            uid TEXT,
            detail TEXT NOT NULL
        );",
        postgres: "CREATE TABLE objects (
            uid TEXT PRIMARY KEY,
            seq BIGINT GENERATED BY DEFAULT AS IDENTITY,
            object_type BIGINT NOT NULL,
            state BIGINT NOT NULL,
            owner TEXT NOT NULL,
            attributes BYTEA NOT NULL,
            sealed BYTEA,
            created BIGINT NOT NULL,
            updated BIGINT NOT NULL
        );
        CREATE INDEX objects_owner ON objects(owner);
        CREATE TABLE names (
            uid TEXT NOT NULL REFERENCES objects(uid) ON DELETE CASCADE,
            name TEXT NOT NULL
        );
        CREATE INDEX names_name ON names(name);
        CREATE INDEX names_uid ON names(uid);
        CREATE TABLE grants (
            uid TEXT NOT NULL REFERENCES objects(uid) ON DELETE CASCADE,
            identity TEXT NOT NULL,
            PRIMARY KEY (uid, identity)
        );
        CREATE TABLE audit (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            time BIGINT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            uid TEXT,
            detail TEXT NOT NULL
        );",
    },
    // 2: whether an object is fresh (never handed out), kept beside its attributes so that Get
    // does not decode them.
    Migration {
        sqlite: "ALTER TABLE objects ADD COLUMN fresh INTEGER NOT NULL DEFAULT 0;",
        postgres: "ALTER TABLE objects ADD COLUMN fresh BIGINT NOT NULL DEFAULT 0;",
    },
    // 3: facts about the database itself: the release that last changed its schema (so that
    // an older release can say which one it needs).
    Migration {
        sqlite: "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
        postgres: "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    },
];

/// Migration 3 made the `meta` table, which says which release wrote the schema.
const META_FROM: usize = 2;

/// The number of the newest schema this release knows.
pub const SCHEMA: usize = MIGRATIONS.len();

fn configure(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

impl Store {
    /// Opens (and creates or migrates) the database in the SQLite file at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_at(&Location::Sqlite(path.to_owned()))
    }

    /// Opens (and creates or migrates) the database at `location`: an SQLite file, or
    /// PostgreSQL for several key servers.
    pub fn open_at(location: &Location) -> Result<Store, StoreError> {
        let db = Database::open(location).map_err(StoreError::Open)?;
        db.migrate(MIGRATIONS, META_FROM, |_, _| Ok::<(), StoreError>(()))
            .map_err(|e| match e {
                StoreError::Db(DbError::TooNew {
                    found,
                    known,
                    release,
                }) => StoreError::TooNew {
                    path: PathBuf::from(db.location()),
                    found,
                    known,
                    release,
                    ours: env!("CARGO_PKG_VERSION"),
                },
                other => other,
            })?;
        let writer = db.connect().map_err(StoreError::Open)?;
        if db.dialect() == Dialect::Sqlite {
            writer.batch(&format!(
                // A log that grew under load is cut back to 64 MiB when it starts over.
                "PRAGMA wal_autocheckpoint = {CHECKPOINT_IN_COMMIT_PAGES}; PRAGMA journal_size_limit = 67108864;"
            ))?;
        }
        let (sender, receiver) = mpsc::sync_channel::<Job>(4096);
        let spawn = |name: &str, run: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(run)
                .map_err(|e| {
                    StoreError::Open(DbError::Open {
                        location: db.location().to_owned(),
                        reason: format!("cannot start its thread: {e}"),
                    })
                })
        };
        let handle = spawn(
            "kms-db-writer",
            Box::new(move || writer_loop(writer, receiver)),
        )?;
        let checkpointer = match db.dialect() {
            Dialect::Sqlite => {
                let checkpoints = db.connect().map_err(StoreError::Open)?;
                let (stop, stopped) = mpsc::channel::<()>();
                let thread = spawn(
                    "kms-db-checkpoint",
                    Box::new(move || checkpoint_loop(checkpoints, stopped)),
                )?;
                Some((stop, thread))
            }
            // PostgreSQL checkpoints by itself.
            Dialect::Postgres => None,
        };
        Ok(Store {
            db,
            writer: Mutex::new(Some(sender)),
            writer_thread: Mutex::new(Some(handle)),
            checkpointer: Mutex::new(checkpointer),
        })
    }

    /// Which backend the database is on.
    pub fn dialect(&self) -> Dialect {
        self.db.dialect()
    }

    /// A consistent copy of the database at `db` (which a running key server may be using) in
    /// the new file `out`, for a backup; its schema number.
    pub fn snapshot(db: &Path, out: &Path) -> Result<u32, StoreError> {
        let open_err = |source: rusqlite::Error| {
            StoreError::Open(DbError::Open {
                location: db.display().to_string(),
                reason: source.to_string(),
            })
        };
        let conn =
            Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(open_err)?;
        configure(&conn).map_err(open_err)?;
        let out_text = out
            .to_str()
            .ok_or_else(|| StoreError::Corrupt(format!("{} is not a UTF-8 path", out.display())))?;
        conn.execute("VACUUM INTO ?1", params![out_text])?;
        drop(conn);
        let copy = Connection::open(out)?;
        Ok(copy.pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Runs `f` on a connection for reads.
    pub fn read<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&dyn Conn) -> Result<T, E>,
    ) -> Result<T, E> {
        if on_writer_thread() {
            // A request running on the writer reads what it has written so far.
            return with_writer(f);
        }
        let mut out = None;
        self.db
            .read(|conn| {
                out = Some(f(conn));
                Ok::<(), StoreError>(())
            })
            .map_err(E::from)?;
        out.expect("the read ran")
    }

    /// Runs `f` in the writer's transaction and returns once its changes are committed. If `f`
    /// fails, its changes are rolled back and the error returned.
    pub fn write<T, E>(
        &self,
        f: impl FnOnce(&dyn Conn) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        if on_writer_thread() {
            return in_savepoint(f);
        }
        let (tx, rx) = mpsc::sync_channel::<Result<T, E>>(1);
        let fail_tx = tx.clone();
        let job = Job {
            run: Box::new(move |conn| {
                let result = f(conn);
                Completion {
                    keep: result.is_ok(),
                    finish: Box::new(move |commit_error| {
                        let result = match commit_error {
                            None => result,
                            Some(e) => Err(E::from(e)),
                        };
                        let _ = tx.send(result);
                    }),
                }
            }),
            fail: Box::new(move |e| {
                let _ = fail_tx.send(Err(E::from(e)));
            }),
        };
        let sender = self
            .writer
            .lock()
            .ok()
            .and_then(|w| w.clone())
            .ok_or(StoreError::WriterGone)?;
        sender.send(job).map_err(|_| StoreError::WriterGone)?;
        rx.recv().map_err(|_| StoreError::WriterGone)?
    }

    /// Queues `f` for the writer without waiting for it; failures are logged. For changes nobody
    /// waits on, such as clearing the Fresh attribute after a Get.
    pub fn write_detached<E: std::fmt::Display + 'static>(
        &self,
        f: impl FnOnce(&dyn Conn) -> Result<(), E> + Send + 'static,
    ) {
        self.write_detached_then(f, || {});
    }

    /// [`Store::write_detached`], and `after` once the change is committed (or failed). A change
    /// made on the writer's own thread is committed with the group it runs in, after `after` could
    /// tell; `after` is not called for it.
    pub fn write_detached_then<E: std::fmt::Display + 'static>(
        &self,
        f: impl FnOnce(&dyn Conn) -> Result<(), E> + Send + 'static,
        after: impl FnOnce() + Send + 'static,
    ) {
        if on_writer_thread() {
            if let Err(e) =
                in_savepoint(|conn| f(conn).map_err(|e| StoreError::Commit(e.to_string())))
            {
                tracing::warn!(error = %e, "background database change failed");
            }
            return;
        }
        let job = Job {
            run: Box::new(move |conn| {
                let result = f(conn);
                let keep = result.is_ok();
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "background database change failed");
                }
                Completion {
                    keep,
                    finish: Box::new(move |_| after()),
                }
            }),
            fail: Box::new(|e| tracing::warn!(error = %e, "background database change failed")),
        };
        if let Some(sender) = self.writer.lock().ok().and_then(|w| w.clone()) {
            let _ = sender.send(job);
        }
    }

    /// Runs `request` on the writer thread as part of the next group: the reads and changes it
    /// makes through this store use the group's transaction, and its result is handed over only
    /// once that transaction is committed (durable on disk). If the group cannot be committed,
    /// the result is `failed(error)` instead.
    pub fn submit<T: Send + 'static>(
        &self,
        request: impl FnOnce() -> T + Send + 'static,
        failed: impl FnOnce(StoreError) -> T + Send + 'static,
    ) -> tokio::sync::oneshot::Receiver<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Exactly one of the job's two ends runs; both need the sender and the fallback.
        let reply = Arc::new(Mutex::new(Some((tx, failed))));
        let on_fail = reply.clone();
        let job = Job {
            run: Box::new(move |_| {
                // A handler that panics must not take the writer, and everyone's changes, with it.
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(request));
                Completion {
                    keep: out.is_ok(),
                    finish: Box::new(move |commit_error| {
                        if let Some((tx, failed)) = reply.lock().ok().and_then(|mut r| r.take()) {
                            let _ = tx.send(match (out, commit_error) {
                                (Ok(out), None) => out,
                                (Ok(_), Some(e)) => failed(e),
                                (Err(_), _) => failed(StoreError::HandlerFailed),
                            });
                        }
                    }),
                }
            }),
            fail: Box::new(move |e| {
                if let Some((tx, failed)) = on_fail.lock().ok().and_then(|mut r| r.take()) {
                    let _ = tx.send(failed(e));
                }
            }),
        };
        // A writer that is gone drops the job and with it the sender: the caller hears so.
        if let Some(sender) = self.writer.lock().ok().and_then(|w| w.clone()) {
            let _ = sender.send(job);
        }
        rx
    }

    /// Stops the writer after the changes already queued.
    pub fn close(&self) {
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
        if let Some(handle) = self.writer_thread.lock().ok().and_then(|mut h| h.take()) {
            let _ = handle.join();
        }
        if let Some((stop, handle)) = self.checkpointer.lock().ok().and_then(|mut c| c.take()) {
            drop(stop);
            let _ = handle.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer_loop(conn: Box<dyn Conn + Send>, jobs: Receiver<Job>) {
    WRITER.with_borrow_mut(|w| *w = Some(conn));
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        WRITER.with_borrow(|w| {
            if let Some(conn) = w {
                run_group(conn.as_ref(), batch);
            }
        });
    }
    WRITER.with_borrow_mut(|w| w.take());
}

/// Copies committed changes into the database every [`CHECKPOINT_EVERY`] until told to stop
/// (or the store is dropped). A passive checkpoint never makes the writer or readers wait.
fn checkpoint_loop(conn: Box<dyn Conn + Send>, stop: Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query("PRAGMA wal_checkpoint(PASSIVE)", &[]) {
            tracing::warn!(error = %e, "cannot copy the write-ahead log into the database; will retry");
        }
    }
}

fn run_group(conn: &dyn Conn, batch: Vec<Job>) {
    let mut done = Vec::with_capacity(batch.len());
    let run = |sql: &str| conn.execute(sql, &[]);
    let begin = match conn.dialect() {
        Dialect::Sqlite => "BEGIN IMMEDIATE",
        Dialect::Postgres => "BEGIN",
    };
    if let Err(e) = run(begin) {
        tracing::error!(error = %e, "cannot start a database transaction");
        for job in batch {
            (job.fail)(StoreError::Commit(e.to_string()));
        }
        return;
    }
    for job in batch {
        match savepoint(conn, job.run, |c| c.keep) {
            Ok(completion) => done.push(completion),
            Err(e) => (job.fail)(StoreError::from(e)),
        }
    }
    let error = run("COMMIT").err().map(|e| e.to_string());
    if let Some(e) = &error {
        tracing::error!(error = %e, "database commit failed");
        let _ = conn.batch("ROLLBACK");
    }
    for c in done {
        // A change that failed reports its own error, not the commit's.
        let err = error
            .as_ref()
            .filter(|_| c.keep)
            .map(|e| StoreError::Commit(e.clone()));
        (c.finish)(err);
    }
}

fn encode_attributes(attributes: &[Attribute]) -> Vec<u8> {
    let item = TemplateAttribute {
        names: Vec::new(),
        attributes: attributes.to_vec(),
    }
    .to_item(tag::TEMPLATE_ATTRIBUTE);
    // Attributes are small; an encoding error would need a 4 GiB attribute.
    ttlv::to_bytes(&item).unwrap_or_default()
}

fn decode_attributes(uid: &str, bytes: &[u8]) -> Result<Vec<Attribute>, StoreError> {
    let limits = Limits {
        max_message_len: usize::MAX,
        max_depth: 32,
    };
    let item =
        ttlv::decode_item(bytes, &limits).map_err(|_| StoreError::Corrupt(uid.to_owned()))?;
    TemplateAttribute::from_item(&item, tag::TEMPLATE_ATTRIBUTE)
        .map(|t| t.attributes)
        .map_err(|_| StoreError::Corrupt(uid.to_owned()))
}

fn is_fresh(attributes: &[Attribute]) -> bool {
    attributes
        .iter()
        .any(|a| a.name == "Fresh" && a.value == tresor_kmip::Value::Boolean(true))
}

fn names_of(attributes: &[Attribute]) -> Vec<String> {
    attributes
        .iter()
        .filter(|a| a.name == "Name")
        .filter_map(|a| match &a.value {
            tresor_kmip::Value::Structure(items) => items
                .iter()
                .find(|i| i.tag == tag::NAME_VALUE)
                .and_then(|i| match &i.value {
                    tresor_kmip::Value::TextString(t) => Some(t.to_string()),
                    _ => None,
                }),
            _ => None,
        })
        .collect()
}

const COLUMNS: &str = "uid, object_type, state, owner, attributes, sealed, created, updated";

fn row_to_object(row: &Row) -> Result<(ObjectRow, Vec<u8>), DbError> {
    Ok((
        ObjectRow {
            uid: row.get(0)?,
            object_type: row.get(1)?,
            state: row.get(2)?,
            owner: row.get(3)?,
            attributes: Vec::new(),
            sealed: row.get(5)?,
            created: row.get(6)?,
            updated: row.get(7)?,
        },
        row.get(4)?,
    ))
}

fn finish_row((mut row, attrs): (ObjectRow, Vec<u8>)) -> Result<ObjectRow, StoreError> {
    row.attributes = decode_attributes(&row.uid, &attrs)?;
    Ok(row)
}

/// Inserts a new object.
pub fn insert_object(conn: &dyn Conn, obj: &ObjectRow) -> Result<(), StoreError> {
    conn.execute(
        &format!(
            "INSERT INTO objects ({COLUMNS}, fresh) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ),
        args![
            &obj.uid,
            obj.object_type,
            obj.state,
            &obj.owner,
            encode_attributes(&obj.attributes),
            obj.sealed.clone(),
            obj.created,
            obj.updated,
            is_fresh(&obj.attributes)
        ],
    )?;
    write_names(conn, obj)?;
    Ok(())
}

/// Saves an object's state, attributes and sealed material.
pub fn update_object(conn: &dyn Conn, obj: &ObjectRow) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE objects SET state = ?2, attributes = ?3, sealed = ?4, updated = ?5, fresh = ?6 WHERE uid = ?1",
        args![
            &obj.uid,
            obj.state,
            encode_attributes(&obj.attributes),
            obj.sealed.clone(),
            obj.updated,
            is_fresh(&obj.attributes)
        ],
    )?;
    conn.execute("DELETE FROM names WHERE uid = ?1", args![&obj.uid])?;
    write_names(conn, obj)?;
    Ok(())
}

fn write_names(conn: &dyn Conn, obj: &ObjectRow) -> Result<(), StoreError> {
    for name in names_of(&obj.attributes) {
        conn.execute(
            "INSERT INTO names (uid, name) VALUES (?1, ?2)",
            args![&obj.uid, name],
        )?;
    }
    Ok(())
}

/// The object with this unique identifier.
pub fn get_object(conn: &dyn Conn, uid: &str) -> Result<Option<ObjectRow>, StoreError> {
    conn.query_opt(
        &format!("SELECT {COLUMNS} FROM objects WHERE uid = ?1"),
        args![uid],
    )?
    .map(|r| finish_row(row_to_object(&r)?))
    .transpose()
}

/// What Get needs of an object, without decoding its attributes.
pub fn get_access(conn: &dyn Conn, uid: &str) -> Result<Option<ObjectAccess>, StoreError> {
    Ok(conn
        .query_opt(
            "SELECT uid, object_type, state, owner, sealed, fresh FROM objects WHERE uid = ?1",
            args![uid],
        )?
        .map(|r| {
            Ok::<_, DbError>(ObjectAccess {
                uid: r.get(0)?,
                object_type: r.get(1)?,
                state: r.get(2)?,
                owner: r.get(3)?,
                sealed: r.get(4)?,
                fresh: r.get(5)?,
            })
        })
        .transpose()?)
}

/// Objects that match `filter`, newest first.
pub fn list_objects(
    conn: &dyn Conn,
    filter: &ObjectFilter<'_>,
) -> Result<Vec<ObjectRow>, StoreError> {
    let mut sql = format!("SELECT {COLUMNS} FROM objects o WHERE 1 = 1");
    let mut args: Vec<tresor_db::Value> = Vec::new();
    if let Some(owner) = filter.owner {
        args.push(owner.into());
        sql.push_str(&format!(
            " AND (o.owner = ?{n} OR EXISTS (SELECT 1 FROM grants g WHERE g.uid = o.uid AND g.identity = ?{n}))",
            n = args.len()
        ));
    }
    if let Some(t) = filter.object_type {
        args.push(t.into());
        sql.push_str(&format!(" AND o.object_type = ?{}", args.len()));
    }
    if let Some(states) = filter.states {
        let list: Vec<String> = states.iter().map(|s| s.to_string()).collect();
        sql.push_str(&format!(" AND o.state IN ({})", list.join(",")));
    }
    if let Some(name) = filter.name {
        args.push(name.into());
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM names n WHERE n.uid = o.uid AND n.name = ?{})",
            args.len()
        ));
    }
    if let Some(uid) = filter.uid {
        args.push(uid.into());
        sql.push_str(&format!(" AND o.uid = ?{}", args.len()));
    }
    sql.push_str(match conn.dialect() {
        Dialect::Sqlite => " ORDER BY o.created DESC, o.rowid DESC",
        Dialect::Postgres => " ORDER BY o.created DESC, o.seq DESC",
    });
    conn.query(&sql, &args)?
        .iter()
        .map(|r| finish_row(row_to_object(r)?))
        .collect()
}

/// Whether `identity` was granted access to object `uid`.
pub fn is_granted(conn: &dyn Conn, uid: &str, identity: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_opt(
            "SELECT 1 FROM grants WHERE uid = ?1 AND identity = ?2",
            args![uid, identity],
        )?
        .is_some())
}

/// Grants `identity` access to object `uid`.
pub fn grant(conn: &dyn Conn, uid: &str, identity: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO grants (uid, identity) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        args![uid, identity],
    )?;
    Ok(())
}

/// The identities granted access to object `uid`.
pub fn grants_of(conn: &dyn Conn, uid: &str) -> Result<Vec<String>, StoreError> {
    Ok(conn.map(
        "SELECT identity FROM grants WHERE uid = ?1 ORDER BY identity",
        args![uid],
        |r| r.get(0),
    )?)
}

/// Appends to the audit log.
pub fn audit(
    conn: &dyn Conn,
    time: i64,
    actor: &str,
    action: &str,
    uid: Option<&str>,
    detail: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO audit (time, actor, action, uid, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![time, actor, action, uid, detail],
    )?;
    Ok(())
}

/// The audit log of one object, or the whole log, oldest first.
pub fn audit_log(conn: &dyn Conn, uid: Option<&str>) -> Result<Vec<AuditRecord>, StoreError> {
    Ok(conn.map(
        "SELECT id, time, actor, action, uid, detail FROM audit WHERE CAST(?1 AS TEXT) IS NULL OR uid = ?1 ORDER BY id",
        args![uid],
        |r| {
            Ok(AuditRecord {
                id: r.get(0)?,
                time: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                uid: r.get(4)?,
                detail: r.get(5)?,
            })
        },
    )?)
}

/// How many objects there are.
pub fn count_objects(conn: &dyn Conn) -> Result<u64, StoreError> {
    Ok(conn
        .value::<i64>("SELECT COUNT(*) FROM objects", &[])?
        .unwrap_or(0)
        .max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(uid: &str) -> ObjectRow {
        ObjectRow {
            uid: uid.into(),
            object_type: 2,
            state: 1,
            owner: "alice".into(),
            attributes: Vec::new(),
            sealed: Some(vec![1, 2, 3]),
            created: 0,
            updated: 0,
        }
    }

    /// Each test on both backends: an SQLite file and a PostgreSQL database of its own.
    macro_rules! on_both_backends {
        ($($name:ident),* $(,)?) => {
            mod sqlite {
                $(#[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = super::Store::open(&dir.path().join("kms.db")).unwrap();
                    super::$name(std::sync::Arc::new(store)).await;
                })*
            }
            mod postgres {
                $(#[tokio::test]
                async fn $name() {
                    let db = tresor_db::testing::ScratchPostgres::new();
                    let store = super::Store::open_at(db.location()).unwrap();
                    super::$name(std::sync::Arc::new(store)).await;
                })*
            }
        };
    }

    on_both_backends!(
        a_submitted_request_reads_its_own_changes_and_is_answered_once_committed,
        a_panicking_request_changes_nothing_and_the_writer_goes_on,
    );

    fn count(store: &Store) -> u64 {
        store.read(count_objects).expect("count objects")
    }

    async fn a_submitted_request_reads_its_own_changes_and_is_answered_once_committed(
        store: Arc<Store>,
    ) {
        let inner = store.clone();
        let answer = store.submit(
            move || -> Result<(bool, u64), StoreError> {
                // Two changes, as a batch of Create and Activate makes them, and a read between.
                inner.write(|conn| insert_object(conn, &row("k1")))?;
                let seen = inner.read(|conn| get_object(conn, "k1"))?.is_some();
                // A change that fails is undone alone.
                let failed = inner.write(|conn| {
                    insert_object(conn, &row("k2"))?;
                    Err::<(), _>(StoreError::Corrupt("k2".into()))
                });
                assert!(failed.is_err());
                Ok((seen, inner.read(count_objects)?))
            },
            Err,
        );
        let (seen, counted) = answer.await.unwrap().unwrap();
        assert!(seen, "the request reads what it wrote before the commit");
        assert_eq!(counted, 1, "the failed change was rolled back alone");
        // Answered means committed: another connection sees it.
        assert_eq!(count(&store), 1);
    }

    async fn a_panicking_request_changes_nothing_and_the_writer_goes_on(store: Arc<Store>) {
        let inner = store.clone();
        let answer = store.submit(
            move || {
                inner
                    .write(|conn| insert_object(conn, &row("lost")))
                    .unwrap();
                panic!("a handler bug");
            },
            |e: StoreError| e.to_string(),
        );
        let message = answer.await.unwrap();
        assert!(message.contains("changed nothing"), "{message}");
        assert_eq!(count(&store), 0);
        // The writer still commits other changes.
        store
            .write(|conn| insert_object(conn, &row("kept")))
            .unwrap();
        assert_eq!(count(&store), 1);
    }
}
