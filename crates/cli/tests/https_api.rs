//! The API over HTTPS, as a client on another machine meets it: a server certificate from the
//! server's own CA; the CLI trusts it through that CA (`--server-ca`, `TRESOR_CA`) or through a
//! fingerprint pinned at the first `tresor login` (shown, compared, confirmed), refuses a wrong
//! CA, a wrong pin and a fingerprint that does not match, sends no password before the server is
//! trusted, and speaks plain HTTP only to a loopback address; `TRESOR_INSECURE` works and says it
//! is for tests. A server refuses plain HTTP on an address other than loopback. With `-o json`,
//! errors are JSON too, with the server's code.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{free_port, Dev, TRESOR};

/// Runs the CLI against `server` with only the environment given (no token, CA or pin from the
/// test's own environment); `config` is its configuration folder.
fn cli(server: &str, config: &Path, env: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let mut c = Command::new(TRESOR);
    c.args(args)
        .env("TRESOR_SERVER", server)
        .env("TRESOR_CONFIG_DIR", config)
        .env_remove("TRESOR_TOKEN")
        .env_remove("TRESOR_CA")
        .env_remove("TRESOR_INSECURE")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_trusts_the_api_by_its_ca_or_a_pinned_fingerprint_and_nothing_else() {
    let dev = Dev::start(1);
    let root = dev.dir.path();
    let server = dev.url();
    let pw = root.join("alice.pw");
    std::fs::write(&pw, "alice-long-password\n").unwrap();
    dev.ok(&[
        "user",
        "add",
        "alice",
        "--password-file",
        &pw.display().to_string(),
        "--role",
        "Administrator",
    ]);
    let fingerprint = {
        let out = Command::new(TRESOR)
            .args(["server", "fingerprint", "--config"])
            .arg(root.join("server/server.toml"))
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(fingerprint.len(), 95, "{fingerprint}");
    let config = root.join("client-config");
    let pw_arg = pw.display().to_string();
    let token = dev.token.as_str();

    // Nothing vouches for the server yet: refused, with the fingerprint and the way forward.
    let (ok, _, err) = cli(
        &server,
        &config,
        &[("TRESOR_TOKEN", token)],
        &["vm", "list"],
    );
    assert!(!ok, "an unknown server's certificate was trusted");
    assert!(
        err.contains("not trusted") && err.contains(&fingerprint) && err.contains("tresor login"),
        "{err}"
    );
    // `tresor login` as alice, without a terminal, with these arguments beside.
    let login = |extra: &[&str]| {
        let mut args = vec!["login", "--user", "alice", "--password-file", &pw_arg];
        args.extend_from_slice(extra);
        cli(&server, &config, &[], &args)
    };
    // Without --fingerprint: refused before any password is sent.
    let (ok, _, err) = login(&[]);
    assert!(
        !ok && err.contains(&fingerprint) && err.contains("--fingerprint"),
        "{err}"
    );
    // A fingerprint that is not the server's: refused, nothing stored.
    let wrong = "AB:".repeat(31) + "AB";
    let (ok, _, err) = login(&["--fingerprint", &wrong]);
    assert!(!ok && err.contains("nothing was trusted"), "{err}");
    assert!(!config.join("known_servers.json").exists());
    assert!(!config.join("credentials.json").exists());

    // The right one: pinned, logged in, and the pin is all the CLI needs from then on.
    let (ok, _, err) = login(&["--fingerprint", &fingerprint]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&server, &config, &[], &["host", "list"]);
    assert!(ok && out.contains("host-1"), "{err}");

    // A pin that no longer matches (the certificate changed, or another server answers): refused.
    std::fs::write(
        config.join("known_servers.json"),
        serde_json::json!({ server.clone(): "ab".repeat(32) }).to_string(),
    )
    .unwrap();
    let (ok, _, err) = cli(&server, &config, &[], &["host", "list"]);
    assert!(!ok && err.contains("not trusted"), "{err}");

    // The server's CA vouches for it; another CA does not.
    let fresh = root.join("fresh-config");
    let ca = dev.ca().display().to_string();
    let (ok, _, err) = cli(
        &server,
        &fresh,
        &[("TRESOR_TOKEN", token), ("TRESOR_CA", &ca)],
        &["host", "list"],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &server,
        &fresh,
        &[("TRESOR_TOKEN", token)],
        &["host", "list", "--server-ca", &ca],
    );
    assert!(ok, "{err}");
    let other_ca = root.join("kms/tls/ca.pem").display().to_string();
    let (ok, _, err) = cli(
        &server,
        &fresh,
        &[("TRESOR_TOKEN", token), ("TRESOR_CA", &other_ca)],
        &["host", "list"],
    );
    assert!(!ok && err.contains("not trusted"), "{err}");

    // TRESOR_INSECURE: no check, and it says so.
    let (ok, _, err) = cli(
        &server,
        &fresh,
        &[("TRESOR_TOKEN", token), ("TRESOR_INSECURE", "1")],
        &["host", "list"],
    );
    assert!(ok && err.contains("for tests only"), "{err}");

    // Plain HTTP: not to another machine, and this server does not speak it.
    let (ok, _, err) = cli(
        "http://192.0.2.1:8400",
        &fresh,
        &[("TRESOR_TOKEN", token)],
        &["host", "list"],
    );
    assert!(!ok && err.contains("loopback"), "{err}");
    let (ok, _, _) = cli(
        &format!("http://127.0.0.1:{}", dev.port),
        &fresh,
        &[("TRESOR_TOKEN", token)],
        &["host", "list"],
    );
    assert!(!ok, "the HTTPS API answered plain HTTP");

    // With -o json, a refusal is one JSON line in the API's error shape, with its code, and an
    // action's outcome is the server's answer.
    let (ok, _, err) = dev.cli(&["vm", "show", "nosuch", "-o", "json"]);
    assert!(!ok);
    let e: serde_json::Value = serde_json::from_str(err.trim()).expect("a JSON error line");
    assert_eq!(e["error"]["code"], "notFound", "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("nosuch"));
    // A provider that does not exist is not a provider's failure: 404, and nothing is made.
    dev.create_vm("plain9", false);
    let (ok, _, err) = dev.cli(&[
        "vm",
        "encrypt",
        "plain9",
        "--provider",
        "nosuch",
        "-o",
        "json",
    ]);
    assert!(!ok);
    let e: serde_json::Value = serde_json::from_str(err.trim()).expect("a JSON error line");
    assert_eq!(e["error"]["code"], "notFound", "{e}");
    assert_eq!(dev.vm("plain9")["cryptoState"], "unencrypted");
    let (ok, out, err) = dev.cli(&["host", "reboot", "host-1", "-o", "json"]);
    assert!(ok, "{err}");
    let _: serde_json::Value = serde_json::from_str(&out).expect("the answer as JSON");
    let (ok, _, err) = cli(
        &format!("https://127.0.0.1:{}", free_port()),
        &fresh,
        &[("TRESOR_TOKEN", token), ("TRESOR_CA", &ca)],
        &["host", "list", "-o", "json"],
    );
    assert!(!ok);
    let e: serde_json::Value = serde_json::from_str(err.trim()).expect("a JSON error line");
    assert!(e["error"]["code"].is_null(), "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Cannot reach"),
        "{e}"
    );
}

#[test]
fn a_server_speaks_plain_http_only_on_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("server");
    let (api, agents) = (free_port(), free_port());
    let out = Command::new(TRESOR)
        .args(["server", "init", "--data"])
        .arg(&dir)
        .args(["--api-listen", &format!("0.0.0.0:{api}")])
        .args(["--agent-listen", &format!("127.0.0.1:{agents}")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let toml = dir.join("server.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("{text}\napi_plain_http = true\n")).unwrap();
    let out = Command::new(TRESOR)
        .args(["server", "--config"])
        .arg(&toml)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("api_plain_http") && err.contains("not a loopback address"),
        "{err}"
    );
}
