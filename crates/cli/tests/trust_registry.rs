//! The trust model with real processes: the server's registry decides where keys go. A host that
//! reports a VM the registry does not hold (a copy of another VM's files, another VM's id, a VM
//! of another host) gets no key, takes over no record, and the VM shows as discovered with an
//! alarm naming the host. A registration that is refused for a missing privilege leaves nothing
//! behind: the host never registers the VM and no key moves.

mod common;

use common::{pid_of, stop, wait_for, Dev, Proc, TRESOR};

/// Host `name`'s agent configuration in `tresor dev`'s folder.
fn agent_toml(dev: &Dev, name: &str) -> std::path::PathBuf {
    dev.dir.path().join(name).join("agent.toml")
}

/// The `key.pushed` events that name `host`.
fn pushes_to(dev: &Dev, host: &str) -> Vec<serde_json::Value> {
    let events: serde_json::Value =
        serde_json::from_str(&dev.ok(&["event", "list", "--type", "key.pushed", "-o", "json"]))
            .unwrap();
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["host"] == host)
        .cloned()
        .collect()
}

/// Copies the VM folder `from` to `to`, naming the copy `name` in its `vm.json` (and, when
/// given, giving it the id `id`).
fn copy_vm(from: &std::path::Path, to: &std::path::Path, name: &str, id: Option<&str>) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    let file = to.join("vm.json");
    let mut vm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    vm["name"] = name.into();
    if let Some(id) = id {
        vm["id"] = id.into();
    }
    std::fs::write(&file, serde_json::to_vec_pretty(&vm).unwrap()).unwrap();
}

/// Restarts host `host`'s agent with `vms` (name, folder) written into its list of registered
/// VMs, as someone with root on that host could.
fn restart_agent_with(dev: &Dev, host: &str, vms: &[(&str, &std::path::Path)]) -> Proc {
    let toml = agent_toml(dev, host);
    stop(&pid_of(&["agent", "--config", &toml.display().to_string()]));
    start_agent_with(dev, host, vms)
}

/// Starts host `host`'s agent (stopped before) with `vms` added to its registered VMs.
fn start_agent_with(dev: &Dev, host: &str, vms: &[(&str, &std::path::Path)]) -> Proc {
    let toml = agent_toml(dev, host);
    let toml_s = toml.display().to_string();
    let registry = toml.parent().unwrap().join("state/registered.json");
    let mut list: serde_json::Map<String, serde_json::Value> = std::fs::read(&registry)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for (name, dir) in vms {
        list.insert(name.to_string(), dir.display().to_string().into());
    }
    std::fs::write(&registry, serde_json::to_vec_pretty(&list).unwrap()).unwrap();
    let agent = Proc(
        std::process::Command::new(TRESOR)
            .args(["agent", "--config", &toml_s])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    agent
}

#[test]
fn a_host_that_reports_another_vms_files_gets_no_key_and_takes_over_nothing() {
    let dev = Dev::start(2);
    dev.create_vm("web01", true);
    let web01 = dev.vm("web01");
    let key = web01["config"]["keyId"]["keyId"]
        .as_str()
        .unwrap()
        .to_owned();
    let source = std::path::PathBuf::from(web01["path"].as_str().unwrap());
    let datastore2 = agent_toml(&dev, "host-2")
        .parent()
        .unwrap()
        .join("datastore");

    // host-2 reports a copy of web01 under another name, and one under web01's own name.
    let copy = datastore2.join("evil");
    copy_vm(&source, &copy, "evil", None);
    let same = datastore2.join("web01");
    copy_vm(&source, &same, "web01", None);
    let _agent = restart_agent_with(&dev, "host-2", &[("evil", &copy), ("web01", &same)]);

    // The agent is back within a second or two; give the engine time to push (it would
    // under the automatic policy), then look.
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert!(
        pushes_to(&dev, "host-2").is_empty(),
        "a key went to host-2: {:?}",
        pushes_to(&dev, "host-2")
    );
    let hosts: serde_json::Value =
        serde_json::from_str(&dev.ok(&["host", "list", "-o", "json"])).unwrap();
    let host2 = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "host-2")
        .unwrap();
    assert_eq!(host2["keysHeld"], 0, "{host2}");

    // web01 is still web01, on host-1, and no record of host-2's copies took its place.
    let shown = dev.vm("web01");
    assert_eq!(shown["host"], "host-1", "{shown}");
    assert_eq!(shown["id"], web01["id"], "{shown}");
    assert_eq!(shown["config"]["keyId"]["keyId"], key.as_str());
    let (ok, _, err) = dev.cli(&["vm", "show", "evil"]);
    assert!(!ok, "a discovered VM is not registered: {err}");

    // Both are shown as discovered on host-2, with an alarm and an event naming the host.
    wait_for("host-2's VMs show as discovered", || {
        let (ok, out, _) = dev.cli(&["vm", "list", "--discovered", "-o", "json"]);
        ok && out.contains("\"evil\"") && out.matches("host-2").count() >= 2
    });
    let alarms = dev.ok(&["alarm", "list", "-o", "json"]);
    assert!(
        alarms.contains("vm.discovered") && alarms.contains("host-2"),
        "{alarms}"
    );
    let events = dev.ok(&["event", "list", "--type", "vm.discovered", "-o", "json"]);
    assert!(
        events.contains("host-2") && events.contains("evil"),
        "{events}"
    );

    // Registering the copy is refused: its id belongs to web01.
    let (ok, _, err) = dev.cli(&[
        "vm",
        "register",
        &copy.display().to_string(),
        "--host",
        "host-2",
    ]);
    assert!(!ok, "a second VM with web01's id was registered");
    assert!(err.contains("web01"), "{err}");
    assert!(pushes_to(&dev, "host-2").is_empty());

    // host-2 drops the copies: they are no longer discovered.
    let _agent = {
        drop(_agent);
        std::fs::remove_dir_all(&copy).unwrap();
        std::fs::remove_dir_all(&same).unwrap();
        let registry = datastore2.parent().unwrap().join("state/registered.json");
        std::fs::write(&registry, "{}").unwrap();
        start_agent_with(&dev, "host-2", &[])
    };
    wait_for("the copies are gone from the discovered list", || {
        let out = dev.ok(&["vm", "list", "--discovered", "-o", "json"]);
        !out.contains("host-2")
    });
}

#[test]
fn a_refused_registration_has_no_side_effect_on_the_host() {
    let dev = Dev::start(1);
    let password = dev.dir.path().join("operator.password");
    std::fs::write(&password, "operators-long-password\n").unwrap();
    dev.ok(&[
        "user",
        "add",
        "operator",
        "--password-file",
        &password.display().to_string(),
        "--role",
        "NoCryptoAdmin",
    ]);
    let config = dev.dir.path().join("operator-config");
    let op = |stdin: &str, args: &[&str]| dev.cli_logged_in(&config, stdin, args);
    let (ok, _, err) = op(
        "operators-long-password\n",
        &["login", "--user", "operator"],
    );
    assert!(ok, "{err}");

    dev.create_vm("web01", true);
    // Another VM whose power-off keeps the host busy (it waits for the guest's shutdown).
    dev.create_vm("busy", false);
    let path = dev.ok(&["vm", "get", "web01", "path"]).trim().to_owned();
    dev.ok(&["vm", "unregister", "web01"]);
    dev.ok(&["host", "reboot", "host-1"]);
    let pushed_before = pushes_to(&dev, "host-1").len();

    for attempt in 0..2 {
        dev.ok(&["vm", "power-on", "busy"]);
        // The register and a slow operation on another VM, at once.
        let slow = std::thread::scope(|s| {
            let slow = s.spawn(|| dev.cli(&["vm", "power-off", "busy"]));
            let (ok, _, err) = op("", &["vm", "register", &path, "--host", "host-1"]);
            assert!(!ok, "attempt {attempt}: NoCryptoAdmin registered web01");
            assert!(err.contains("Cryptographer.RegisterVM"), "{err}");
            slow.join().unwrap()
        });
        assert!(slow.0, "{}", slow.2);
        // Longer than the engine needs to push under the automatic policy.
        std::thread::sleep(std::time::Duration::from_secs(2));
        assert_eq!(
            pushes_to(&dev, "host-1").len(),
            pushed_before,
            "attempt {attempt}: a key went to the host after a refused register"
        );
        let (ok, _, _) = dev.cli(&["vm", "show", "web01"]);
        assert!(!ok, "attempt {attempt}: the refused VM is registered");
    }
    // The host never registered it either.
    let registry = agent_toml(&dev, "host-1")
        .parent()
        .unwrap()
        .join("state/registered.json");
    let registered = std::fs::read_to_string(registry).unwrap();
    assert!(!registered.contains("web01"), "{registered}");

    // An administrator registers it; the key push names who caused it.
    dev.ok(&["vm", "register", &path, "--host", "host-1"]);
    wait_for("web01 is unlocked", || {
        dev.vm("web01")["cryptoState"] == "unlocked"
    });
    let pushes = pushes_to(&dev, "host-1");
    let last = pushes.last().unwrap();
    assert_eq!(last["user"], "admin", "{last}");
}
