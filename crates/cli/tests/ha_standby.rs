//! Two servers on one PostgreSQL database: a client that knows only the standby (a script with
//! one address, the web console opened on the standby) gets its writes done, because the standby
//! sends them on to the leader and gives back its answer; the sign-in limits still count the
//! client's own address; a client cannot claim to be a standby.

mod common;
use std::process::Command;

use common::browser::Browser;
use common::{wait_for, Dev, TRESOR};

/// A client command against the standby alone.
fn on_standby(dev: &Dev, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(TRESOR)
        .args(args)
        .env("TRESOR_SERVER", &dev.servers[1])
        .env("TRESOR_CA", dev.ca())
        .env("TRESOR_TOKEN", token)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A raw HTTPS request with headers of the test's choosing (python3's http.client): the status
/// and the body.
fn raw(
    dev: &Dev,
    server: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let script = r#"
import http.client, json, ssl, sys, urllib.parse
server, ca, method, path, headers, body = sys.argv[1:7]
u = urllib.parse.urlparse(server)
c = http.client.HTTPSConnection(u.hostname, u.port, context=ssl.create_default_context(cafile=ca))
h = json.loads(headers)
h["Content-Type"] = "application/json"
c.request(method, path, body=body.encode() if body else None, headers=h)
r = c.getresponse()
print(r.status)
print(r.read().decode())
"#;
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
        .collect();
    let out = Command::new("python3")
        .args(["-c", script, server])
        .arg(dev.ca())
        .args([
            method,
            path,
            &serde_json::Value::Object(headers).to_string(),
            body,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap();
    (status.trim().parse().unwrap(), body.to_owned())
}

fn add_user(dev: &Dev, user: &str, role: &str) {
    let pw = dev.dir.path().join(format!("{user}.pw"));
    std::fs::write(&pw, format!("{user}-long-password\n")).unwrap();
    dev.ok(&[
        "user",
        "add",
        user,
        "--password-file",
        &pw.display().to_string(),
        "--role",
        role,
    ]);
}

#[test]
fn writes_sent_to_a_standby_are_carried_out_by_the_leader() {
    // Leases of 10 s: with 3 s, a leader starved of CPU (a browser starting beside it) lost its
    // lease now and then, and ended (to be started again as a standby).
    let dev = Dev::start_servers(1, 2, 10, &[]);
    let standby = dev.servers[1].clone();

    // A script that knows only the standby creates a VM: the leader carries it out.
    let (ok, out, err) = on_standby(
        &dev,
        &dev.token,
        &[
            "vm",
            "create",
            "via-standby",
            "--host",
            "host-1",
            "--disk",
            "1M",
            "--encrypt",
        ],
    );
    assert!(ok, "{out}{err}");
    wait_for("the VM is in everyone's list", || {
        dev.ok(&["vm", "list", "-o", "json"])
            .contains("via-standby")
    });

    // Signing in is a write too: through the standby, a token that works everywhere.
    add_user(&dev, "alice", "Administrator");
    let (status, body) = raw(
        &dev,
        &standby,
        "POST",
        "/api/v1/login",
        &[],
        r#"{"user": "alice", "password": "alice-long-password"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let token = serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, out, err) = on_standby(&dev, &token, &["vm", "power-on", "via-standby"]);
    assert!(ok, "{out}{err}");

    // The leader counts failed sign-ins sent on by the standby: three are free, the fourth
    // starts a wait (1 s, then doubling), and a try within a wait meets it. Tried until one does,
    // however slowly a loaded machine sends them.
    let mut statuses = Vec::new();
    while statuses.last() != Some(&429) && statuses.len() < 12 {
        let (status, _) = raw(
            &dev,
            &standby,
            "POST",
            "/api/v1/login",
            &[],
            r#"{"user": "alice", "password": "wrong"}"#,
        );
        statuses.push(status);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(
        statuses.len() >= 5,
        "three free failures and a fourth: {statuses:?}"
    );
    assert!(
        statuses[..statuses.len() - 1].iter().all(|s| *s == 401),
        "{statuses:?}"
    );

    // A client cannot pass itself off as a standby speaking for another address.
    for server in [&dev.servers[0], &standby] {
        let (status, body) = raw(
            &dev,
            server,
            "POST",
            "/api/v1/login",
            &[("tresor-forwarded-for", "192.0.2.1 1 AAAA")],
            r#"{"user": "alice", "password": "wrong"}"#,
        );
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("only Tresor's servers send it"), "{body}");
    }
}

#[test]
fn the_console_on_a_standby_signs_in_and_acts() {
    let dev = Dev::start_servers(1, 2, 10, &[]);
    add_user(&dev, "alice", "Administrator");
    dev.create_vm("web01", true);
    // A standby's view follows the leader's writes within a second.
    wait_for("the standby lists web01", || {
        on_standby(&dev, &dev.token, &["vm", "list"])
            .1
            .contains("web01")
    });

    let browser = Browser::start();
    browser.go(&format!("{}/", dev.servers[1]));
    browser.type_into("#user", "alice");
    browser.type_into("#password", "alice-long-password");
    browser.click("#signin-button");
    browser.wait("#vm-table");
    browser.click("tr[data-vm=web01] a");
    browser.click("button[data-op=\"power-on\"]");
    wait_for("the leader powers web01 on", || {
        dev.vm("web01")["powerState"] == "poweredOn"
    });
}
