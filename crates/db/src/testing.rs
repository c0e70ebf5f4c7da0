//! Databases for tests: a PostgreSQL database of its own for each test, on the cluster the test
//! script starts (`TRESOR_TEST_POSTGRES`, its password in `TRESOR_TEST_POSTGRES_PASSWORD_FILE`),
//! dropped when the test ends.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::{Database, Location};

/// The connection string of the test cluster's database `tresor`.
pub const URL_VAR: &str = "TRESOR_TEST_POSTGRES";
/// The file that holds its password.
pub const PASSWORD_VAR: &str = "TRESOR_TEST_POSTGRES_PASSWORD_FILE";

/// A PostgreSQL database made for one test; dropped with it.
#[derive(Debug)]
pub struct ScratchPostgres {
    admin: Database,
    name: String,
    location: Location,
}

fn admin_location() -> Location {
    let url = std::env::var(URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{URL_VAR} is not set: the PostgreSQL tests need the cluster that ./scripts/test starts \
             (or start one with scripts/postgres/cluster start DIR PORT and set {URL_VAR} and {PASSWORD_VAR})"
        )
    });
    let password = std::env::var(PASSWORD_VAR).ok().map(|f| {
        zeroize::Zeroizing::new(
            std::fs::read_to_string(&f)
                .unwrap_or_else(|e| panic!("cannot read {PASSWORD_VAR} ({f}): {e}")),
        )
    });
    Location::Postgres { url, password }
}

/// `url` with its database replaced by `name` (its query, TLS settings among them, kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (rest, query) = url
        .split_once('?')
        .map_or((url, None), |(r, q)| (r, Some(q)));
    let base = rest.rsplit_once('/').map_or(rest, |(b, _)| b);
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

impl ScratchPostgres {
    /// A new, empty database.
    pub fn new() -> ScratchPostgres {
        static N: AtomicU32 = AtomicU32::new(0);
        let admin_at = admin_location();
        let admin = Database::open(&admin_at).expect("the test cluster answers");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "t_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        admin
            .read(|c| c.batch(&format!("CREATE DATABASE {name}")))
            .expect("the test user may create databases");
        let Location::Postgres { url, password } = admin_at else {
            unreachable!()
        };
        let location = Location::Postgres {
            url: with_database(&url, &name),
            password,
        };
        ScratchPostgres {
            admin,
            name,
            location,
        }
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The connection string (no password in it).
    pub fn url(&self) -> &str {
        match &self.location {
            Location::Postgres { url, .. } => url,
            Location::Sqlite(_) => unreachable!(),
        }
    }
}

impl Default for ScratchPostgres {
    fn default() -> Self {
        ScratchPostgres::new()
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        let _ = self.admin.read(|c| {
            c.batch(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
        });
    }
}
