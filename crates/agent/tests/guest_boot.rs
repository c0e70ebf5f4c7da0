//! A real guest on an encrypted disk: a Debian kernel and a busybox initramfs
//! (`scripts/guest/build`), booted directly from the VM's folder under TCG (the nested KVM of
//! the test machines does not boot a stock kernel). The guest writes a marker to its disk, which
//! QEMU opens through LUKS with the secret the agent hands over QMP; after the host restarts and
//! the keys return, the guest boots again and reads the marker back; the image holds only
//! ciphertext.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tresor_agent::disk::QemuTools;
use tresor_agent::host::{Host, HostConfig};
use tresor_agent::qemu::QemuConfig;
use tresor_core::ids::KeyRef;
use tresor_core::protocol::{Command, DiskSpec, KeyMaterial, Reply, SecretBytes, VmSpec};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The test guest: the one `scripts/setup-test-deps` built, or one built now.
fn guest(tmp: &Path) -> PathBuf {
    let built = workspace_root().join(".cache/guest/out");
    if built.join("vmlinuz").is_file() && built.join("initrd.img").is_file() {
        return built;
    }
    let out = tmp.join("guest");
    let status = std::process::Command::new(workspace_root().join("scripts/guest/build"))
        .arg(&out)
        .status()
        .expect("scripts/guest/build");
    assert!(
        status.success(),
        "scripts/guest/build failed; run scripts/setup-test-deps"
    );
    out
}

fn key(id: &str, byte: u8) -> KeyMaterial {
    KeyMaterial {
        key: KeyRef::new("kms", id),
        material: SecretBytes::new(vec![byte; 32]),
    }
}

fn ok(reply: Reply) -> Reply {
    assert!(!matches!(reply, Reply::Failed { .. }), "{reply:?}");
    reply
}

/// Waits until the guest's serial console holds a line starting with `prefix`; that line.
fn serial_line(log: &Path, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with(prefix)) {
            return line.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the guest never said {prefix:?}; its console:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the guest has powered itself off (its QEMU is gone).
fn powered_off(h: &mut Host, vm: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.report(vm).unwrap().power_state != tresor_core::protocol::PowerState::PoweredOff {
        assert!(Instant::now() < deadline, "the guest did not power off");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_guest_keeps_its_data_on_an_encrypted_disk_across_a_host_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let guest = guest(tmp.path());
    let mut h = Host::open(HostConfig {
        name: "host-1".into(),
        datastore: tmp.path().join("datastore"),
        state_dir: tmp.path().join("state"),
        key_capacity: 64,
        qemu: QemuConfig {
            prefer_kvm: false,
            shutdown_timeout: Duration::from_millis(300),
            ..QemuConfig::default()
        },
        tools: QemuTools::default(),
    })
    .unwrap();
    let host_key = key("host-key", 9);
    let vm_key = key("vm-kek", 1);
    ok(h.handle(Command::EnableEncryption {
        host_key: host_key.clone(),
    }));
    ok(h.handle(Command::PushKeys {
        keys: vec![vm_key.clone()],
    }));
    let report = match ok(h.handle(Command::CreateVm {
        spec: VmSpec {
            id: None,
            name: "guest01".into(),
            memory_mib: 256,
            vcpus: 1,
            disks: vec![DiskSpec {
                size: 16 << 20,
                own_key: None,
            }],
            key: Some(vm_key.key.clone()),
        },
    })) {
        Reply::Vm { vm } => vm,
        other => panic!("{other:?}"),
    };
    let dir = PathBuf::from(&report.path);
    let boot = dir.join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::copy(guest.join("vmlinuz"), boot.join("vmlinuz")).unwrap();
    std::fs::copy(guest.join("initrd.img"), boot.join("initrd.img")).unwrap();
    std::fs::write(boot.join("cmdline"), "console=ttyS0 quiet panic=-1").unwrap();
    let log = tmp.path().join("state/run/guest01/serial.log");

    // First boot: the guest writes its marker through QEMU's LUKS driver.
    ok(h.handle(Command::PowerOn {
        vm: "guest01".into(),
    }));
    serial_line(&log, "tresor-guest: up");
    let wrote = serial_line(&log, "tresor-guest: wrote");
    let marker = wrote
        .strip_prefix("tresor-guest: wrote ")
        .unwrap_or_else(|| panic!("the guest did not write its marker: {wrote}"))
        .to_owned();
    powered_off(&mut h, "guest01");

    // The image holds ciphertext only.
    let mut images = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.extension().is_some_and(|e| e == "qcow2" || e == "img") {
            images += 1;
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "{} holds the guest's marker in the clear",
                path.display()
            );
        }
    }
    assert_eq!(images, 1, "one disk image in {}", dir.display());

    // The host restarts: its keys are gone, and the VM cannot start.
    h.reboot();
    let refused = h.handle(Command::PowerOn {
        vm: "guest01".into(),
    });
    assert!(matches!(refused, Reply::Failed { .. }), "{refused:?}");

    // The keys return; the guest boots again and finds its marker.
    ok(h.handle(Command::EnableEncryption { host_key }));
    ok(h.handle(Command::PushKeys { keys: vec![vm_key] }));
    ok(h.handle(Command::PowerOn {
        vm: "guest01".into(),
    }));
    let found = serial_line(&log, "tresor-guest: found");
    assert_eq!(found, format!("tresor-guest: found {marker}"));
    powered_off(&mut h, "guest01");
}
