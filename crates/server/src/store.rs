//! The server's persistence: the only module of the server that speaks SQL. Inventory (hosts,
//! VMs, providers), the operators' intent (settings, unlock requests), users, roles and tokens,
//! events and alarms. Never key material: keys are `(provider, id)` here.
//!
//! On either backend of [`tresor_db`]: SQLite (one file, the embedded default) or PostgreSQL
//! (for several servers), with the schema as numbered migrations in both dialects. The rest of
//! the server uses the [`Store`] methods only. The VMs are also kept in memory ([`VmView`]), the
//! server's view of them; that is not persistence and holds no SQL.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tresor_core::host::HostCryptoState;
use tresor_core::ids::KeyRef;
use tresor_core::protocol::PowerState;
use tresor_core::registry::Registration;
use tresor_core::vm::{ConnectionState, CryptoState, LockReason};
use tresor_db::{args, Conn, Database, DbError, Dialect, Location, Migration, Row};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Cannot open the server database: {0}")]
    Open(DbError),
    #[error("Database error: {0}")]
    Db(#[from] DbError),
    #[error("Stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database was made or migrated by a newer release.
    #[error("The server database {path} has schema {found}, written by tresor {release}; this tresor {ours} knows schemas up to {known}. Run tresor {release} or newer, or restore a backup made by this release")]
    TooNew {
        path: String,
        found: i64,
        known: usize,
        release: String,
        ours: &'static str,
    },
    /// A backup copies an SQLite file; a database on PostgreSQL is backed up with its tools.
    #[error("The server database is on PostgreSQL ({0}); back it up with pg_dump (tresor server backup copies a database in an SQLite file)")]
    NotAFile(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Db(DbError::Sqlite(e))
    }
}

/// The number of the newest schema this release knows.
pub const SCHEMA: usize = MIGRATIONS.len();

/// Migration 5 made the `meta` table, which says which release wrote the schema.
const META_FROM: usize = 4;

/// A key provider: a name (its identity) and the endpoints that serve its keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRecord {
    pub name: String,
    pub endpoints: Vec<String>,
    /// The CA or server certificate the server trusts the provider by (PEM).
    pub ca_pem: String,
    /// The server's client certificate for this provider (PEM); its key is a file beside the
    /// database, named by `client_key_file`.
    pub client_cert_pem: String,
    pub client_key_file: String,
    pub is_default: bool,
}

/// A host as the server knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostRecord {
    pub name: String,
    pub boot_id: String,
    /// The encryption mode, as the host last reported it or an operator last changed it.
    pub crypto_state: HostCryptoState,
    pub connected: bool,
    pub last_seen: i64,
    /// The host key, when the host is in encryption mode: provider and key id.
    #[serde(default)]
    pub host_key_provider: Option<String>,
    #[serde(default)]
    pub host_key_id: Option<String>,
}

/// A host's agent connecting (with its boot id and encryption mode) or leaving, at `at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSeen {
    pub name: String,
    pub hello: Option<(String, HostCryptoState)>,
    pub at: i64,
}

/// A VM as the server knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmRecord {
    pub id: String,
    pub name: String,
    pub host: String,
    pub path: String,
    pub encrypted: bool,
    /// The VM's KEK: provider and key id.
    pub key_provider: Option<String>,
    pub key_id: Option<String>,
    pub power_state: PowerState,
    pub crypto_state: CryptoState,
    pub connection_state: ConnectionState,
    pub lock_reason: Option<LockReason>,
    /// The last report of the VM's host (JSON), for disks and key details.
    pub report: String,
}

/// An event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRow {
    pub id: i64,
    pub time: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub severity: String,
    pub vm: Option<String>,
    pub host: Option<String>,
    pub provider: Option<String>,
    pub user: Option<String>,
    /// The message's arguments.
    pub args: Vec<(String, String)>,
}

/// Which events to list.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub vm: Option<String>,
    pub host: Option<String>,
    pub provider: Option<String>,
    pub event_type: Option<String>,
    pub since: Option<i64>,
    /// Only events with a larger id (for paging and streaming).
    pub after_id: Option<i64>,
    pub limit: Option<u32>,
}

/// An alarm: raised by a condition, cleared when it ends, acknowledged by a person.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlarmRow {
    pub id: i64,
    pub kind: String,
    /// What it is about: `vm:web01`, `provider:corp-kms`, `host:host-1`.
    pub object: String,
    pub reason: String,
    pub raised: i64,
    pub cleared: Option<i64>,
    pub acknowledged_by: Option<String>,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        sqlite: "CREATE TABLE providers (
            name TEXT PRIMARY KEY,
            endpoints TEXT NOT NULL,
            ca_pem TEXT NOT NULL,
            client_cert_pem TEXT NOT NULL,
            client_key_file TEXT NOT NULL,
            is_default INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE hosts (
            name TEXT PRIMARY KEY,
            boot_id TEXT NOT NULL DEFAULT '',
            crypto_state TEXT NOT NULL DEFAULT 'incapable',
            connected INTEGER NOT NULL DEFAULT 0,
            last_seen INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE join_tokens (
            token_hash TEXT PRIMARY KEY,
            expires INTEGER NOT NULL
        );
        CREATE TABLE vms (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            host TEXT NOT NULL,
            path TEXT NOT NULL,
            encrypted INTEGER NOT NULL,
            key_provider TEXT,
            key_id TEXT,
            power_state TEXT NOT NULL,
            crypto_state TEXT NOT NULL,
            connection_state TEXT NOT NULL,
            lock_reason TEXT,
            report TEXT NOT NULL
        );
        CREATE INDEX vms_host ON vms(host);
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            time INTEGER NOT NULL,
            type TEXT NOT NULL,
            severity TEXT NOT NULL,
            vm TEXT, host TEXT, provider TEXT, user TEXT,
            args TEXT NOT NULL
        );
        CREATE INDEX events_vm ON events(vm);
        CREATE INDEX events_type ON events(type);
        CREATE TABLE alarms (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            object TEXT NOT NULL,
            reason TEXT NOT NULL,
            raised INTEGER NOT NULL,
            cleared INTEGER,
            acknowledged_by TEXT
        );
        CREATE UNIQUE INDEX alarms_active ON alarms(kind, object) WHERE cleared IS NULL;
        CREATE TABLE users (
            name TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL
        );
        CREATE TABLE tokens (
            token_hash TEXT PRIMARY KEY,
            user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
            label TEXT NOT NULL,
            created INTEGER NOT NULL
        );
        CREATE TABLE roles (
            name TEXT PRIMARY KEY,
            privileges TEXT NOT NULL
        );
        CREATE TABLE grants (
            user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
            role TEXT NOT NULL REFERENCES roles(name) ON DELETE CASCADE,
            PRIMARY KEY (user, role)
        );
        CREATE TABLE settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );",
        postgres: r#"CREATE TABLE providers (
            name TEXT PRIMARY KEY,
            endpoints TEXT NOT NULL,
            ca_pem TEXT NOT NULL,
            client_cert_pem TEXT NOT NULL,
            client_key_file TEXT NOT NULL,
            is_default BIGINT NOT NULL DEFAULT 0
        );
        CREATE TABLE hosts (
            name TEXT PRIMARY KEY,
            boot_id TEXT NOT NULL DEFAULT '',
            crypto_state TEXT NOT NULL DEFAULT 'incapable',
            connected BIGINT NOT NULL DEFAULT 0,
            last_seen BIGINT NOT NULL DEFAULT 0
        );
        CREATE TABLE join_tokens (
            token_hash TEXT PRIMARY KEY,
            expires BIGINT NOT NULL
        );
        CREATE TABLE vms (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            host TEXT NOT NULL,
            path TEXT NOT NULL,
            encrypted BIGINT NOT NULL,
            key_provider TEXT,
            key_id TEXT,
            power_state TEXT NOT NULL,
            crypto_state TEXT NOT NULL,
            connection_state TEXT NOT NULL,
            lock_reason TEXT,
            report TEXT NOT NULL
        );
        CREATE INDEX vms_host ON vms(host);
        CREATE TABLE events (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            time BIGINT NOT NULL,
            type TEXT NOT NULL,
            severity TEXT NOT NULL,
            vm TEXT, host TEXT, provider TEXT, "user" TEXT,
            args TEXT NOT NULL
        );
        CREATE INDEX events_vm ON events(vm);
        CREATE INDEX events_type ON events(type);
        CREATE TABLE alarms (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            kind TEXT NOT NULL,
            object TEXT NOT NULL,
            reason TEXT NOT NULL,
            raised BIGINT NOT NULL,
            cleared BIGINT,
            acknowledged_by TEXT
        );
        CREATE UNIQUE INDEX alarms_active ON alarms(kind, object) WHERE cleared IS NULL;
        CREATE TABLE users (
            name TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL
        );
        CREATE TABLE tokens (
            token_hash TEXT PRIMARY KEY,
            "user" TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
            label TEXT NOT NULL,
            created BIGINT NOT NULL
        );
        CREATE TABLE roles (
            name TEXT PRIMARY KEY,
            privileges TEXT NOT NULL
        );
        CREATE TABLE grants (
            "user" TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
            role TEXT NOT NULL REFERENCES roles(name) ON DELETE CASCADE,
            PRIMARY KEY ("user", role)
        );
        CREATE TABLE settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );"#,
    },
    // 2: the host key of a host in encryption mode (its id; never its material).
    Migration {
        sqlite: "ALTER TABLE hosts ADD COLUMN host_key_provider TEXT;
        ALTER TABLE hosts ADD COLUMN host_key_id TEXT;",
        postgres: "ALTER TABLE hosts ADD COLUMN host_key_provider TEXT;
        ALTER TABLE hosts ADD COLUMN host_key_id TEXT;",
    },
    // 3: the registry, the operators' intent: which VM (id, name) is on which host with which
    // keys. The vms table beside it is what the hosts last reported of the registered VMs.
    Migration {
        sqlite: "CREATE TABLE registry (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            host TEXT NOT NULL,
            keys TEXT NOT NULL
        );",
        postgres: "CREATE TABLE registry (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            host TEXT NOT NULL,
            keys TEXT NOT NULL
        );",
    },
    // 4: a join token names the host it enrols (and whether it may replace an enrolled one);
    // each enrolled host's certificate, by its SHA-256: no other certificate of that name is
    // taken, and a removed host's is refused.
    Migration {
        sqlite: "ALTER TABLE join_tokens ADD COLUMN host TEXT;
        ALTER TABLE join_tokens ADD COLUMN replace INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE host_certs (
            host TEXT PRIMARY KEY,
            cert_sha256 TEXT NOT NULL
        );",
        postgres: "ALTER TABLE join_tokens ADD COLUMN host TEXT;
        ALTER TABLE join_tokens ADD COLUMN replace BIGINT NOT NULL DEFAULT 0;
        CREATE TABLE host_certs (
            host TEXT PRIMARY KEY,
            cert_sha256 TEXT NOT NULL
        );",
    },
    // 5: facts about the database itself: the release that last changed its schema (so that
    // an older release can say which one it needs).
    Migration {
        sqlite: "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
        postgres: "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    },
    // 6: long work as tasks: who started what on which VM or host, how it ended. A task's
    // new key (encrypt, rekey) is recorded so that one the server lost sight of (a restart) is
    // settled from the host's journal: kept when the host uses it, retired when not. Tasks made
    // in the same second are ordered as they were made (SQLite's rowid, PostgreSQL's seq).
    Migration {
        sqlite: "CREATE TABLE tasks (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            user TEXT NOT NULL,
            vm TEXT,
            host TEXT,
            key_provider TEXT,
            key_id TEXT,
            done INTEGER NOT NULL DEFAULT 0,
            total INTEGER NOT NULL DEFAULT 0,
            result TEXT,
            error_code TEXT,
            error_message TEXT,
            created INTEGER NOT NULL,
            updated INTEGER NOT NULL
        );
        CREATE INDEX tasks_created ON tasks (created);",
        postgres: r#"CREATE TABLE tasks (
            id TEXT PRIMARY KEY,
            seq BIGINT GENERATED BY DEFAULT AS IDENTITY,
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            "user" TEXT NOT NULL,
            vm TEXT,
            host TEXT,
            key_provider TEXT,
            key_id TEXT,
            done BIGINT NOT NULL DEFAULT 0,
            total BIGINT NOT NULL DEFAULT 0,
            result TEXT,
            error_code TEXT,
            error_message TEXT,
            created BIGINT NOT NULL,
            updated BIGINT NOT NULL
        );
        CREATE INDEX tasks_created ON tasks (created);"#,
    },
    // 7: which server leads when several share the database (PostgreSQL): one row, a lease
    // until `expires_ms` (the database's clock) with a fencing token that grows with every new
    // holder, and the holder's API address, where the others send writes.
    Migration {
        sqlite: "CREATE TABLE leader (
            id INTEGER PRIMARY KEY,
            holder TEXT NOT NULL,
            api_url TEXT NOT NULL,
            token INTEGER NOT NULL,
            expires_ms INTEGER NOT NULL
        );",
        postgres: "CREATE TABLE leader (
            id BIGINT PRIMARY KEY,
            holder TEXT NOT NULL,
            api_url TEXT NOT NULL,
            token BIGINT NOT NULL,
            expires_ms BIGINT NOT NULL
        );",
    },
    // 8: key pushes, written before the keys leave (servers sharing a database): the leader's
    // fencing token, the host, the VM and its keys, and how the push ended. A push the leader
    // could not see to its end is settled by the next leader from what the host holds.
    Migration {
        sqlite: "CREATE TABLE key_pushes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            token INTEGER NOT NULL,
            host TEXT NOT NULL,
            vm TEXT NOT NULL,
            keys TEXT NOT NULL,
            state TEXT NOT NULL,
            created INTEGER NOT NULL
        );
        CREATE INDEX key_pushes_open ON key_pushes (host, state);",
        postgres: "CREATE TABLE key_pushes (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            token BIGINT NOT NULL,
            host TEXT NOT NULL,
            vm TEXT NOT NULL,
            keys TEXT NOT NULL,
            state TEXT NOT NULL,
            created BIGINT NOT NULL
        );
        CREATE INDEX key_pushes_open ON key_pushes (host, state);",
    },
    // 9: each provider's client key, sealed under a key derived from the server CA's key (which
    // every server on the database holds), so that a standby that takes over can use the
    // providers added while it stood by. Never readable without the CA's key.
    Migration {
        sqlite: "CREATE TABLE provider_keys (name TEXT PRIMARY KEY, sealed BLOB NOT NULL);",
        postgres: "CREATE TABLE provider_keys (name TEXT PRIMARY KEY, sealed BYTEA NOT NULL);",
    },
    // The pushes a leader left unsettled, read at once by the next (a few among every push
    // ever made).
    Migration {
        sqlite: "CREATE INDEX key_pushes_sent ON key_pushes (token) WHERE state = 'sent';",
        postgres: "CREATE INDEX key_pushes_sent ON key_pushes (token) WHERE state = 'sent';",
    },
];

/// How a key push ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// The host took the keys.
    Done,
    /// The host refused them, or did not answer.
    Failed,
    /// It never reached the host (a later leader pushed those keys itself).
    Lost,
}

impl PushOutcome {
    fn as_str(self) -> &'static str {
        match self {
            PushOutcome::Done => "done",
            PushOutcome::Failed => "failed",
            PushOutcome::Lost => "lost",
        }
    }
}

/// A key push written before the keys left, not settled yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushIntent {
    pub id: i64,
    pub token: i64,
    pub vm: String,
    pub keys: Vec<KeyRef>,
}

/// Key pushes about to leave for one host (see [`Store::record_pushes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPushes {
    /// The fencing token of the leader sending them.
    pub token: i64,
    pub host: String,
    /// The VMs whose keys go, with their keys.
    pub vms: Vec<(String, Vec<KeyRef>)>,
}

/// Key-push records written together (see [`Store::record_pushes`]).
#[derive(Clone, Debug, Default)]
pub struct PushRecords {
    /// Pushes about to leave.
    pub intents: Vec<NewPushes>,
    /// Pushes that ended, with how.
    pub settled: Vec<(i64, PushOutcome)>,
    /// The events of the settled pushes.
    pub events: Vec<EventRow>,
    /// The alarms the settled pushes raise or clear.
    pub alarms: Vec<AlarmChange>,
}

/// The database's clock in milliseconds since the epoch, in each dialect: leases are timed by
/// the one clock all servers share.
fn now_ms(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
        Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    }
}

/// The columns [`host_record`] reads, in its order.
const HOST_COLUMNS: &str =
    "name, boot_id, crypto_state, connected, last_seen, host_key_provider, host_key_id";

fn host_record(r: &tresor_db::Row) -> Result<HostRecord, tresor_db::DbError> {
    Ok(HostRecord {
        name: r.get(0)?,
        boot_id: r.get(1)?,
        crypto_state: named(&r.get::<String>(2)?, "a host", HostCryptoState::Incapable),
        connected: r.get(3)?,
        last_seen: r.get(4)?,
        host_key_provider: r.get(5)?,
        host_key_id: r.get(6)?,
    })
}

/// The server holding the lease, as the database says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderRow {
    pub holder: String,
    pub api_url: String,
    pub token: i64,
    /// Milliseconds until the lease ends unless renewed (negative: it has ended).
    pub expires_in_ms: i64,
}

/// A task as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRow {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub user: String,
    pub vm: Option<String>,
    pub host: Option<String>,
    /// The key the task made (encrypt, rekey).
    pub key: Option<KeyRef>,
    pub done: u64,
    pub total: u64,
    /// What it gave, as JSON (the VMs a register or an unlock did).
    pub result: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created: i64,
    pub updated: i64,
}

/// What a join token allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinGrant {
    /// The host name it enrols; any name not enrolled yet when `None`.
    pub host: Option<String>,
    /// Whether it may replace an enrolled host of that name.
    pub replace: bool,
}

/// An alarm to raise or clear (see [`Store::change_alarms`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlarmChange {
    Raise {
        kind: &'static str,
        object: String,
        reason: String,
    },
    Clear {
        kind: &'static str,
        object: String,
    },
}

/// Raises and clears alarms in order, each run of raises or of clears sent together (a storm
/// raises or clears thousands at once: one round trip, not one each).
fn write_alarm_changes(tx: &dyn Conn, changes: &[AlarmChange], now: i64) -> Result<(), StoreError> {
    let runs = changes.chunk_by(|a, b| {
        matches!(a, AlarmChange::Raise { .. }) == matches!(b, AlarmChange::Raise { .. })
    });
    for run in runs {
        let (sql, rows) = match run[0] {
            AlarmChange::Raise { .. } => (
                RAISE_ALARM,
                run.iter()
                    .filter_map(|c| match c {
                        AlarmChange::Raise {
                            kind,
                            object,
                            reason,
                        } => Some(args![*kind, object, reason, now].to_vec()),
                        AlarmChange::Clear { .. } => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            AlarmChange::Clear { .. } => (
                CLEAR_ALARM,
                run.iter()
                    .filter_map(|c| match c {
                        AlarmChange::Clear { kind, object } => {
                            Some(args![*kind, object, now].to_vec())
                        }
                        AlarmChange::Raise { .. } => None,
                    })
                    .collect(),
            ),
        };
        tx.execute_many(sql, &rows)?;
    }
    Ok(())
}

fn raise_alarm(
    conn: &dyn Conn,
    kind: &str,
    object: &str,
    reason: &str,
    now: i64,
) -> Result<i64, StoreError> {
    conn.value(
        &format!("{RAISE_ALARM} RETURNING id"),
        args![kind, object, reason, now],
    )?
    .ok_or_else(|| StoreError::Corrupt("a raised alarm has no id".into()))
}

/// Raises an alarm, or gives the active one of its kind for the object the new reason: one
/// statement (the partial unique index `alarms_active` finds the active one).
const RAISE_ALARM: &str =
    "INSERT INTO alarms (kind, object, reason, raised) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (kind, object) WHERE cleared IS NULL DO UPDATE SET reason = excluded.reason";

const CLEAR_ALARM: &str =
    "UPDATE alarms SET cleared = ?3 WHERE kind = ?1 AND object = ?2 AND cleared IS NULL";

fn clear_alarm(conn: &dyn Conn, kind: &str, object: &str, now: i64) -> Result<bool, StoreError> {
    Ok(conn.execute(CLEAR_ALARM, args![kind, object, now])? > 0)
}

/// A state name read back from the database. The store writes only known names; one it does not
/// know (a newer server wrote it, or a hand edit) is logged and read as `fallback`.
fn named<T: std::str::FromStr>(text: &str, object: &str, fallback: T) -> T {
    text.parse().unwrap_or_else(|_| {
        tracing::error!(%object, state = %text, "a stored state has an unknown name");
        fallback
    })
}

fn write_vms(tx: &dyn Conn, vms: &[&VmRecord]) -> Result<(), StoreError> {
    // Each VM once (its last record): one statement may not change a row twice.
    let mut seen = std::collections::HashSet::new();
    let mut last: Vec<&VmRecord> = vms
        .iter()
        .rev()
        .filter(|v| seen.insert(v.id.as_str()))
        .copied()
        .collect();
    last.reverse();
    let values: Vec<Vec<tresor_db::Value>> = last
        .iter()
        .map(|v| {
            args![
                &v.id,
                &v.name,
                &v.host,
                &v.path,
                v.encrypted,
                &v.key_provider,
                &v.key_id,
                v.power_state.as_str(),
                v.crypto_state.as_str(),
                v.connection_state.as_str(),
                v.lock_reason.map(LockReason::as_str),
                &v.report
            ]
            .to_vec()
        })
        .collect();
    // Thousands of rows in a few statements (a storm changes every VM's state at once); a row
    // a statement cost PostgreSQL seconds at 40,000 VMs.
    tx.insert_rows_then(
        "INSERT INTO vms (id, name, host, path, encrypted, key_provider, key_id, power_state, crypto_state, connection_state, lock_reason, report)",
        &values,
        "ON CONFLICT (id) DO UPDATE SET name = excluded.name, host = excluded.host, path = excluded.path,
            encrypted = excluded.encrypted, key_provider = excluded.key_provider, key_id = excluded.key_id,
            power_state = excluded.power_state, crypto_state = excluded.crypto_state,
            connection_state = excluded.connection_state, lock_reason = excluded.lock_reason, report = excluded.report",
    )?;
    Ok(())
}

/// Migration 3: the VMs a server held before it had a registry are registered as their hosts
/// last reported them (they were registered then, by the rules of that time).
fn registry_from_reports(tx: &dyn Conn) -> Result<(), StoreError> {
    let rows = tx.query("SELECT id, name, host, report FROM vms", &[])?;
    for r in rows {
        let (id, name, host, report): (String, String, String, String) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
        let keys: std::collections::BTreeSet<KeyRef> =
            serde_json::from_str::<tresor_core::protocol::VmReport>(&report)
                .map(|r| r.keys.into_iter().map(|k| k.key).collect())
                .unwrap_or_default();
        tx.execute(
            "INSERT INTO registry (id, name, host, keys) VALUES (?1, ?2, ?3, ?4)",
            args![id, name, host, json(&keys)?],
        )?;
    }
    Ok(())
}

/// The server's database.
///
/// The VMs are also kept in memory, as they were last written: they are read far more often
/// than they change (every `vm list`, every pass of the engine), and with tens of thousands of
/// them reading the table back each time would dominate the server's work.
pub struct Store {
    db: Database,
    /// The VMs in memory, as last written or taken (the server's view; no SQL there).
    view: VmView,
}

pub use crate::vmview::StoredVm;
use crate::vmview::VmView;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

fn json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn unjson<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

const VM_COLUMNS: &str = "id, name, host, path, encrypted, key_provider, key_id, power_state, crypto_state, connection_state, lock_reason, report";

fn vm_record(r: &Row) -> Result<VmRecord, DbError> {
    Ok(VmRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        host: r.get(2)?,
        path: r.get(3)?,
        encrypted: r.get(4)?,
        key_provider: r.get(5)?,
        key_id: r.get(6)?,
        power_state: named(&r.get::<String>(7)?, "a VM", PowerState::PoweredOff),
        crypto_state: named(&r.get::<String>(8)?, "a VM", CryptoState::Locked),
        connection_state: named(&r.get::<String>(9)?, "a VM", ConnectionState::Disconnected),
        lock_reason: r
            .get::<Option<String>>(10)?
            .map(|t| named(&t, "a VM", LockReason::KeyMissingOnHost)),
        report: r.get(11)?,
    })
}

const TASK_COLUMNS: &str = r#"id, kind, state, "user", vm, host, key_provider, key_id, done, total, result, error_code, error_message, created, updated"#;

fn task_row(r: &Row) -> Result<TaskRow, DbError> {
    let kp: Option<String> = r.get(6)?;
    let kid: Option<String> = r.get(7)?;
    Ok(TaskRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        state: r.get(2)?,
        user: r.get(3)?,
        vm: r.get(4)?,
        host: r.get(5)?,
        key: kp.zip(kid).map(|(p, k)| KeyRef::new(&p, &k)),
        done: r.get::<i64>(8)?.max(0) as u64,
        total: r.get::<i64>(9)?.max(0) as u64,
        result: r.get(10)?,
        error_code: r.get(11)?,
        error_message: r.get(12)?,
        created: r.get(13)?,
        updated: r.get(14)?,
    })
}

impl Store {
    /// Opens (creating or migrating) the database in an SQLite file at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_at(&Location::Sqlite(path.to_owned()))
    }

    /// Opens (creating or migrating) the database at `location`: an SQLite file or PostgreSQL.
    pub fn open_at(location: &Location) -> Result<Store, StoreError> {
        let db = Database::open(location).map_err(StoreError::Open)?;
        Store::setup(db)
    }

    /// A store in memory (tests).
    pub fn in_memory() -> Result<Store, StoreError> {
        Store::setup(Database::in_memory()?)
    }

    fn setup(db: Database) -> Result<Store, StoreError> {
        db.migrate(MIGRATIONS, META_FROM, |tx, i| match i {
            2 => registry_from_reports(tx),
            _ => Ok(()),
        })
        .map_err(|e| match e {
            StoreError::Db(DbError::TooNew {
                found,
                known,
                release,
            }) => StoreError::TooNew {
                path: db.location().to_owned(),
                found,
                known,
                release,
                ours: env!("CARGO_PKG_VERSION"),
            },
            other => other,
        })?;
        let vms = db.read(|c| {
            c.map(
                &format!("SELECT {VM_COLUMNS} FROM vms ORDER BY name"),
                &[],
                vm_record,
            )
        })?;
        Ok(Store {
            db,
            view: VmView::load(vms),
        })
    }

    /// Which backend the database is on.
    pub fn dialect(&self) -> Dialect {
        self.db.dialect()
    }

    /// Where the database is (never a password), for messages.
    pub fn location(&self) -> &str {
        self.db.location()
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&dyn Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.db.write(f)
    }

    fn read<T>(&self, f: impl FnOnce(&dyn Conn) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.db.read(f)
    }

    // Providers.

    /// Adds or replaces a provider; `is_default` moves the default marker to it.
    pub fn put_provider(&self, p: &ProviderRecord) -> Result<(), StoreError> {
        self.write(|tx| {
            if p.is_default {
                tx.execute("UPDATE providers SET is_default = 0", &[])?;
            }
            tx.execute(
                "INSERT INTO providers (name, endpoints, ca_pem, client_cert_pem, client_key_file, is_default) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (name) DO UPDATE SET endpoints = ?2, ca_pem = ?3, client_cert_pem = ?4, client_key_file = ?5, is_default = ?6",
                args![&p.name, json(&p.endpoints)?, &p.ca_pem, &p.client_cert_pem, &p.client_key_file, p.is_default],
            )?;
            Ok(())
        })
    }

    pub fn providers(&self) -> Result<Vec<ProviderRecord>, StoreError> {
        let rows = self.read(|c| Ok(c.query("SELECT name, endpoints, ca_pem, client_cert_pem, client_key_file, is_default FROM providers ORDER BY name", &[])?))?;
        rows.iter()
            .map(|r| {
                Ok(ProviderRecord {
                    name: r.get(0)?,
                    endpoints: unjson(&r.get::<String>(1)?)?,
                    ca_pem: r.get(2)?,
                    client_cert_pem: r.get(3)?,
                    client_key_file: r.get(4)?,
                    is_default: r.get(5)?,
                })
            })
            .collect()
    }

    pub fn provider(&self, name: &str) -> Result<Option<ProviderRecord>, StoreError> {
        Ok(self.providers()?.into_iter().find(|p| p.name == name))
    }

    pub fn set_default_provider(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let exists = tx
                .value::<i64>(
                    "SELECT COUNT(*) FROM providers WHERE name = ?1",
                    args![name],
                )?
                .unwrap_or(0)
                > 0;
            if exists {
                tx.execute(
                    "UPDATE providers SET is_default = CASE WHEN name = ?1 THEN 1 ELSE 0 END",
                    args![name],
                )?;
            }
            Ok(exists)
        })
    }

    pub fn remove_provider(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            tx.execute("DELETE FROM provider_keys WHERE name = ?1", args![name])?;
            Ok(tx.execute("DELETE FROM providers WHERE name = ?1", args![name])? > 0)
        })
    }

    // Hosts and enrolment.

    pub fn put_host(&self, h: &HostRecord) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO hosts (name, boot_id, crypto_state, connected, last_seen, host_key_provider, host_key_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (name) DO UPDATE SET boot_id = ?2, crypto_state = ?3, connected = ?4, last_seen = ?5, host_key_provider = ?6, host_key_id = ?7",
                args![&h.name, &h.boot_id, h.crypto_state.as_str(), h.connected, h.last_seen, &h.host_key_provider, &h.host_key_id],
            )?;
            Ok(())
        })
    }

    /// What hosts' agents said of themselves, in the order they said it, in one transaction:
    /// when an agent connected, its boot and its encryption mode (the host runs the mode machine;
    /// a restart ends `pendingIncapable`), and when one left. Hosts not enrolled are skipped.
    pub fn hosts_seen(&self, seen: &[HostSeen]) -> Result<(), StoreError> {
        self.write(|tx| {
            for h in seen {
                match &h.hello {
                    Some((boot_id, mode)) => tx.execute(
                        "UPDATE hosts SET boot_id = ?2, crypto_state = ?3, connected = 1, last_seen = ?4 WHERE name = ?1",
                        args![&h.name, boot_id, mode.as_str(), h.at],
                    )?,
                    None => tx.execute(
                        "UPDATE hosts SET connected = 0, last_seen = ?2 WHERE name = ?1",
                        args![&h.name, h.at],
                    )?,
                };
            }
            Ok(())
        })
    }

    pub fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.read(|c| {
            Ok(c.map(
                &format!("SELECT {HOST_COLUMNS} FROM hosts ORDER BY name"),
                &[],
                host_record,
            )?)
        })
    }

    /// One enrolled host (a query by its name: thousands of hosts connect at once).
    pub fn host(&self, name: &str) -> Result<Option<HostRecord>, StoreError> {
        self.read(|c| {
            c.query_opt(
                &format!("SELECT {HOST_COLUMNS} FROM hosts WHERE name = ?1"),
                args![name],
            )?
            .map(|r| host_record(&r))
            .transpose()
            .map_err(StoreError::from)
        })
    }

    /// Records a one-time join token (its hash) valid until `expires`.
    pub fn add_join_token(
        &self,
        token_hash: &str,
        expires: i64,
        grant: &JoinGrant,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO join_tokens (token_hash, expires, host, replace) VALUES (?1, ?2, ?3, ?4)",
                args![token_hash, expires, &grant.host, grant.replace],
            )?;
            Ok(())
        })
    }

    /// Uses up a join token: what it allows, or `None` if it is unknown, used or expired.
    pub fn consume_join_token(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<JoinGrant>, StoreError> {
        self.write(|tx| {
            let grant = tx
                .query_opt(
                    "DELETE FROM join_tokens WHERE token_hash = ?1 AND expires >= ?2 RETURNING host, replace",
                    args![token_hash, now],
                )?
                .map(|r| {
                    Ok::<_, DbError>(JoinGrant {
                        host: r.get(0)?,
                        replace: r.get(1)?,
                    })
                })
                .transpose()?;
            tx.execute("DELETE FROM join_tokens WHERE expires < ?1", args![now])?;
            Ok(grant)
        })
    }

    /// The SHA-256 of the certificate a host was enrolled with.
    pub fn host_cert(&self, host: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            Ok(c.value(
                "SELECT cert_sha256 FROM host_certs WHERE host = ?1",
                args![host],
            )?)
        })
    }

    pub fn set_host_cert(&self, host: &str, cert_sha256: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO host_certs (host, cert_sha256) VALUES (?1, ?2)
                 ON CONFLICT (host) DO UPDATE SET cert_sha256 = ?2",
                args![host, cert_sha256],
            )?;
            Ok(())
        })
    }

    /// Removes a host: its record and its certificate (refused from then on).
    pub fn remove_host(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            tx.execute("DELETE FROM host_certs WHERE host = ?1", args![name])?;
            Ok(tx.execute("DELETE FROM hosts WHERE name = ?1", args![name])? > 0)
        })
    }

    // VMs.

    pub fn put_vm(&self, v: &VmRecord) -> Result<(), StoreError> {
        self.put_vms(std::slice::from_ref(v))
    }

    /// Writes many VMs in one transaction (one disk flush for all of them).
    pub fn put_vms(&self, vms: &[VmRecord]) -> Result<(), StoreError> {
        let stored = self.view.stored(vms.to_vec());
        self.write(|tx| {
            // Written now: a deferred older state of these VMs must not overwrite them (the
            // deferred writer takes its states inside its transaction, so after this one).
            self.view.undefer(vms.iter().map(|v| v.id.as_str()));
            write_vms(tx, &vms.iter().collect::<Vec<_>>())
        })?;
        self.view.cache(stored);
        Ok(())
    }

    /// Takes the VMs' new states in memory at once (readers see them) and writes them to the
    /// database at the next [`Store::write_deferred`]: the states the engine derives change
    /// many times a second in a storm, and the database needs only the latest one. They are
    /// observed state, derived again from the hosts' reports after a restart.
    pub fn put_vms_deferred(&self, vms: Vec<VmRecord>) {
        let stored = self.view.stored(vms);
        self.view.defer(&stored);
        self.view.cache(stored);
    }

    /// Writes the deferred VM states, a few thousand per transaction so that other writes
    /// (events, operators' changes) do not wait long behind them; says how many.
    pub fn write_deferred(&self) -> Result<usize, StoreError> {
        const CHUNK: usize = 2000;
        let mut written = 0;
        loop {
            let mut taken = Vec::new();
            let result = self.write(|tx| {
                taken = self.view.take_deferred(CHUNK);
                let records: Vec<&VmRecord> = taken.iter().map(|v| &v.record).collect();
                write_vms(tx, &records)
            });
            if let Err(e) = result {
                // Kept for the next try, unless a newer state came meanwhile.
                self.view.defer_again(taken);
                return Err(e);
            }
            if taken.is_empty() {
                return Ok(written);
            }
            written += taken.len();
        }
    }

    /// The VMs in memory: the server's view of them, as last written or taken.
    pub fn view(&self) -> &VmView {
        &self.view
    }

    /// Every VM, by name (from memory).
    pub fn vms(&self) -> Result<Vec<VmRecord>, StoreError> {
        Ok(self.view.records(|_| true))
    }

    /// Renders each VM so when it is written (see [`StoredVm::rendered`]).
    pub fn render_vms_with(&self, render: fn(&VmRecord) -> String) {
        self.view.render_with(render);
    }

    /// The VMs that match, by name: how many, and those from `offset`, at most `limit`, without
    /// copying the records.
    pub fn select_vms(
        &self,
        matches: impl Fn(&VmRecord) -> bool,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<Arc<StoredVm>>) {
        self.view.select(matches, offset, limit)
    }

    /// Every VM as stored, by name, without copying the records.
    pub fn stored_vms(&self) -> Vec<Arc<StoredVm>> {
        self.view.select(|_| true, 0, usize::MAX).1
    }

    pub fn locked_vms(&self) -> Result<Vec<VmRecord>, StoreError> {
        Ok(self.view.records(|v| v.crypto_state == CryptoState::Locked))
    }

    /// A VM's crypto state, without copying its record.
    pub fn crypto_state(&self, name: &str) -> Option<CryptoState> {
        self.view.crypto_state(name)
    }

    pub fn vm(&self, name: &str) -> Result<Option<VmRecord>, StoreError> {
        Ok(self.view.record(name))
    }

    // The registry.

    /// Every registered VM.
    pub fn registrations(&self) -> Result<Vec<Registration>, StoreError> {
        // From the connection for writes: a registration just written is read back at once.
        let rows = self.write(|c| {
            Ok(c.query(
                "SELECT id, name, host, keys FROM registry ORDER BY name",
                &[],
            )?)
        })?;
        rows.iter()
            .map(|r| {
                Ok(Registration {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    host: r.get(2)?,
                    keys: unjson(&r.get::<String>(3)?)?,
                })
            })
            .collect()
    }

    /// Registers a VM, or changes its registration (by name), on disk before it returns.
    pub fn put_registration(&self, reg: &Registration) -> Result<(), StoreError> {
        self.put_registrations(std::slice::from_ref(reg))
    }

    /// Registers many VMs in one transaction.
    pub fn put_registrations(&self, regs: &[Registration]) -> Result<(), StoreError> {
        let names: Vec<Vec<tresor_db::Value>> =
            regs.iter().map(|r| args![&r.name].to_vec()).collect();
        let rows = regs
            .iter()
            .map(|r| Ok(args![&r.id, &r.name, &r.host, json(&r.keys)?].to_vec()))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.write(|tx| {
            // Each name's old registration goes before any new one comes (a VM may take a
            // name another gives up in the same batch).
            tx.execute_many("DELETE FROM registry WHERE name = ?1", &names)?;
            tx.execute_many(
                "INSERT INTO registry (id, name, host, keys) VALUES (?1, ?2, ?3, ?4)",
                &rows,
            )?;
            Ok(())
        })
    }

    /// Unregisters a VM: its registration and its last reported state go.
    pub fn remove_vm(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            tx.execute("DELETE FROM registry WHERE name = ?1", args![name])?;
            let cached = self.view.remove(name);
            let removed = tx.execute("DELETE FROM vms WHERE name = ?1", args![name])? > 0;
            Ok(removed || cached.is_some())
        })
    }

    // Events.

    pub fn add_event(&self, e: &EventRow) -> Result<i64, StoreError> {
        self.write(|tx| insert_event(tx, e))
    }

    /// Stores many events in one transaction, in order.
    pub fn add_events(&self, events: &[EventRow]) -> Result<(), StoreError> {
        let rows = events
            .iter()
            .map(event_args)
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.write(|tx| {
            tx.insert_rows(EVENT_COLUMNS, &rows)?;
            Ok(())
        })
    }

    /// The id of the newest event (0 when there is none).
    pub fn last_event_id(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            Ok(c.value("SELECT COALESCE(MAX(id), 0) FROM events", &[])?
                .unwrap_or(0))
        })
    }

    /// Events matching the filter, oldest first.
    pub fn events(&self, f: &EventFilter) -> Result<Vec<EventRow>, StoreError> {
        let limit = i64::from(f.limit.unwrap_or(1000));
        let rows = self.read(|c| {
            Ok(c.query(
                r#"SELECT id, time, type, severity, vm, host, provider, "user", args FROM events
                 WHERE (CAST(?1 AS TEXT) IS NULL OR vm = ?1) AND (CAST(?2 AS TEXT) IS NULL OR host = ?2)
                   AND (CAST(?3 AS TEXT) IS NULL OR provider = ?3)
                   AND (CAST(?4 AS TEXT) IS NULL OR type = ?4 OR type LIKE ?4 || '.%')
                   AND (CAST(?5 AS BIGINT) IS NULL OR time >= ?5) AND (CAST(?6 AS BIGINT) IS NULL OR id > ?6)
                 ORDER BY id LIMIT ?7"#,
                args![&f.vm, &f.host, &f.provider, &f.event_type, f.since, f.after_id, limit],
            )?)
        })?;
        rows.iter()
            .map(|r| {
                Ok(EventRow {
                    id: r.get(0)?,
                    time: r.get(1)?,
                    event_type: r.get(2)?,
                    severity: r.get(3)?,
                    vm: r.get(4)?,
                    host: r.get(5)?,
                    provider: r.get(6)?,
                    user: r.get(7)?,
                    args: unjson(&r.get::<String>(8)?)?,
                })
            })
            .collect()
    }

    // Alarms.

    /// Raises an alarm unless one of its kind is active for the object; returns its id.
    pub fn raise_alarm(
        &self,
        kind: &str,
        object: &str,
        reason: &str,
        now: i64,
    ) -> Result<i64, StoreError> {
        self.write(|tx| raise_alarm(tx, kind, object, reason, now))
    }

    /// Clears the active alarm of this kind for the object; false if there was none.
    pub fn clear_alarm(&self, kind: &str, object: &str, now: i64) -> Result<bool, StoreError> {
        self.write(|tx| clear_alarm(tx, kind, object, now))
    }

    /// Raises and clears many alarms in one transaction.
    pub fn change_alarms(&self, changes: &[AlarmChange], now: i64) -> Result<(), StoreError> {
        self.write(|tx| write_alarm_changes(tx, changes, now))
    }

    pub fn acknowledge_alarm(&self, id: i64, user: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE alarms SET acknowledged_by = ?2 WHERE id = ?1",
                args![id, user],
            )? > 0)
        })
    }

    /// Active alarms (or all, newest first).
    pub fn alarms(&self, active_only: bool) -> Result<Vec<AlarmRow>, StoreError> {
        self.read(|c| {
            Ok(c.map(
                "SELECT id, kind, object, reason, raised, cleared, acknowledged_by FROM alarms WHERE (?1 = 0 OR cleared IS NULL) ORDER BY id DESC",
                args![active_only],
                |r| {
                    Ok(AlarmRow {
                        id: r.get(0)?,
                        kind: r.get(1)?,
                        object: r.get(2)?,
                        reason: r.get(3)?,
                        raised: r.get(4)?,
                        cleared: r.get(5)?,
                        acknowledged_by: r.get(6)?,
                    })
                },
            )?)
        })
    }

    // Tasks.

    /// Writes a task as it is now (a new one, or a change of an existing one).
    pub fn put_task(&self, t: &TaskRow) -> Result<(), StoreError> {
        let (kp, kid) = match &t.key {
            Some(k) => (Some(k.provider().to_owned()), Some(k.key_id.clone())),
            None => (None, None),
        };
        self.write(|tx| {
            tx.execute(
                r#"INSERT INTO tasks (id, kind, state, "user", vm, host, key_provider, key_id, done, total, result, error_code, error_message, created, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                 ON CONFLICT (id) DO UPDATE SET state = ?3, key_provider = ?7, key_id = ?8, done = ?9, total = ?10,
                    result = ?11, error_code = ?12, error_message = ?13, updated = ?15"#,
                args![
                    &t.id,
                    &t.kind,
                    &t.state,
                    &t.user,
                    &t.vm,
                    &t.host,
                    kp,
                    kid,
                    t.done as i64,
                    t.total as i64,
                    &t.result,
                    &t.error_code,
                    &t.error_message,
                    t.created,
                    t.updated
                ],
            )?;
            Ok(())
        })
    }

    /// The tasks, newest first; at most `limit`.
    pub fn tasks(&self, limit: usize) -> Result<Vec<TaskRow>, StoreError> {
        let made = match self.db.dialect() {
            Dialect::Sqlite => "rowid",
            Dialect::Postgres => "seq",
        };
        self.select_tasks(
            &format!("ORDER BY created DESC, {made} DESC LIMIT ?1"),
            args![limit as i64],
        )
    }

    /// One task.
    pub fn task(&self, id: &str) -> Result<Option<TaskRow>, StoreError> {
        Ok(self.select_tasks("WHERE id = ?1", args![id])?.pop())
    }

    /// The tasks not ended (running or cancelling).
    pub fn unfinished_tasks(&self) -> Result<Vec<TaskRow>, StoreError> {
        self.select_tasks(
            "WHERE state IN ('running', 'cancelling') ORDER BY created",
            &[],
        )
    }

    fn select_tasks(
        &self,
        rest: &str,
        args: &[tresor_db::Value],
    ) -> Result<Vec<TaskRow>, StoreError> {
        self.read(|c| {
            Ok(c.map(
                &format!("SELECT {TASK_COLUMNS} FROM tasks {rest}"),
                args,
                task_row,
            )?)
        })
    }

    /// How many tasks the store keeps in each state.
    pub fn task_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.read(|c| {
            Ok(c.map(
                "SELECT state, COUNT(*) FROM tasks GROUP BY state",
                &[],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
    }

    /// Forgets finished tasks older than `before` (seconds since the epoch), keeping those
    /// still running.
    pub fn prune_tasks(&self, before: i64) -> Result<usize, StoreError> {
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM tasks WHERE created < ?1 AND state NOT IN ('running', 'cancelling')",
                args![before],
            )? as usize)
        })
    }

    // Users, tokens, roles.

    pub fn add_user(&self, name: &str, password_hash: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO users (name, password_hash) VALUES (?1, ?2)",
                args![name, password_hash],
            )?;
            Ok(())
        })
    }

    pub fn password_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            Ok(c.value(
                "SELECT password_hash FROM users WHERE name = ?1",
                args![name],
            )?)
        })
    }

    pub fn users(&self) -> Result<Vec<String>, StoreError> {
        self.read(|c| Ok(c.map("SELECT name FROM users ORDER BY name", &[], |r| r.get(0))?))
    }

    pub fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| Ok(tx.execute("DELETE FROM users WHERE name = ?1", args![name])? > 0))
    }

    pub fn add_token(
        &self,
        token_hash: &str,
        user: &str,
        label: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                r#"INSERT INTO tokens (token_hash, "user", label, created) VALUES (?1, ?2, ?3, ?4)"#,
                args![token_hash, user, label, now],
            )?;
            Ok(())
        })
    }

    /// Forgets a token; false if there was none.
    pub fn remove_token(&self, token_hash: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM tokens WHERE token_hash = ?1",
                args![token_hash],
            )? > 0)
        })
    }

    /// The user of a token, its label (`login`, …) and when it was made.
    pub fn token_user(
        &self,
        token_hash: &str,
    ) -> Result<Option<(String, String, i64)>, StoreError> {
        self.read(|c| {
            c.query_opt(
                r#"SELECT "user", label, created FROM tokens WHERE token_hash = ?1"#,
                args![token_hash],
            )?
            .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .transpose()
        })
    }

    /// Ends every token of a user but `keep` (a token hash).
    pub fn revoke_tokens(&self, user: &str, keep: Option<&str>) -> Result<usize, StoreError> {
        self.write(|tx| {
            Ok(tx.execute(
                r#"DELETE FROM tokens WHERE "user" = ?1 AND token_hash IS DISTINCT FROM CAST(?2 AS TEXT)"#,
                args![user, keep],
            )? as usize)
        })
    }

    pub fn put_role(&self, name: &str, privileges: &[String]) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO roles (name, privileges) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET privileges = ?2",
                args![name, json(&privileges)?],
            )?;
            Ok(())
        })
    }

    pub fn roles(&self) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let rows =
            self.read(|c| Ok(c.query("SELECT name, privileges FROM roles ORDER BY name", &[])?))?;
        rows.iter()
            .map(|r| Ok((r.get(0)?, unjson(&r.get::<String>(1)?)?)))
            .collect()
    }

    pub fn grant(&self, user: &str, role: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                r#"INSERT INTO grants ("user", role) VALUES (?1, ?2) ON CONFLICT DO NOTHING"#,
                args![user, role],
            )?;
            Ok(())
        })
    }

    pub fn ungrant(&self, user: &str, role: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            Ok(tx.execute(
                r#"DELETE FROM grants WHERE "user" = ?1 AND role = ?2"#,
                args![user, role],
            )? > 0)
        })
    }

    /// The roles granted to a user.
    pub fn grants_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            Ok(c.map(
                r#"SELECT role FROM grants WHERE "user" = ?1 ORDER BY role"#,
                args![user],
                |r| r.get(0),
            )?)
        })
    }

    pub fn remove_role(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| Ok(tx.execute("DELETE FROM roles WHERE name = ?1", args![name])? > 0))
    }

    pub fn set_password_hash(&self, user: &str, hash: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE users SET password_hash = ?2 WHERE name = ?1",
                args![user, hash],
            )? > 0)
        })
    }

    /// Every privilege the user's roles give.
    pub fn privileges_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let sets: Vec<String> = self.read(|c| {
            Ok(c.map(
                r#"SELECT r.privileges FROM grants g JOIN roles r ON r.name = g.role WHERE g."user" = ?1"#,
                args![user],
                |r| r.get(0),
            )?)
        })?;
        let mut out: Vec<String> = Vec::new();
        for set in sets {
            for p in unjson::<Vec<String>>(&set)? {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// A consistent copy of the database at `db` (which a running server may be using) in the
    /// new file `out`, for a backup; its schema number. The copy's providers name their client
    /// keys as `providers/NAME/client.key` relative to the data folder, where the backup puts
    /// them; the keys' files as they were named before are returned by provider.
    pub fn snapshot(db: &Path, out: &Path) -> Result<(u32, Vec<(String, String)>), StoreError> {
        use rusqlite::{params, Connection};
        let open_err = |source: rusqlite::Error| {
            StoreError::Open(DbError::Open {
                location: db.display().to_string(),
                reason: source.to_string(),
            })
        };
        let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(open_err)?;
        let out_text = out
            .to_str()
            .ok_or_else(|| StoreError::Corrupt(format!("{} is not a UTF-8 path", out.display())))?;
        conn.execute("VACUUM INTO ?1", params![out_text])?;
        drop(conn);
        let copy = Connection::open(out)?;
        let schema: u32 = copy.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let keys: Vec<(String, String)> = {
            let mut stmt = copy.prepare("SELECT name, client_key_file FROM providers")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (name, file) in &keys {
            if !file.is_empty() {
                copy.execute(
                    "UPDATE providers SET client_key_file = ?1 WHERE name = ?2",
                    params![format!("providers/{name}/client.key"), name],
                )?;
            }
        }
        Ok((schema, keys))
    }

    /// Whether the database answers (readiness).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| {
            c.query("SELECT 1", &[])?;
            Ok(())
        })
    }

    // Settings.

    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| Ok(c.value("SELECT value FROM settings WHERE key = ?1", args![key])?))
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
                args![key, value],
            )?;
            Ok(())
        })
    }
}

impl Store {
    // Leadership (see crate::lease), on connections apart from the ordered writes: a renewal
    // must not wait behind a storm's writes.

    /// Takes the lease for `holder` for `ttl_ms` unless another holder's lease is still
    /// running: the new fencing token, or `None` when another server leads.
    pub fn acquire_lease(
        &self,
        holder: &str,
        api_url: &str,
        ttl_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let now = now_ms(self.db.dialect());
        self.db.write_aside(|tx| {
            Ok(tx.value(
                &format!(
                    "INSERT INTO leader (id, holder, api_url, token, expires_ms) VALUES (1, ?1, ?2, 1, {now} + ?3)
                     ON CONFLICT (id) DO UPDATE SET holder = ?1, api_url = ?2, token = leader.token + 1, expires_ms = {now} + ?3
                     WHERE leader.expires_ms < {now} OR leader.holder = ?1
                     RETURNING token"
                ),
                args![holder, api_url, ttl_ms],
            )?)
        })
    }

    /// Extends the lease `holder` holds with `token` by `ttl_ms`; false when it has ended or
    /// another server holds it now.
    pub fn renew_lease(&self, holder: &str, token: i64, ttl_ms: i64) -> Result<bool, StoreError> {
        let now = now_ms(self.db.dialect());
        self.db.write_aside(|tx| {
            Ok(tx.execute(
                &format!(
                    "UPDATE leader SET expires_ms = {now} + ?3
                     WHERE id = 1 AND holder = ?1 AND token = ?2 AND expires_ms >= {now}"
                ),
                args![holder, token, ttl_ms],
            )? > 0)
        })
    }

    /// Ends the lease `holder` holds with `token` at once (a server stopping), so that another
    /// takes over without waiting for it to run out.
    pub fn release_lease(&self, holder: &str, token: i64) -> Result<(), StoreError> {
        self.db.write_aside(|tx| {
            tx.execute(
                "UPDATE leader SET expires_ms = 0 WHERE id = 1 AND holder = ?1 AND token = ?2",
                args![holder, token],
            )?;
            Ok(())
        })
    }

    /// Who holds (or last held) the lease.
    pub fn leader(&self) -> Result<Option<LeaderRow>, StoreError> {
        let now = now_ms(self.db.dialect());
        self.read(|c| {
            c.query_opt(
                &format!(
                    "SELECT holder, api_url, token, expires_ms - {now} FROM leader WHERE id = 1"
                ),
                &[],
            )?
            .map(|r| {
                Ok(LeaderRow {
                    holder: r.get(0)?,
                    api_url: r.get(1)?,
                    token: r.get(2)?,
                    expires_in_ms: r.get(3)?,
                })
            })
            .transpose()
        })
    }

    /// Writes a group of key-push records in one transaction (the engine gathers what its
    /// pushes asked for while the previous group was written: a storm's thousands of pushes
    /// cost a few commits). First the settled pushes with their events and alarms (a push is
    /// recorded once, whoever settles it); then the pushes about to leave, each written only if
    /// its fencing token still holds the lease. Gives, for each of `records.intents` in order,
    /// the ids of its rows, or `None` when another server leads now (its keys must not leave).
    pub fn record_pushes(
        &self,
        records: &PushRecords,
        now: i64,
    ) -> Result<Vec<Option<Vec<i64>>>, StoreError> {
        let events = records
            .events
            .iter()
            .map(event_args)
            .collect::<Result<Vec<_>, StoreError>>()?;
        let lease_now = now_ms(self.db.dialect());
        self.db.write_aside(|tx| {
            // A push is settled once: the first outcome stands. The ids of one host's pushes
            // follow each other: each run of consecutive ids with one outcome is one range.
            let ranges: Vec<Vec<tresor_db::Value>> = records
                .settled
                .chunk_by(|(a, outcome_a), (b, outcome_b)| outcome_a == outcome_b && *b == a + 1)
                .map(|run| args![run[0].1.as_str(), run[0].0, run[run.len() - 1].0].to_vec())
                .collect();
            tx.execute_many(
                "UPDATE key_pushes SET state = ?1 WHERE id BETWEEN ?2 AND ?3 AND state = 'sent'",
                &ranges,
            )?;
            tx.insert_rows(EVENT_COLUMNS, &events)?;
            write_alarm_changes(tx, &records.alarms, now)?;
            // Whether each token still leads, asked once per token (a group has one or two).
            let mut leads: HashMap<i64, bool> = HashMap::new();
            for intent in &records.intents {
                if leads.contains_key(&intent.token) {
                    continue;
                }
                let holds = tx
                    .value::<i64>(
                        &format!(
                            "SELECT COUNT(*) FROM leader WHERE id = 1 AND token = ?1 AND expires_ms > {lease_now}"
                        ),
                        args![intent.token],
                    )?
                    .unwrap_or(0)
                    > 0;
                leads.insert(intent.token, holds);
            }
            let rows: Vec<Vec<tresor_db::Value>> = records
                .intents
                .iter()
                .filter(|i| leads[&i.token])
                .flat_map(|i| {
                    i.vms.iter().map(|(vm, keys)| {
                        Ok(args![i.token, i.host.as_str(), vm.as_str(), json(keys)?, "sent", now]
                            .to_vec())
                    })
                })
                .collect::<Result<_, StoreError>>()?;
            let ids = tx.insert_rows_returning_ids(
                "INSERT INTO key_pushes (token, host, vm, keys, state, created)",
                &rows,
            )?;
            let mut ids = ids.into_iter();
            Ok(records
                .intents
                .iter()
                .map(|i| leads[&i.token].then(|| ids.by_ref().take(i.vms.len()).collect()))
                .collect())
        })
    }

    /// Every host's pushes that leaders before the holder of `token` left unsettled, by host.
    pub fn unsettled_pushes_before(
        &self,
        token: i64,
    ) -> Result<HashMap<String, Vec<PushIntent>>, StoreError> {
        let rows = self.read(|c| {
            Ok(c.query(
                "SELECT id, token, vm, keys, host FROM key_pushes WHERE state = 'sent' AND token < ?1 ORDER BY id",
                args![token],
            )?)
        })?;
        let mut by_host: HashMap<String, Vec<PushIntent>> = HashMap::new();
        for r in &rows {
            by_host.entry(r.get(4)?).or_default().push(PushIntent {
                id: r.get(0)?,
                token: r.get(1)?,
                vm: r.get(2)?,
                keys: unjson(&r.get::<String>(3)?)?,
            });
        }
        Ok(by_host)
    }

    /// Keeps a provider's sealed client key (see migration 9).
    pub fn put_provider_key(&self, name: &str, sealed: &[u8]) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO provider_keys (name, sealed) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed",
                args![name, sealed],
            )?;
            Ok(())
        })
    }

    /// A provider's sealed client key.
    pub fn provider_key(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|c| {
            Ok(c.value(
                "SELECT sealed FROM provider_keys WHERE name = ?1",
                args![name],
            )?)
        })
    }

    /// Reads the VMs from the database into the view again (a standby server follows what the
    /// leader writes); says how many changed.
    pub fn reload_view(&self) -> Result<usize, StoreError> {
        let vms = self.read(|c| {
            Ok(c.map(
                &format!("SELECT {VM_COLUMNS} FROM vms ORDER BY name"),
                &[],
                vm_record,
            )?)
        })?;
        Ok(self.view.replace_all(vms))
    }
}

const EVENT_COLUMNS: &str =
    r#"INSERT INTO events (time, type, severity, vm, host, provider, "user", args)"#;

/// An event's values for [`EVENT_COLUMNS`].
fn event_args(e: &EventRow) -> Result<Vec<tresor_db::Value>, StoreError> {
    Ok(args![
        e.time,
        &e.event_type,
        &e.severity,
        &e.vm,
        &e.host,
        &e.provider,
        &e.user,
        json(&e.args)?
    ]
    .to_vec())
}

fn insert_event(tx: &dyn Conn, e: &EventRow) -> Result<i64, StoreError> {
    tx.insert_rows_returning_ids(EVENT_COLUMNS, &[event_args(e)?])?
        .pop()
        .ok_or_else(|| StoreError::Corrupt("an inserted event has no id".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tresor_db::testing::ScratchPostgres;

    /// Each test on both backends: SQLite in memory and a PostgreSQL database of its own.
    macro_rules! on_both_backends {
        ($($name:ident),* $(,)?) => {
            mod sqlite {
                $(#[test]
                fn $name() {
                    super::$name(&super::Store::in_memory().unwrap());
                })*
            }
            mod postgres {
                $(#[test]
                fn $name() {
                    let db = super::ScratchPostgres::new();
                    super::$name(&super::Store::open_at(db.location()).unwrap());
                })*
            }
        };
    }

    fn one_server_holds_the_lease_and_each_holder_gets_a_larger_token(s: &Store) {
        // Leases of 10 s where one must still run (a loaded machine does not end them), and
        // one of 1 ms where one must have run out.
        let long = 10_000;
        let a = s.acquire_lease("a", "https://a:8400", long).unwrap();
        assert_eq!(a, Some(1));
        assert_eq!(
            s.acquire_lease("b", "https://b:8400", long).unwrap(),
            None,
            "a's lease runs"
        );
        assert!(s.renew_lease("a", 1, long).unwrap());
        let led = s.leader().unwrap().unwrap();
        assert_eq!((led.holder.as_str(), led.token), ("a", 1));
        assert!(
            led.expires_in_ms > 0 && led.expires_in_ms <= long,
            "{led:?}"
        );
        assert!(s.renew_lease("a", 1, 1).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!s.renew_lease("a", 1, long).unwrap(), "a's lease ran out");
        assert_eq!(
            s.acquire_lease("b", "https://b:8400", long).unwrap(),
            Some(2)
        );
        assert!(!s.renew_lease("a", 1, long).unwrap(), "b holds it now");
        assert_eq!(s.leader().unwrap().unwrap().api_url, "https://b:8400");
        // A server that stops hands the lease over at once.
        s.release_lease("b", 2).unwrap();
        assert_eq!(
            s.acquire_lease("a", "https://a:8400", long).unwrap(),
            Some(3)
        );
    }

    fn key_pushes_are_fenced_grouped_and_settled_once(s: &Store) {
        let token = s
            .acquire_lease("a", "https://a:8400", 10_000)
            .unwrap()
            .unwrap();
        let vms = |prefix: &str, n: usize| -> Vec<(String, Vec<KeyRef>)> {
            (0..n)
                .map(|i| {
                    let vm = format!("{prefix}{i}");
                    let key = KeyRef::new("kms", &format!("key-{vm}"));
                    (vm, vec![key])
                })
                .collect()
        };
        let push = |token: i64, host: &str, vms: Vec<(String, Vec<KeyRef>)>| NewPushes {
            token,
            host: host.into(),
            vms,
        };
        // One group: two hosts of the leader (one with more pushes than one statement takes)
        // and one of a server that does not lead.
        let group = PushRecords {
            intents: vec![
                push(token, "h1", vms("web", 2)),
                push(token + 7, "h2", vms("stale", 1)),
                push(token, "h3", vms("big", 5000)),
            ],
            ..Default::default()
        };
        let ids = s.record_pushes(&group, 100).unwrap();
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[0].as_ref().map(Vec::len), Some(2));
        assert_eq!(ids[1], None, "a server that does not lead writes no push");
        assert_eq!(ids[2].as_ref().map(Vec::len), Some(5000));
        let later = token + 1;
        let unsettled = |host: &str, token: i64| {
            s.unsettled_pushes_before(token)
                .unwrap()
                .remove(host)
                .unwrap_or_default()
        };
        let h1 = unsettled("h1", later);
        assert_eq!(
            h1.iter().map(|p| (p.id, p.vm.as_str())).collect::<Vec<_>>(),
            vec![
                (ids[0].as_ref().unwrap()[0], "web0"),
                (ids[0].as_ref().unwrap()[1], "web1")
            ]
        );
        assert_eq!(h1[1].keys, vec![KeyRef::new("kms", "key-web1")]);
        assert!(unsettled("h2", token + 100).is_empty());
        // Only the leaders' before `token`: none before the first.
        assert!(s.unsettled_pushes_before(token).unwrap().is_empty());
        let h3 = unsettled("h3", later);
        assert_eq!(h3.len(), 5000);
        assert_eq!(
            h3.iter().map(|p| p.id).collect::<Vec<_>>(),
            ids[2].clone().unwrap(),
            "each host gets its own rows' ids, in order"
        );
        assert!(h3
            .iter()
            .enumerate()
            .all(|(i, p)| p.vm == format!("big{i}")));
        // Settled with its event and alarm; settled again (by a later leader), recorded once.
        let web0 = ids[0].as_ref().unwrap()[0];
        let event = EventRow {
            id: 0,
            time: 101,
            event_type: "key.pushed".into(),
            severity: "info".into(),
            vm: Some("web0".into()),
            host: Some("h1".into()),
            provider: None,
            user: None,
            args: vec![("key".into(), "key-web0".into())],
        };
        let settle = PushRecords {
            settled: vec![(web0, PushOutcome::Done)],
            events: vec![event],
            alarms: vec![AlarmChange::Raise {
                kind: "key.push.failed",
                object: "vm:web1".into(),
                reason: "no answer".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            s.record_pushes(&settle, 101).unwrap(),
            Vec::<Option<Vec<i64>>>::new()
        );
        let lost = PushRecords {
            settled: vec![(web0, PushOutcome::Lost)],
            ..Default::default()
        };
        s.record_pushes(&lost, 102).unwrap();
        let h1 = unsettled("h1", later);
        assert_eq!(
            h1.iter().map(|p| p.vm.as_str()).collect::<Vec<_>>(),
            ["web1"]
        );
        let done: Option<String> = s
            .read(|c| Ok(c.value("SELECT state FROM key_pushes WHERE id = ?1", args![web0])?))
            .unwrap();
        assert_eq!(done.as_deref(), Some("done"), "the first settlement stands");
        let pushed = s
            .events(&EventFilter {
                vm: Some("web0".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(pushed.len(), 1);
        // Settled all but one, in the middle of the run of ids: ranges around it.
        let big = ids[2].clone().unwrap();
        let settle = PushRecords {
            settled: big
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 7)
                .map(|(_, id)| (*id, PushOutcome::Failed))
                .collect(),
            ..Default::default()
        };
        s.record_pushes(&settle, 103).unwrap();
        let h3 = unsettled("h3", later);
        assert_eq!(
            h3.iter().map(|p| p.vm.as_str()).collect::<Vec<_>>(),
            ["big7"]
        );
        // Settled twice in one group: the first of the two stands there too.
        let big7 = big[7];
        let twice = PushRecords {
            settled: vec![(big7, PushOutcome::Lost), (big7, PushOutcome::Done)],
            ..Default::default()
        };
        s.record_pushes(&twice, 104).unwrap();
        let state: Option<String> = s
            .read(|c| Ok(c.value("SELECT state FROM key_pushes WHERE id = ?1", args![big7])?))
            .unwrap();
        assert_eq!(state.as_deref(), Some("lost"));
        let alarms = s.alarms(true).unwrap();
        assert_eq!(
            alarms
                .iter()
                .map(|a| (a.kind.as_str(), a.object.as_str()))
                .collect::<Vec<_>>(),
            [("key.push.failed", "vm:web1")]
        );
    }

    on_both_backends!(
        one_server_holds_the_lease_and_each_holder_gets_a_larger_token,
        key_pushes_are_fenced_grouped_and_settled_once,
        providers_keep_one_default,
        what_hosts_say_of_themselves_is_written_in_order,
        hosts_keep_their_host_key_id,
        join_tokens_work_once_and_expire,
        events_filter_and_page,
        alarms_are_raised_once_cleared_and_acknowledged,
        users_tokens_roles_and_privileges
    );

    fn provider(name: &str, default: bool) -> ProviderRecord {
        ProviderRecord {
            name: name.into(),
            endpoints: vec!["10.0.0.1:5696".into(), "10.0.0.2:5696".into()],
            ca_pem: "CA".into(),
            client_cert_pem: "CERT".into(),
            client_key_file: format!("providers/{name}.key"),
            is_default: default,
        }
    }

    fn providers_keep_one_default(s: &Store) {
        s.put_provider(&provider("a", true)).unwrap();
        s.put_provider(&provider("b", true)).unwrap();
        let p = s.providers().unwrap();
        assert_eq!(
            p.iter()
                .filter(|p| p.is_default)
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            vec!["b"]
        );
        assert!(s.set_default_provider("a").unwrap());
        assert!(s.provider("a").unwrap().unwrap().is_default);
        assert!(!s.set_default_provider("zzz").unwrap());
        assert!(s.remove_provider("b").unwrap());
        assert_eq!(s.providers().unwrap().len(), 1);
        assert_eq!(s.provider("a").unwrap().unwrap().endpoints.len(), 2);
    }

    fn what_hosts_say_of_themselves_is_written_in_order(s: &Store) {
        let mut h = HostRecord {
            name: "host-1".into(),
            boot_id: String::new(),
            crypto_state: HostCryptoState::PendingIncapable,
            connected: false,
            last_seen: 1,
            host_key_provider: None,
            host_key_id: None,
        };
        s.put_host(&h).unwrap();
        let hello = |boot: &str, mode, at| HostSeen {
            name: "host-1".into(),
            hello: Some((boot.into(), mode)),
            at,
        };
        s.hosts_seen(&[
            hello("b1", HostCryptoState::PendingIncapable, 2),
            HostSeen {
                name: "host-1".into(),
                hello: None,
                at: 3,
            },
            // The host restarted: the mode it reports now is what counts.
            hello("b2", HostCryptoState::Incapable, 4),
            // Not enrolled: nothing is made for it.
            HostSeen {
                name: "stranger".into(),
                hello: Some(("x".into(), HostCryptoState::Safe)),
                at: 5,
            },
        ])
        .unwrap();
        h.boot_id = "b2".into();
        h.crypto_state = HostCryptoState::Incapable;
        h.connected = true;
        h.last_seen = 4;
        assert_eq!(s.hosts().unwrap(), vec![h]);
    }

    fn hosts_keep_their_host_key_id(s: &Store) {
        let mut h = HostRecord {
            name: "host-1".into(),
            boot_id: "b".into(),
            crypto_state: HostCryptoState::Safe,
            connected: true,
            last_seen: 1,
            host_key_provider: Some("kms".into()),
            host_key_id: Some("42".into()),
        };
        s.put_host(&h).unwrap();
        h.connected = false;
        s.put_host(&h).unwrap();
        assert_eq!(s.hosts().unwrap(), vec![h]);
    }

    fn join_tokens_work_once_and_expire(s: &Store) {
        let grant = JoinGrant {
            host: Some("host-1".into()),
            replace: true,
        };
        s.add_join_token("h1", 100, &grant).unwrap();
        s.add_join_token(
            "h2",
            50,
            &JoinGrant {
                host: None,
                replace: false,
            },
        )
        .unwrap();
        assert_eq!(s.consume_join_token("h1", 60).unwrap(), Some(grant));
        assert_eq!(s.consume_join_token("h1", 60).unwrap(), None, "used");
        assert_eq!(s.consume_join_token("h2", 60).unwrap(), None, "expired");
    }

    fn events_filter_and_page(s: &Store) {
        for (i, (t, vm)) in [
            ("vm.locked.kmsClusterError", "web01"),
            ("vm.unlocked", "web01"),
            ("key.pushed", "db01"),
        ]
        .iter()
        .enumerate()
        {
            s.add_event(&EventRow {
                id: 0,
                time: 1000 + i as i64,
                event_type: (*t).into(),
                severity: "info".into(),
                vm: Some((*vm).into()),
                host: Some("host-1".into()),
                provider: None,
                user: None,
                args: vec![("key".into(), "k1".into())],
            })
            .unwrap();
        }
        let web = s
            .events(&EventFilter {
                vm: Some("web01".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(web.len(), 2);
        let locked = s
            .events(&EventFilter {
                event_type: Some("vm.locked".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(locked.len(), 1, "a type prefix matches its subtypes");
        let page = s
            .events(&EventFilter {
                after_id: Some(web[0].id),
                limit: Some(1),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].event_type, "vm.unlocked");
        assert_eq!(
            s.events(&EventFilter {
                since: Some(1002),
                ..Default::default()
            })
            .unwrap()
            .len(),
            1
        );
        assert_eq!(page[0].args, vec![("key".to_string(), "k1".to_string())]);
    }

    fn alarms_are_raised_once_cleared_and_acknowledged(s: &Store) {
        let a = s
            .raise_alarm("vm.locked", "vm:web01", "kmsClusterError", 1)
            .unwrap();
        let b = s
            .raise_alarm("vm.locked", "vm:web01", "keyMissingOnKms", 2)
            .unwrap();
        assert_eq!(a, b, "one active alarm per condition and object");
        assert_eq!(s.alarms(true).unwrap()[0].reason, "keyMissingOnKms");
        assert!(s.acknowledge_alarm(a, "alice").unwrap());
        assert!(s.clear_alarm("vm.locked", "vm:web01", 3).unwrap());
        assert!(s.alarms(true).unwrap().is_empty());
        let c = s
            .raise_alarm("vm.locked", "vm:web01", "kmsClusterError", 4)
            .unwrap();
        assert_ne!(a, c, "a new occurrence is a new alarm");
        assert_eq!(s.alarms(false).unwrap().len(), 2);

        // Many changes at once are made in their order.
        let raise = |object: &str, reason: &str| AlarmChange::Raise {
            kind: "vm.locked",
            object: object.into(),
            reason: reason.into(),
        };
        let clear = |object: &str| AlarmChange::Clear {
            kind: "vm.locked",
            object: object.into(),
        };
        s.change_alarms(
            &[
                raise("vm:a", "kmsClusterError"),
                raise("vm:b", "kmsClusterError"),
                raise("vm:a", "keyMissingOnKms"),
                clear("vm:web01"),
                clear("vm:b"),
                raise("vm:b", "keyMissingOnHost"),
            ],
            5,
        )
        .unwrap();
        let mut active: Vec<(String, String)> = s
            .alarms(true)
            .unwrap()
            .into_iter()
            .map(|a| (a.object, a.reason))
            .collect();
        active.sort();
        assert_eq!(
            active,
            [
                ("vm:a".to_owned(), "keyMissingOnKms".to_owned()),
                ("vm:b".to_owned(), "keyMissingOnHost".to_owned())
            ]
        );
        // web01's two, a's one, b's cleared one and its new one.
        assert_eq!(s.alarms(false).unwrap().len(), 5);
    }

    fn users_tokens_roles_and_privileges(s: &Store) {
        s.add_user("alice", "argon2-hash").unwrap();
        s.put_role(
            "Operators",
            &["VirtualMachine.PowerOn".into(), "System.View".into()],
        )
        .unwrap();
        s.put_role(
            "Crypto",
            &["Cryptographer.RegisterVM".into(), "System.View".into()],
        )
        .unwrap();
        s.grant("alice", "Operators").unwrap();
        s.grant("alice", "Crypto").unwrap();
        assert_eq!(
            s.privileges_of("alice").unwrap(),
            vec![
                "Cryptographer.RegisterVM",
                "System.View",
                "VirtualMachine.PowerOn"
            ]
        );
        s.add_token("t-hash", "alice", "laptop", 1).unwrap();
        assert_eq!(
            s.token_user("t-hash").unwrap(),
            Some(("alice".into(), "laptop".into(), 1))
        );
        assert!(s.remove_user("alice").unwrap());
        assert_eq!(
            s.token_user("t-hash").unwrap(),
            None,
            "tokens go with their user"
        );
    }

    #[test]
    fn vms_and_settings_persist_across_opens_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.sqlite");
        vms_and_settings_persist_across_opens(|| Store::open(&path).unwrap());
    }

    #[test]
    fn vms_and_settings_persist_across_opens_postgres() {
        let db = ScratchPostgres::new();
        vms_and_settings_persist_across_opens(|| Store::open_at(db.location()).unwrap());
    }

    fn vms_and_settings_persist_across_opens(open: impl Fn() -> Store) {
        {
            let s = open();
            s.put_vm(&VmRecord {
                id: "id1".into(),
                name: "web01".into(),
                host: "host-1".into(),
                path: "/vms/web01".into(),
                encrypted: true,
                key_provider: Some("corp-kms".into()),
                key_id: Some("4711".into()),
                power_state: PowerState::PoweredOff,
                crypto_state: CryptoState::Locked,
                connection_state: ConnectionState::Invalid,
                lock_reason: Some(LockReason::KeyMissingOnKms),
                report: "{}".into(),
            })
            .unwrap();
            s.set_setting("unlock.policy", "manual").unwrap();
        }
        let s = open();
        assert_eq!(
            s.vm("web01").unwrap().unwrap().key_id.as_deref(),
            Some("4711")
        );
        assert_eq!(s.locked_vms().unwrap().len(), 1);
        assert_eq!(
            s.setting("unlock.policy").unwrap().as_deref(),
            Some("manual")
        );
        assert!(s.remove_vm("web01").unwrap());
    }
}
