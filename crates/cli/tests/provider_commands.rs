//! `tresor provider …` against real processes: the provider `tresor dev` registered, a second one
//! added with a CSR that the embedded key server's administrator signs (`tresor kms sign-csr`),
//! its status, a VM encrypted with it, the default marker, and the refusals.

mod common;
use common::Dev;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn providers_are_managed_from_the_command_line() {
    let dev = Dev::start(1);
    let list = json(&dev.ok(&["provider", "list", "-o", "json"]));
    assert_eq!(list[0]["name"], "tresor-kms");
    assert_eq!(list[0]["isDefault"], true);
    let endpoint = list[0]["endpoints"][0].as_str().unwrap().to_owned();
    let st = json(&dev.ok(&["provider", "status", "tresor-kms", "-o", "json"]));
    assert_eq!(st["health"], "ok", "{st}");
    assert_eq!(st["activeEndpoint"], endpoint.as_str());
    let table = dev.ok(&["provider", "status", "tresor-kms"]);
    assert!(
        table.contains("ENDPOINT") && table.contains(&endpoint),
        "{table}"
    );

    // A second provider on the same key server, trusted through a signed CSR.
    let dir = dev.dir.path();
    let ca = dir.join("kms/tls/ca.pem").display().to_string();
    let csr = dir.join("second.csr").display().to_string();
    let out = dev.ok(&[
        "provider", "add", "second", "--kmip", &endpoint, "--ca", &ca, "--csr", &csr,
    ]);
    assert!(out.contains("tresor provider certificate second"), "{out}");
    assert!(std::fs::read_to_string(&csr)
        .unwrap()
        .contains("CERTIFICATE REQUEST"));
    let st = json(&dev.ok(&["provider", "status", "second", "-o", "json"]));
    assert_eq!(st["health"], "awaitingCertificate");
    let signed = dir.join("second.pem").display().to_string();
    dev.kms_admin(&[
        "sign-csr",
        "--name",
        "tresor-server",
        "--csr",
        &csr,
        "--out",
        &signed,
    ]);
    dev.ok(&[
        "provider",
        "certificate",
        "second",
        "--client-cert",
        &signed,
    ]);
    let st = json(&dev.ok(&["provider", "status", "second", "-o", "json"]));
    assert_eq!(st["health"], "ok", "{st}");
    let show = dev.ok(&["provider", "show", "second"]);
    assert!(show.contains("CN=tresor-server"), "{show}");

    // A VM encrypted with it; the provider cannot be removed while it holds the VM's key.
    dev.ok(&[
        "vm",
        "create",
        "db01",
        "--host",
        "host-1",
        "--disk",
        "4M",
        "--encrypt",
        "--provider",
        "second",
    ]);
    assert_eq!(
        dev.ok(&["vm", "get", "db01", "config.keyId.providerId.id"])
            .trim(),
        "second"
    );
    let (ok, _, err) = dev.cli(&["provider", "remove", "second"]);
    assert!(!ok && err.contains("VM db01"), "{err}");

    // The default moves.
    dev.ok(&["provider", "default", "second"]);
    let list = json(&dev.ok(&["provider", "list", "-o", "json"]));
    let defaults: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["isDefault"] == true)
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(defaults, ["second"]);

    // Bad input: one clear line on standard error, nothing added.
    let (ok, _, err) = dev.cli(&["provider", "add", "third", "--kmip", &endpoint, "--ca", &ca]);
    assert!(!ok && err.contains("--self-signed"), "{err}");
    let (ok, _, err) = dev.cli(&[
        "provider",
        "add",
        "third",
        "--kmip",
        &endpoint,
        "--ca",
        "/nonexistent.pem",
        "--self-signed",
    ]);
    assert!(!ok && err.contains("/nonexistent.pem"), "{err}");
    let (ok, _, err) = dev.cli(&["provider", "status", "nope"]);
    assert!(!ok && err.contains("tresor provider list"), "{err}");
    assert_eq!(
        json(&dev.ok(&["provider", "list", "-o", "json"]))
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
