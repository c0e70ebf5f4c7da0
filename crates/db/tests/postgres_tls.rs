//! TLS to PostgreSQL against the test cluster (`scripts/postgres/cluster`: TCP only with TLS, the
//! user `tresor` only with a client certificate from the cluster's CA): what is checked, what is
//! refused, and that the refusal says what to change.

use tresor_db::testing::{PASSWORD_VAR, URL_VAR};
use tresor_db::{Database, Location};

fn cluster_url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| {
        panic!("{URL_VAR} is not set: run ./scripts/test, or start scripts/postgres/cluster")
    })
}

/// The cluster's connection string with query parameters set (`Some`) or removed (`None`).
fn url_with(changes: &[(&str, Option<&str>)], host: Option<&str>) -> String {
    let url = cluster_url();
    let (base, query) = url
        .split_once('?')
        .expect("the cluster's string has TLS parameters");
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    for (key, value) in changes {
        pairs.retain(|(k, _)| k != key);
        if let Some(v) = value {
            pairs.push(((*key).to_owned(), (*v).to_owned()));
        }
    }
    let base = match host {
        Some(h) => base.replace("127.0.0.1", h),
        None => base.to_owned(),
    };
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{base}?{}", query.join("&"))
}

fn open(url: String) -> Result<Database, String> {
    let password = std::env::var(PASSWORD_VAR)
        .ok()
        .map(|f| zeroize::Zeroizing::new(std::fs::read_to_string(f).unwrap()));
    Database::open(&Location::Postgres { url, password }).map_err(|e| e.to_string())
}

/// Whether this session is encrypted, by the server's own view of it.
fn encrypted(db: &Database) -> bool {
    let rows = db
        .read(|c| {
            c.query(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
        })
        .unwrap();
    rows[0].get::<bool>(0).unwrap()
}

#[test]
fn the_cluster_is_reached_over_tls_with_its_certificate_checked() {
    let db = open(cluster_url()).expect("the test cluster takes its own connection string");
    assert!(encrypted(&db));
}

#[test]
fn a_server_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = tresor_tls::CertificateAuthority::generate("another CA", 1).unwrap();
    let ca = dir.path().join("other-ca.pem");
    std::fs::write(&ca, other.cert_pem()).unwrap();
    let err = open(url_with(&[("sslrootcert", ca.to_str())], None)).unwrap_err();
    assert!(err.contains("127.0.0.1"), "{err}");
    assert!(
        err.contains(
            "check that sslrootcert is the CA that issued the database server's certificate"
        ),
        "{err}"
    );
    // Without a root certificate, sslmode=require encrypts but checks nothing, as libpq does.
    let db = open(url_with(
        &[("sslrootcert", None), ("sslmode", Some("require"))],
        None,
    ))
    .unwrap();
    assert!(encrypted(&db));
}

#[test]
fn verify_full_checks_the_name_and_verify_ca_does_not() {
    // The server's certificate names 127.0.0.1, not localhost.
    let err = open(url_with(&[], Some("localhost"))).unwrap_err();
    assert!(err.contains("does not name the host"), "{err}");
    let db = open(url_with(
        &[("sslmode", Some("verify-ca"))],
        Some("localhost"),
    ))
    .expect("verify-ca checks the chain only");
    assert!(encrypted(&db));
}

#[test]
fn plain_text_and_a_missing_client_certificate_are_refused_with_what_to_change() {
    let err = open(url_with(
        &[
            ("sslmode", Some("disable")),
            ("sslrootcert", None),
            ("sslcert", None),
            ("sslkey", None),
        ],
        None,
    ))
    .unwrap_err();
    assert!(err.contains("remove sslmode=disable"), "{err}");

    let err = open(url_with(&[("sslcert", None), ("sslkey", None)], None)).unwrap_err();
    assert!(err.contains("sslcert=FILE&sslkey=FILE"), "{err}");
}

#[test]
fn tls_files_that_cannot_be_read_are_named() {
    let err = open(url_with(
        &[("sslrootcert", Some("/nonexistent/ca.pem"))],
        None,
    ))
    .unwrap_err();
    assert!(
        err.contains("sslrootcert") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
    let err = open(url_with(
        &[("sslmode", Some("verify-full")), ("sslrootcert", None)],
        None,
    ))
    .unwrap_err();
    assert!(err.contains("needs sslrootcert"), "{err}");
}
