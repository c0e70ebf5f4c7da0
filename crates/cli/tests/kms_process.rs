//! `tresor kms` as a process: set up with `init`, served, killed with SIGKILL in the middle of
//! work, restarted; administered with `tresor kms key`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tresor_kmip_client::{ClientConfig, KmipClient};

mod common;
use common::{free_port, TRESOR};

struct Kms {
    child: Child,
}

impl Kms {
    fn start(dir: &Path, port: u16) -> Kms {
        let child = Command::new(TRESOR)
            .args(["kms", "serve", "--config"])
            .arg(dir.join("kms.toml"))
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(
                    dir.join(format!("kms-{}.log", Instant::now().elapsed().as_nanos())),
                )
                .unwrap(),
            )
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tresor kms serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Kms { child }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Kms {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn init(dir: &Path, port: u16) {
    let out = Command::new(TRESOR)
        .args(["kms", "init", "--dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn client(dir: &Path, port: u16) -> KmipClient {
    let tls = tresor_tls::client_config(
        &tresor_tls::load_certs(&dir.join("tls/ca.pem")).unwrap(),
        tresor_tls::load_certs(&dir.join("clients/tresor-server.pem")).unwrap(),
        tresor_tls::load_key(&dir.join("clients/tresor-server.key")).unwrap(),
    )
    .unwrap();
    KmipClient::new(ClientConfig::new(vec![format!("127.0.0.1:{port}")], tls))
}

fn tresor(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(TRESOR)
        .args(args)
        .env("TRESOR_KMS_CONFIG", dir.join("kms.toml"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn keys_whose_ids_were_handed_out_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    init(dir.path(), port);
    let kms = Kms::start(dir.path(), port);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Many clients create keys at once; the server is killed while they are still at it.
    // Every id a Create answered with is recorded at once, with its key when a Get still got it.
    let created: Vec<(String, Option<Vec<u8>>)> = rt.block_on(async {
        let c = Arc::new(client(dir.path(), port));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                let start = Instant::now();
                while start.elapsed() < Duration::from_millis(1500) {
                    match c.create_aes_key(256, vec![]).await {
                        Ok(uid) => match c.get_key(&uid).await {
                            Ok(k) => mine.push((uid, Some(k.to_vec()))),
                            Err(_) => {
                                mine.push((uid, None));
                                break;
                            }
                        },
                        Err(_) => break,
                    }
                }
                mine
            }));
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        kms.kill9();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    assert!(
        created.len() > 20,
        "only {} keys were created before the kill",
        created.len()
    );
    let _kms = Kms::start(dir.path(), port);
    rt.block_on(async {
        let c = client(dir.path(), port);
        for (uid, key) in &created {
            let got = c
                .get_key(uid)
                .await
                .unwrap_or_else(|e| panic!("key {uid} vanished: {e}"));
            if let Some(key) = key {
                assert_eq!(&got[..], &key[..], "key {uid} changed");
            }
        }
    });
    let (ok, stdout, _) = tresor(dir.path(), &["kms", "key", "list", "-o", "json"]);
    assert!(ok);
    let keys: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(keys.as_array().unwrap().len() >= created.len());
}

#[test]
fn the_administrator_deactivates_and_reactivates_exactly_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    init(dir.path(), port);
    let _kms = Kms::start(dir.path(), port);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(dir.path(), port);
    let (a, b) = rt.block_on(async {
        (
            c.create_active_aes_key(256, vec![]).await.unwrap(),
            c.create_active_aes_key(256, vec![]).await.unwrap(),
        )
    });
    let (ok, out, err) = tresor(dir.path(), &["kms", "key", "deactivate", &a]);
    assert!(ok, "{err}");
    assert!(out.contains("Deactivated"), "{out}");
    let state = |uid: &str| rt.block_on(c.state(uid)).unwrap();
    assert_eq!(state(&a), tresor_kmip::spec::State::Deactivated);
    assert_eq!(state(&b), tresor_kmip::spec::State::Active);
    let (ok, out, _) = tresor(dir.path(), &["kms", "key", "activate", &a]);
    assert!(ok);
    assert!(out.contains("Active"), "{out}");
    assert_eq!(state(&a), tresor_kmip::spec::State::Active);
    let (ok, out, _) = tresor(dir.path(), &["kms", "key", "show", &a]);
    assert!(ok);
    assert!(
        out.contains("admin deactivate") && out.contains("admin activate"),
        "{out}"
    );
    // Refusals are one clear line and a non-zero exit.
    let (ok, _, err) = tresor(dir.path(), &["kms", "key", "destroy", &a]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("deactivate it first"), "{err}");
    let (ok, _, err) = tresor(dir.path(), &["kms", "key", "activate", "no-such-key"]);
    assert!(!ok);
    assert!(err.contains("No key with id no-such-key"), "{err}");
}

/// `kms.toml` with its listen address and a PostgreSQL database set.
fn configure(dir: &Path, port: u16, db: &tresor_db::testing::ScratchPostgres) {
    let path = dir.join("kms.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = String::new();
    for line in text.lines().filter(|l| !l.starts_with("database")) {
        if line.starts_with("listen = ") {
            out.push_str(&format!("listen = \"127.0.0.1:{port}\"\n"));
            out.push_str(&format!("database = {:?}\n", db.url()));
            if let Ok(f) = std::env::var(tresor_db::testing::PASSWORD_VAR) {
                out.push_str(&format!("database_password_file = {f:?}\n"));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(&path, out).unwrap();
}

/// Two key servers on one PostgreSQL database serve the same keys: a client that lists both
/// creates keys while the first is killed with SIGKILL; every key whose Create was answered is
/// fetched from the second, and the client went on creating there.
#[test]
fn two_key_servers_on_one_postgres_serve_the_same_keys_through_a_kill_9() {
    let db = tresor_db::testing::ScratchPostgres::new();
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    let (port_a, port_b) = (free_port(), free_port());
    init(&a, port_a);
    configure(&a, port_a, &db);
    // The first start makes the master key; the second node gets a copy of the folder (its
    // certificates and that master key), as an operator would give it.
    drop(Kms::start(&a, port_a));
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&a)
        .arg(&b)
        .status()
        .unwrap();
    assert!(copied.success());
    configure(&b, port_b, &db);
    let node_a = Kms::start(&a, port_a);
    let _node_b = Kms::start(&b, port_b);
    let tls = tresor_tls::client_config(
        &tresor_tls::load_certs(&a.join("tls/ca.pem")).unwrap(),
        tresor_tls::load_certs(&a.join("clients/tresor-server.pem")).unwrap(),
        tresor_tls::load_key(&a.join("clients/tresor-server.key")).unwrap(),
    )
    .unwrap();
    let both = KmipClient::new(ClientConfig::new(
        vec![format!("127.0.0.1:{port_a}"), format!("127.0.0.1:{port_b}")],
        tls,
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (acknowledged, before_kill) = rt.block_on(async {
        let both = Arc::new(both);
        let writer = {
            let both = both.clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let start = Instant::now();
                while start.elapsed() < Duration::from_millis(3000) {
                    match both.create_aes_key(256, vec![]).await {
                        Ok(uid) => acknowledged.push((uid, start.elapsed())),
                        // A Create cut off by the kill is not acknowledged; the next one goes
                        // to the other node.
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                acknowledged
            })
        };
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let killed_at = Duration::from_millis(1000);
        node_a.kill9();
        let acknowledged = writer.await.unwrap();
        let before = acknowledged.iter().filter(|(_, t)| *t < killed_at).count();
        (acknowledged, before)
    });
    assert!(
        before_kill > 5,
        "only {before_kill} keys were created before the kill"
    );
    assert!(
        acknowledged.len() > before_kill + 5,
        "the client did not go on at the other node: {} keys in all, {before_kill} before the kill",
        acknowledged.len()
    );
    eprintln!(
        "{} keys acknowledged, {before_kill} of them before the kill",
        acknowledged.len()
    );
    let only_b = client(&b, port_b);
    rt.block_on(async {
        for (uid, _) in &acknowledged {
            only_b.get_key(uid).await.unwrap_or_else(|e| {
                panic!("key {uid}, acknowledged, is not on the other node: {e}")
            });
        }
    });
}
