//! The procedure's case 4 with real processes: the server is lost with its database while the
//! provider and the host live on. A new, empty server is set up; it trusts the provider under the
//! same name at another address (a proxy), with a client certificate the provider's administrator
//! signs from the new server's CSR; the host re-enrols and restarts; one command registers every
//! VM found on the host, the new server fetches the keys by id, and the VM runs with its data.

mod common;

use common::{find_file, pid_of, runtime_args, stop, wait_for, Dev, Proxy};

#[test]
fn a_new_server_adopts_the_host_and_unlocks_its_vms() {
    a_new_server_adopts_the_host_and_unlocks_its_vms_under("qemu");
}

#[test]
fn a_new_server_adopts_the_host_and_unlocks_its_vms_under_libvirt() {
    a_new_server_adopts_the_host_and_unlocks_its_vms_under("libvirt");
}

fn a_new_server_adopts_the_host_and_unlocks_its_vms_under(runtime: &str) {
    let dev = Dev::start_with(1, &runtime_args(runtime, &["web01", "web02", "plain01"]));
    dev.create_vm("web01", true);
    dev.create_vm("plain01", false);
    dev.ok(&["vm", "power-on", "web01"]);
    let out = dev.guest_io("web01", "vd0", "write -P 0x77 0 32k");
    assert!(out.contains("wrote 32768/32768 bytes"), "{out}");
    dev.ok(&["vm", "power-off", "web01"]);
    let key = dev
        .ok(&["vm", "get", "web01", "config.keyId.keyId"])
        .trim()
        .to_owned();
    let providers: serde_json::Value =
        serde_json::from_str(&dev.ok(&["provider", "list", "-o", "json"])).unwrap();
    let kms_endpoint = providers[0]["endpoints"][0].as_str().unwrap().to_owned();
    let proxy = Proxy::start(&kms_endpoint);

    // The server and its database are lost; the host restarts meanwhile (its keys are gone).
    let root = dev.dir.path();
    let old_config = root.join("server/server.toml").display().to_string();
    stop(&pid_of(&["server --config", &old_config]));
    std::fs::remove_dir_all(root.join("server")).unwrap();
    let agent_toml = find_file(root, "host-1/agent.toml").expect("host-1's configuration");
    stop(&pid_of(&[
        "agent --config",
        &agent_toml.display().to_string(),
    ]));

    // A new, empty server.
    let server = common::NewServer::start(&root.join("new-server"));
    let cli = |args: &[&str]| server.cli(args);
    assert_eq!(cli(&["vm", "list", "-o", "json"]).trim(), "[]");

    // Trust with the provider: the same name, another address, a certificate from a CSR.
    let ca = root.join("kms/tls/ca.pem").display().to_string();
    let csr = root.join("new-server.csr").display().to_string();
    let signed = root.join("new-server.pem").display().to_string();
    cli(&[
        "provider",
        "add",
        "tresor-kms",
        "--kmip",
        &proxy.address(),
        "--ca",
        &ca,
        "--csr",
        &csr,
    ]);
    dev.kms_admin(&[
        "sign-csr",
        "--name",
        "tresor-server",
        "--csr",
        &csr,
        "--out",
        &signed,
    ]);
    cli(&[
        "provider",
        "certificate",
        "tresor-kms",
        "--client-cert",
        &signed,
    ]);
    let st: serde_json::Value =
        serde_json::from_str(&cli(&["provider", "status", "tresor-kms", "-o", "json"])).unwrap();
    assert_eq!(st["health"], "ok", "{st}");
    assert_eq!(st["activeEndpoint"], proxy.address().as_str());

    // The host re-enrols with the new server and starts again.
    let _agent = server.rejoin("host-1", &agent_toml);

    // The new server learns the host's VMs as discovered: shown, not registered, not unlocked.
    wait_for("the host's VMs show as discovered", || {
        let out = cli(&["vm", "list", "--discovered", "-o", "json"]);
        out.contains("\"web01\"") && out.contains("\"plain01\"")
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(cli(&["vm", "list", "-o", "json"]).trim(), "[]");
    let pushed = cli(&["event", "list", "--type", "key.pushed", "-o", "json"]);
    assert_eq!(
        pushed.trim(),
        "[]",
        "no key moves before an operator registers"
    );
    let alarms = cli(&["alarm", "list", "-o", "json"]);
    assert!(alarms.contains("vm.discovered"), "{alarms}");

    // One command registers every VM found on the host; the keys are fetched by id.
    let out = cli(&["vm", "register", "--all", "--host", "host-1", "-o", "json"]);
    let registered: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut names: Vec<&str> = registered["registered"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["plain01", "web01"], "{out}");
    wait_for("web01 is unlocked on the new server", || {
        let v: serde_json::Value =
            serde_json::from_str(&cli(&["vm", "show", "web01", "-o", "json"])).unwrap();
        v["cryptoState"] == "unlocked"
    });
    assert_eq!(
        cli(&["vm", "get", "web01", "config.keyId.keyId"]).trim(),
        key
    );
    // Registering ended the discovery and its alarms; the push names who registered.
    assert_eq!(
        cli(&["vm", "list", "--discovered", "-o", "json"]).trim(),
        "[]"
    );
    let alarms: serde_json::Value =
        serde_json::from_str(&cli(&["alarm", "list", "-o", "json"])).unwrap();
    assert!(
        !alarms
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "vm.discovered" && a["cleared"].is_null()),
        "{alarms}"
    );
    let pushed: serde_json::Value = serde_json::from_str(&cli(&[
        "event",
        "list",
        "--type",
        "key.pushed",
        "-o",
        "json",
    ]))
    .unwrap();
    assert!(
        pushed
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["user"] == "admin"),
        "{pushed}"
    );
    assert_eq!(
        cli(&["vm", "get", "plain01", "cryptoState"]).trim(),
        "unencrypted"
    );
    let on = cli(&["vm", "power-on", "web01"]);
    let out = dev.guest_io("web01", "vd0", "read -P 0x77 0 32k");
    assert!(
        out.contains("read 32768/32768 bytes") && !out.contains("failed"),
        "{out} (power-on: {on})"
    );
}
