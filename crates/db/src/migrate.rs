//! Numbered migrations, in both dialects, one transaction each.

use crate::{Conn, Database, DbError, Dialect};

/// One step of a schema: its SQL for each backend.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

impl Migration {
    fn sql(&self, dialect: Dialect) -> &'static str {
        match dialect {
            Dialect::Sqlite => self.sqlite,
            Dialect::Postgres => self.postgres,
        }
    }
}

/// Refuses a database whose schema is newer than `migrations` (naming the release that wrote
/// it, from the `meta` table); otherwise applies the migrations it lacks, each in a transaction
/// of its own, and records this release as the one that wrote the schema (from migration
/// `meta_from`, 0-based, on: the one that made the `meta` table). `after` runs after migration
/// `i` (0-based), in its transaction. Processes opening the database together migrate it one
/// after another.
pub(crate) fn run<E: From<DbError>>(
    db: &Database,
    migrations: &[Migration],
    meta_from: usize,
    after: impl Fn(&dyn Conn, usize) -> Result<(), E>,
) -> Result<(), E> {
    let backend = db.backend();
    let mut from = None;
    let mut to = 0;
    loop {
        let done = db.write(|conn| -> Result<bool, E> {
            backend.lock_schema(conn)?;
            let version = backend.schema_version(conn)?;
            from.get_or_insert(version);
            if version > migrations.len() as i64 {
                let release = conn
                    .value::<String>("SELECT value FROM meta WHERE key = 'schema_release'", &[])
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| "(a newer release)".into());
                return Err(DbError::TooNew {
                    found: version,
                    known: migrations.len(),
                    release,
                }
                .into());
            }
            let Some(step) = migrations.get(version as usize) else {
                return Ok(true);
            };
            let i = version as usize;
            to = version + 1;
            conn.batch(step.sql(conn.dialect()))?;
            after(conn, i)?;
            backend.set_schema_version(conn, version + 1)?;
            if i >= meta_from {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_release', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    crate::args![env!("CARGO_PKG_VERSION")],
                )?;
            }
            Ok(false)
        })?;
        if done {
            break;
        }
    }
    if let Some(from @ 1..) = from {
        if to > from {
            tracing::info!(
                database = db.location(),
                from,
                to,
                "database schema migrated"
            );
        }
    }
    Ok(())
}
