//! The database across releases: a database made by the previous release (schema 4, from
//! `tresor dev`, kept as SQL in `fixtures/`) is migrated on open and keeps everything; a
//! database written by a newer release is refused with the release it needs. (PostgreSQL came
//! with schema 9, so there is no older PostgreSQL database to migrate; the refusal runs on both.)

mod common;

use tresor_db::{args, Database, DbError, Dialect};
use tresor_server::store::{Store, StoreError, SCHEMA};

/// A database file made from SQL text.
fn database(dir: &std::path::Path, sql: &str) -> std::path::PathBuf {
    let path = dir.join("server.sqlite");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(sql)
        .unwrap();
    path
}

fn schema_of(path: &std::path::Path) -> (i64, Option<String>) {
    let c = rusqlite::Connection::open(path).unwrap();
    let version = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    let release = c
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_release'",
            [],
            |r| r.get(0),
        )
        .ok();
    (version, release)
}

#[test]
fn a_database_of_the_previous_release_is_migrated_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path(), include_str!("fixtures/server-schema-4.sql"));
    assert_eq!(schema_of(&path).0, 4);
    let store = Store::open(&path).unwrap();
    let names: Vec<String> = store.vms().unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["plain01", "web01"]);
    let web01 = store.vm("web01").unwrap().unwrap();
    assert!(web01.encrypted && web01.key_id.is_some());
    assert_eq!(store.users().unwrap(), ["admin", "alice"]);
    assert_eq!(store.grants_of("alice").unwrap(), ["ReadOnly"]);
    let registry: Vec<String> = store
        .registrations()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(registry, ["plain01", "web01"]);
    assert_eq!(store.providers().unwrap()[0].name, "tresor-kms");
    assert!(!store.events(&Default::default()).unwrap().is_empty());
    drop(store);
    assert_eq!(
        schema_of(&path),
        (SCHEMA as i64, Some(env!("CARGO_PKG_VERSION").to_owned()))
    );
    // Opening it again changes nothing.
    Store::open(&path).unwrap();
    assert_eq!(schema_of(&path).0, SCHEMA as i64);
}

/// On either backend (`TRESOR_TEST_SERVER_DATABASE`).
#[test]
fn a_database_of_a_newer_release_is_refused_with_the_release_it_needs() {
    let db = common::TestDb::new();
    drop(db.open());
    // What a later release would leave: a schema beyond this one's, and its version.
    let raw = Database::open(&db.location()).unwrap();
    let newer = SCHEMA as i64 + 1;
    raw.write(|c| -> Result<(), DbError> {
        match c.dialect() {
            Dialect::Sqlite => c.batch(&format!("PRAGMA user_version = {newer}"))?,
            Dialect::Postgres => {
                c.execute("UPDATE tresor_schema SET version = ?1", args![newer])?;
            }
        }
        c.execute(
            "UPDATE meta SET value = '9.1.0' WHERE key = 'schema_release'",
            &[],
        )?;
        Ok(())
    })
    .unwrap();
    let err = Store::open_at(&db.location()).unwrap_err();
    assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("has schema {newer}"))
            && message.contains("written by tresor 9.1.0")
            && message.contains("Run tresor 9.1.0 or newer"),
        "{message}"
    );
    // Refused before anything was written.
    let version = raw
        .read(|c| match c.dialect() {
            Dialect::Sqlite => c.value::<i64>("PRAGMA user_version", &[]),
            Dialect::Postgres => c.value::<i64>("SELECT version FROM tresor_schema", &[]),
        })
        .unwrap();
    assert_eq!(version, Some(newer));
}
