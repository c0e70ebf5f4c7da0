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
