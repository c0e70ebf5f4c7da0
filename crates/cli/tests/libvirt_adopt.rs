//! A libvirt domain that exists before Tresor is brought under it: `tresor vm adopt DOMAIN
//! --host H --encrypt` copies its image into a VM folder, encrypts it under a new key, replaces
//! the domain's definition by Tresor's and removes the plain image; the guest then boots from its
//! now encrypted root and keeps its data. What cannot be adopted is refused before anything
//! changes, and a domain removed behind Tresor's back shows as powered off and is defined again
//! at the next power-on.

use std::process::Command;

mod common;
use common::{console_line, libvirt_up, wait_for, workspace_root, Dev};

fn virsh(args: &[&str]) -> (bool, String) {
    let out = Command::new("virsh")
        .args(["-q", "-c", "qemu:///system"])
        .args(args)
        .output()
        .expect("virsh");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_libvirt_domain_is_adopted_encrypted_and_boots_from_its_encrypted_root() {
    libvirt_up();
    let dev = Dev::start_with(1, &["--runtime", "libvirt", "--accel", "tcg"]);
    let guest = workspace_root().join(".cache/guest/out");
    assert!(
        guest.join("rootfs.img").is_file(),
        "run scripts/setup-test-deps (it builds the test guest)"
    );

    // A domain of the operator's own, outside Tresor, with its image in a folder of its own.
    let images = dev.dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::set_permissions(&images, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for f in ["rootfs.img", "vmlinuz", "initrd.img"] {
        std::fs::copy(guest.join(f), images.join(f)).unwrap();
    }
    let name = format!("adopt-{}", std::process::id());
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='q35'>hvm</type><kernel>{i}/vmlinuz</kernel>\
         <initrd>{i}/initrd.img</initrd><cmdline>console=ttyS0 panic=-1 tresor.root</cmdline></os>\
         <devices><disk type='file' device='disk'><driver name='qemu' type='raw'/>\
         <source file='{i}/rootfs.img'/><target dev='vda' bus='virtio'/></disk>\
         <interface type='user'><model type='virtio'/></interface></devices></domain>",
        i = images.display()
    );
    let xml_file = images.join("domain.xml");
    std::fs::write(&xml_file, xml).unwrap();
    let (ok, out) = virsh(&["define", &xml_file.display().to_string()]);
    assert!(ok, "{out}");

    // What cannot be: a domain that does not exist; a user who may register but not encrypt.
    let (ok, _, err) = dev.cli(&["vm", "adopt", "no-such-domain", "--host", "host-1"]);
    assert!(!ok && err.contains("has no domain no-such-domain"), "{err}");
    let config = dev.operator("NoCryptoAdmin");
    let (ok, _, err) = dev.cli_logged_in(
        &config,
        "",
        &["vm", "adopt", &name, "--host", "host-1", "--encrypt"],
    );
    assert!(!ok && err.contains("Cryptographer.Encrypt"), "{err}");
    assert!(virsh(&["dominfo", &name]).0, "the domain is still there");
    assert!(
        images.join("rootfs.img").is_file(),
        "its image is untouched"
    );

    // The administrator adopts it, encrypted.
    dev.ok(&["vm", "adopt", &name, "--host", "host-1", "--encrypt"]);
    let show = || -> serde_json::Value {
        serde_json::from_str(&dev.cli(&["vm", "show", &name, "-o", "json"]).1).unwrap_or_default()
    };
    let v = show();
    assert_eq!(v["cryptoState"], "unlocked", "{v}");
    assert!(v["config"]["keyId"]["keyId"].is_string(), "{v}");
    let disk = v["disks"][0]["path"].as_str().unwrap().to_owned();
    assert!(
        !images.join("rootfs.img").exists(),
        "the plain image is gone once adopted"
    );
    let stored = std::fs::read(&disk).unwrap();
    let needle = b"tresor-guest: root up";
    assert!(
        !stored.windows(needle.len()).any(|w| w == needle),
        "{disk} holds the guest's files in the clear"
    );

    // It boots from its encrypted root, with its network, and keeps its data.
    dev.ok(&["vm", "power-on", &name]);
    let log = dev
        .dir
        .path()
        .join("host-1/state/run")
        .join(&name)
        .join("serial.log");
    let net = console_line(&log, "tresor-guest: net ");
    assert!(net.ends_with("10.0.2.15"), "{net}");
    let wrote = console_line(&log, "tresor-guest: wrote ");
    let marker = wrote.trim_start_matches("tresor-guest: wrote ").to_owned();
    wait_for("the guest powers off", || {
        show()["powerState"] == "poweredOff"
    });

    // Tresor did not stop it: an event says so.
    wait_for("an event says the VM stopped by itself", || {
        dev.cli(&["event", "list", "--vm", &name, "-o", "json"])
            .1
            .contains("vm.stopped")
    });

    // Removed behind Tresor's back: shown as powered off, and defined again at power-on.
    let (ok, out) = virsh(&["undefine", &name]);
    assert!(ok, "{out}");
    dev.ok(&["vm", "power-on", &name]);
    let found = console_line(&log, "tresor-guest: found ");
    assert_eq!(found, format!("tresor-guest: found {marker}"));
    let (ok, listed) = virsh(&["list", "--all", "--name"]);
    assert!(ok && listed.lines().any(|l| l.trim() == name), "{listed}");
    wait_for("the guest powers off", || {
        show()["powerState"] == "poweredOff"
    });
    dev.ok(&["vm", "delete", &name]);
    let (_, listed) = virsh(&["list", "--all", "--name"]);
    assert!(!listed.lines().any(|l| l.trim() == name), "{listed}");
}
