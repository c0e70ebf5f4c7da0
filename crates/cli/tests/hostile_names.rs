//! Names never become paths, options or rows: with real processes, VM, user, role and provider
//! names that would climb out of the datastore, reach QEMU's option parser or split a table are
//! refused with a clear error and change nothing; a VM folder outside the datastore, or one whose
//! `vm.json` names such a VM, is not registered.

mod common;

use common::Dev;

#[test]
fn hostile_names_are_refused_and_change_nothing() {
    let dev = Dev::start(1);
    let root = dev.dir.path();
    // Where the names would have led, from the host's datastore (`host-1/datastore`).
    let escaped = [
        root.parent().unwrap().join("x"),
        std::path::PathBuf::from("/tmp/absolute"),
    ];
    for name in [
        "../../../x",
        "/tmp/absolute",
        "a,b",
        "two\nlines",
        "..",
        "-rf",
        "tab\there",
    ] {
        let body = serde_json::json!({"name": name, "host": "host-1", "disks": [4194304]});
        let (status, v) = dev.http("POST", "/api/v1/vms", &dev.token, &body.to_string());
        assert_eq!(status, 400, "{name:?}: {v}");
        assert_eq!(v["error"]["code"], "badName", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("The VM name") && !message.contains('\n'),
            "{message}"
        );
        for (path, body) in [
            (
                "/api/v1/users",
                serde_json::json!({"name": name, "password": "a-long-enough-password"}),
            ),
            (
                "/api/v1/roles",
                serde_json::json!({"name": name, "privileges": ["System.View"]}),
            ),
            (
                "/api/v1/providers",
                serde_json::json!({"name": name, "endpoints": ["127.0.0.1:1"], "caPem": "x", "selfSigned": true}),
            ),
        ] {
            let (status, v) = dev.http("POST", path, &dev.token, &body.to_string());
            assert_eq!(status, 400, "{path} {name:?}: {v}");
            assert_eq!(v["error"]["code"], "badName", "{path}: {v}");
        }
    }
    for p in &escaped {
        assert!(!p.exists(), "{} was created", p.display());
    }
    let vms = dev.ok(&["vm", "list", "-o", "json"]);
    assert_eq!(vms.trim(), "[]");

    // Shapes that would fill the host: refused before anything is made.
    let many: Vec<u64> = vec![4096; 400_000];
    for (body, code) in [
        (
            serde_json::json!({"name": "big", "host": "host-1", "disks": many}),
            "badShape",
        ),
        (
            serde_json::json!({"name": "big", "host": "host-1", "disks": [0]}),
            "badShape",
        ),
        (
            serde_json::json!({"name": "big", "host": "host-1", "disks": [1u64 << 50]}),
            "badShape",
        ),
        (
            serde_json::json!({"name": "big", "host": "host-1", "memoryMib": 0}),
            "badShape",
        ),
        (
            serde_json::json!({"name": "big", "host": "host-1", "memoryMib": 4_000_000_000u32}),
            "badShape",
        ),
        // Within the limits, but more than the datastore holds: the host refuses.
        (
            serde_json::json!({"name": "big", "host": "host-1", "disks": [60u64 << 40]}),
            "hostRefused",
        ),
    ] {
        let (status, v) = dev.http("POST", "/api/v1/vms", &dev.token, &body.to_string());
        assert!(status == 400 || status == 422, "{status}: {v}");
        assert_eq!(v["error"]["code"], code, "{v}");
    }
    assert!(!dev.dir.path().join("host-1/datastore/big").exists());

    // A host that does not exist is not found (not "unavailable").
    for path in [
        "/api/v1/hosts/host-9/reboot",
        "/api/v1/hosts/host-9/enable-encryption",
    ] {
        let (status, v) = dev.http("POST", path, &dev.token, "");
        assert_eq!(status, 404, "{path}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("host-9"),
            "{v}"
        );
    }

    // A VM folder whose vm.json names a VM "../../escape": the host refuses to register it.
    dev.create_vm("plain01", false);
    let path = dev.ok(&["vm", "get", "plain01", "path"]).trim().to_owned();
    dev.ok(&["vm", "unregister", "plain01"]);
    let file = std::path::Path::new(&path).join("vm.json");
    let mut vm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    vm["name"] = "../../escape".into();
    std::fs::write(&file, vm.to_string()).unwrap();
    let (ok, _, err) = dev.cli(&["vm", "register", &path, "--host", "host-1"]);
    assert!(!ok);
    assert!(err.contains("The VM name"), "{err}");

    // A folder outside the datastore is not a VM folder of the host, whatever it holds.
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    vm["name"] = "outside".into();
    std::fs::write(outside.join("vm.json"), vm.to_string()).unwrap();
    for p in [
        outside.display().to_string(),
        format!("{path}/../../outside"),
    ] {
        let (ok, _, err) = dev.cli(&["vm", "register", &p, "--host", "host-1"]);
        assert!(!ok, "{p} was registered");
        assert!(err.contains("not a VM folder in the datastore"), "{err}");
    }
    assert_eq!(dev.ok(&["vm", "list", "-o", "json"]).trim(), "[]");
}
