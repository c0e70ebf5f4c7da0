//! A VM's CPUs, memory and networks are the operator's choice: `vm create --cpus N --memory
//! SIZE --network SPEC` reaches the QEMU the agent starts, and shapes a host could not run are
//! refused before anything is made.

mod common;

use common::{pid_of, Dev};

#[test]
fn cpus_and_memory_reach_qemu_and_impossible_ones_are_refused() {
    let dev = Dev::start(1);
    dev.ok(&[
        "vm", "create", "wide", "--host", "host-1", "--disk", "4M", "--cpus", "2", "--memory",
        "320M",
    ]);
    dev.ok(&["vm", "power-on", "wide"]);
    let pid = pid_of(&["qemu-system", "guest=wide"]);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let after = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(after("-smp"), "2", "{args:?}");
    assert_eq!(after("-m"), "320", "{args:?}");
    dev.ok(&["vm", "power-off", "wide"]);

    for (flags, says) in [
        (&["--cpus", "0"][..], "virtual CPUs"),
        (&["--cpus", "4096"][..], "virtual CPUs"),
        (&["--memory", "1M"][..], "MiB of memory"),
        (&["--network", "wifi"][..], "is not a network"),
        (&["--network", "bridge:../../etc"][..], "is not a network"),
        (&["--network", "bridge:br0'/><x"][..], "is not a network"),
        (
            &[
                "--network",
                "user",
                "--network",
                "user",
                "--network",
                "user",
                "--network",
                "user",
                "--network",
                "user",
            ][..],
            "at most 4 network interfaces",
        ),
    ] {
        let mut args = vec!["vm", "create", "odd", "--host", "host-1", "--disk", "4M"];
        args.extend_from_slice(flags);
        let (ok, _, err) = dev.cli(&args);
        assert!(!ok && err.contains(says), "{flags:?}: {err}");
    }
    let vms = dev.ok(&["vm", "list", "-o", "json"]);
    assert!(!vms.contains("\"odd\""), "{vms}");

    // A libvirt network on a host whose agent runs QEMU itself: made, and refused at power-on
    // with what to do.
    dev.ok(&[
        "vm",
        "create",
        "lv",
        "--host",
        "host-1",
        "--disk",
        "4M",
        "--network",
        "network:default",
    ]);
    let (ok, _, err) = dev.cli(&["vm", "power-on", "lv"]);
    assert!(!ok && err.contains("runtime = \"libvirt\""), "{err}");
    // A user network reaches QEMU as a virtio NIC with the VM's own MAC address.
    dev.ok(&[
        "vm",
        "create",
        "net1",
        "--host",
        "host-1",
        "--disk",
        "4M",
        "--network",
        "user",
    ]);
    dev.ok(&["vm", "power-on", "net1"]);
    let pid = pid_of(&["qemu-system", "guest=net1"]);
    let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .replace('\0', " ");
    assert!(cmdline.contains("user,id=net0"), "{cmdline}");
    assert!(
        cmdline.contains("virtio-net-pci,netdev=net0,bus=nrp0,mac=52:54:00:"),
        "{cmdline}"
    );
    dev.ok(&["vm", "power-off", "net1"]);
    // Adopting needs a host whose agent runs libvirt; nothing is registered.
    let (ok, _, err) = dev.cli(&["vm", "adopt", "db1", "--host", "host-1"]);
    assert!(!ok && err.contains("needs runtime = \"libvirt\""), "{err}");
    let (ok, _, _) = dev.cli(&["vm", "show", "db1"]);
    assert!(!ok, "a failed adoption leaves no VM");
}

/// How an encrypted VM's disks are stored is the operator's choice too: `--disk-format luks`
/// makes LUKS1 volumes in raw files (served by the fast data path where the VM runs under KVM),
/// a deep rekey with it moves qcow2 disks there with their data, and a format where no
/// encrypted disk is written is refused before anything happens.
#[test]
fn disk_formats_are_chosen_at_create_and_moved_to_by_a_deep_rekey() {
    let dev = Dev::start(1);
    let (status, body) = dev.http(
        "POST",
        "/api/v1/vms",
        &dev.token,
        r#"{"name": "plainluks", "host": "host-1", "disks": [4194304], "diskFormat": "luks"}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("add --encrypt"), "{body}");
    let vms = dev.ok(&["vm", "list", "-o", "json"]);
    assert!(!vms.contains("plainluks"), "{vms}");

    // Made as raw LUKS; under KVM its disk takes the fast data path.
    dev.ok(&[
        "vm",
        "create",
        "fast",
        "--host",
        "host-1",
        "--disk",
        "8M",
        "--encrypt",
        "--disk-format",
        "luks",
    ]);
    let disk = &dev.vm("fast")["disks"][0];
    assert_eq!(disk["format"], "luks", "{disk}");
    assert!(
        disk["path"].as_str().unwrap().ends_with("disk0.luks"),
        "{disk}"
    );
    assert!(disk.get("dataPath").is_none(), "not running: {disk}");
    dev.ok(&["vm", "power-on", "fast"]);
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let disk = &dev.vm("fast")["disks"][0];
    assert_eq!(
        disk["dataPath"],
        if kvm { "fast" } else { "qemu" },
        "{disk}"
    );
    dev.ok(&["vm", "power-off", "fast"]);

    // A qcow2 VM with data on its disk moves to raw LUKS with a deep rekey.
    dev.ok(&[
        "vm",
        "create",
        "moves",
        "--host",
        "host-1",
        "--disk",
        "8M",
        "--encrypt",
    ]);
    assert_eq!(dev.vm("moves")["disks"][0]["format"], "qcow2");
    dev.ok(&["vm", "power-on", "moves"]);
    let wrote = dev.guest_io("moves", "vd0", "write -P 0x3c 1M 64k");
    assert!(wrote.contains("wrote 65536/65536"), "{wrote}");
    dev.ok(&["vm", "power-off", "moves"]);
    let (status, body) = dev.http(
        "POST",
        "/api/v1/vms/moves/rekey",
        &dev.token,
        r#"{"diskFormat": "luks"}"#,
    );
    assert_eq!(status, 400, "a shallow rekey writes no disk: {body}");
    dev.ok(&["vm", "rekey", "moves", "--deep", "--disk-format", "luks"]);
    let disk = &dev.vm("moves")["disks"][0];
    assert_eq!(disk["format"], "luks", "{disk}");
    let path = disk["path"].as_str().unwrap().to_owned();
    assert!(path.ends_with(".luks"), "{path}");
    let head = std::fs::read(&path).unwrap();
    assert_eq!(&head[..6], b"LUKS\xba\xbe");
    // Its data came along: decrypted (out of the raw LUKS volume into a plain qcow2 disk that
    // QEMU's monitor can read on any accelerator), the pattern is there.
    dev.ok(&["vm", "decrypt", "moves"]);
    assert_eq!(dev.vm("moves")["disks"][0]["format"], "qcow2");
    dev.ok(&["vm", "power-on", "moves"]);
    let read = dev.guest_io("moves", "vd0", "read -P 0x3c 1M 64k");
    assert!(
        read.contains("read 65536/65536") && !read.contains("Pattern verification failed"),
        "{read}"
    );
    dev.ok(&["vm", "power-off", "moves"]);
}
