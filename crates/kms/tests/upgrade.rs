//! The key server's database across releases: one made by the previous release (schema 2, from
//! `tresor dev`, kept as SQL in `fixtures/`) is migrated on open and keeps its objects; one
//! written by a newer release is refused with the release it needs.

use tresor_kms::store::{self, Store, StoreError, SCHEMA};

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
fn a_database_of_the_previous_release_is_migrated_and_keeps_its_objects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.sqlite");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(include_str!("fixtures/kms-schema-2.sql"))
        .unwrap();
    let s = Store::open(&path).unwrap();
    // The key of the encrypted VM and the host's.
    assert_eq!(s.read(store::count_objects).unwrap(), 2);
    let audit = s.read(|c| store::audit_log(c, None)).unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action.contains("create") || a.action.contains("Create")),
        "{audit:?}"
    );
    s.close();
    drop(s);
    assert_eq!(
        schema_of(&path),
        (SCHEMA as i64, Some(env!("CARGO_PKG_VERSION").to_owned()))
    );
}

#[test]
fn a_database_of_a_newer_release_is_refused_with_the_release_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.sqlite");
    let s = Store::open(&path).unwrap();
    s.close();
    drop(s);
    let c = rusqlite::Connection::open(&path).unwrap();
    c.pragma_update(None, "user_version", SCHEMA as i64 + 1)
        .unwrap();
    c.execute(
        "UPDATE meta SET value = '9.1.0' WHERE key = 'schema_release'",
        [],
    )
    .unwrap();
    drop(c);
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("written by tresor 9.1.0")
            && message.contains("Run tresor 9.1.0 or newer"),
        "{message}"
    );
    assert_eq!(schema_of(&path).0, SCHEMA as i64 + 1);
}
