//! A real guest on an encrypted disk, under each runtime: a Debian kernel and a busybox
//! initramfs (`scripts/guest/build`), booted directly from the VM's folder under TCG (the nested
//! KVM of the test machines does not boot a stock kernel). The guest writes a marker to its disk,
//! which QEMU opens through LUKS (with the QEMU runtime, the agent hands the secret over QMP; with
//! libvirt, as an ephemeral private libvirt secret); after the host restarts and the keys return,
//! the guest boots again and reads the marker back; the image holds only ciphertext. Under
//! libvirt, `virsh list` shows what Tresor runs, no disk passphrase is anywhere in libvirt's
//! folders or domain XML, and a libvirtd restart leaves the VM running and controllable.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::{key, ok};
use tresor_agent::host::{Host, HostConfig};
use tresor_agent::libvirt::LibvirtConfig;
use tresor_agent::runtime::RuntimeKind;
use tresor_agent::vmfile::VmFile;
use tresor_core::protocol::{Command, DiskSpec, Reply, VmSpec};

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
    scenario(tmp.path(), RuntimeKind::Qemu, "guest01");
}

#[test]
fn a_guest_under_libvirt_keeps_its_data_and_libvirt_keeps_no_passphrase() {
    let _one = LIBVIRT.lock().unwrap_or_else(|p| p.into_inner());
    libvirt_up();
    let tmp = tempfile::tempdir().unwrap();
    // libvirt's QEMU user reaches the disks through this folder.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let name = format!("tresor-test-{}", std::process::id());
    scenario(
        tmp.path(),
        RuntimeKind::Libvirt(LibvirtConfig::default()),
        &name,
    );
}

/// One libvirt test at a time: one of them restarts libvirtd.
static LIBVIRT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// libvirtd answering on qemu:///system, started by `scripts/libvirt/start` when it does not.
fn libvirt_up() {
    let status = std::process::Command::new(workspace_root().join("scripts/libvirt/start"))
        .status()
        .expect("scripts/libvirt/start");
    assert!(
        status.success(),
        "libvirt is not running; run scripts/setup-test-deps"
    );
}

fn virsh(args: &[&str]) -> String {
    let out = std::process::Command::new("virsh")
        .args(["-q", "-c", "qemu:///system"])
        .args(args)
        .output()
        .expect("virsh");
    assert!(
        out.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn scenario(tmp: &Path, runtime: RuntimeKind, vm: &str) {
    let libvirt = matches!(runtime, RuntimeKind::Libvirt(_));
    let guest = guest(tmp);
    let mut h = Host::open(HostConfig {
        runtime,
        ..common::config_tcg(tmp)
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
            disk_format: Default::default(),
            id: None,
            name: vm.into(),
            memory_mib: 256,
            vcpus: 1,
            disks: vec![DiskSpec {
                size: 16 << 20,
                own_key: None,
            }],
            key: Some(vm_key.key.clone()),
            networks: Vec::new(),
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
    let log = tmp.join("state/run").join(vm).join("serial.log");

    // First boot: the guest writes its marker through QEMU's LUKS driver.
    ok(h.handle(Command::PowerOn { vm: vm.into() }));
    serial_line(&log, "tresor-guest: up");
    let wrote = serial_line(&log, "tresor-guest: wrote");
    let marker = wrote
        .strip_prefix("tresor-guest: wrote ")
        .unwrap_or_else(|| panic!("the guest did not write its marker: {wrote}"))
        .to_owned();
    powered_off(&mut h, vm);

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
    let refused = h.handle(Command::PowerOn { vm: vm.into() });
    assert!(matches!(refused, Reply::Failed { .. }), "{refused:?}");

    // The keys return; the guest boots again, finds its marker and stays up.
    ok(h.handle(Command::EnableEncryption { host_key }));
    ok(h.handle(Command::PushKeys { keys: vec![vm_key] }));
    std::fs::write(
        boot.join("cmdline"),
        "console=ttyS0 quiet panic=-1 tresor.stay",
    )
    .unwrap();
    ok(h.handle(Command::PowerOn { vm: vm.into() }));
    let found = serial_line(&log, "tresor-guest: found");
    assert_eq!(found, format!("tresor-guest: found {marker}"));
    serial_line(&log, "tresor-guest: staying");
    // The serial console answers: a command typed on it runs in the guest.
    let typed = console_says(
        &mut h,
        vm,
        "echo tresor-$((6*7))-answer\n",
        "tresor-42-answer",
    );
    assert!(typed, "the guest's shell did not answer on its console");
    if libvirt {
        libvirt_checks(&mut h, &dir, vm, &log);
    }
    ok(h.handle(Command::PowerOff { vm: vm.into() }));
    assert_eq!(
        h.report(vm).unwrap().power_state,
        tresor_core::protocol::PowerState::PoweredOff
    );
    ok(h.handle(Command::Delete { vm: vm.into() }));
    if libvirt {
        let all = virsh(&["list", "--all", "--name"]);
        assert!(
            !all.lines().any(|l| l.trim() == vm),
            "the deleted VM's domain is still defined: {all}"
        );
    }
}

/// Types `input` on the VM's console until its log shows `expect` (the shell may need a moment
/// before it reads); whether it did.
fn console_says(h: &mut Host, vm: &str, input: &str, expect: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        ok(h.handle(Command::ConsoleWrite {
            vm: vm.into(),
            data: tresor_core::protocol::Chunk(input.as_bytes().to_vec()),
        }));
        std::thread::sleep(Duration::from_millis(500));
        let mut offset = 0;
        let mut text = Vec::new();
        loop {
            match ok(h.handle(Command::ConsoleRead {
                vm: vm.into(),
                offset,
            })) {
                Reply::Console { next, data, .. } if !data.0.is_empty() => {
                    text.extend_from_slice(&data.0);
                    offset = next;
                }
                _ => break,
            }
        }
        if String::from_utf8_lossy(&text).contains(expect) {
            return true;
        }
    }
    false
}

/// What only the libvirt runtime has: domains that `virsh` shows, no passphrase anywhere in
/// libvirt, and a libvirtd restart that changes nothing for the running VM.
fn libvirt_checks(h: &mut Host, dir: &Path, vm: &str, log: &Path) {
    // What virsh lists as running is what the agent reports as powered on.
    let running = virsh(&["list", "--name"]);
    assert!(running.lines().any(|l| l.trim() == vm), "{running}");
    assert_eq!(
        h.report(vm).unwrap().power_state,
        tresor_core::protocol::PowerState::PoweredOn
    );
    // The secrets were undefined once QEMU had them.
    let secrets = virsh(&["secret-list"]);
    assert!(
        secrets.trim().is_empty(),
        "secrets left in libvirt: {secrets}"
    );

    // No disk passphrase in libvirt's folders, its logs, or the domain's XML, in any form.
    let file = VmFile::load(dir).unwrap();
    let plan = file.prepare_power_on(dir, &h.cache).unwrap();
    let secret = plan.disks[0].secret.as_ref().expect("an encrypted disk");
    let hex: String = secret.bytes().iter().map(|b| format!("{b:02x}")).collect();
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(hex.as_bytes())
    };
    let needles: Vec<Vec<u8>> = vec![
        hex.clone().into_bytes(),
        hex.to_uppercase().into_bytes(),
        b64.into_bytes(),
        secret.bytes().to_vec(),
    ];
    let mut xml = virsh(&["dumpxml", "--security-info", vm]);
    xml.push_str(&virsh(&["dumpxml", "--inactive", "--security-info", vm]));
    let mut looked = 0;
    for root in [
        "/etc/libvirt",
        "/var/lib/libvirt",
        "/run/libvirt",
        "/var/log/libvirt",
        "/var/cache/libvirt",
    ] {
        looked += grep_tree(Path::new(root), &needles);
    }
    looked += grep_tree(log.parent().unwrap(), &needles);
    assert!(looked > 5, "looked at only {looked} files");
    for n in &needles {
        assert!(
            !xml.as_bytes().windows(n.len()).any(|w| w == n),
            "the domain XML holds a disk passphrase"
        );
    }
    // A libvirt domain master key lives on the memory file system the host requires.
    let masters = find_named(Path::new("/var/lib/libvirt/qemu"), "master-key.aes");
    assert!(
        !masters.is_empty(),
        "no master key found under /var/lib/libvirt/qemu"
    );

    // libvirtd restarts: its ephemeral secrets are gone, the domain runs on, and Tresor still
    // controls it.
    let pid = std::fs::read_to_string("/run/libvirtd.pid")
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .expect("libvirtd's pid file");
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "libvirtd did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    libvirt_up();
    assert_eq!(
        h.report(vm).unwrap().power_state,
        tresor_core::protocol::PowerState::PoweredOn
    );
    let running = virsh(&["list", "--name"]);
    assert!(running.lines().any(|l| l.trim() == vm), "{running}");
}

/// Looks through every regular file under `root` for any of `needles`; how many files it read.
fn grep_tree(root: &Path, needles: &[Vec<u8>]) -> usize {
    let mut read = 0;
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    for e in entries.flatten() {
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if meta.is_dir() {
            read += grep_tree(&e.path(), needles);
        } else if meta.is_file() && meta.len() < 256 << 20 {
            let Ok(bytes) = std::fs::read(e.path()) else {
                continue;
            };
            read += 1;
            for n in needles {
                assert!(
                    !bytes.windows(n.len()).any(|w| w == n.as_slice()),
                    "{} holds a disk passphrase",
                    e.path().display()
                );
            }
        }
    }
    read
}

fn find_named(root: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                found.extend(find_named(&p, name));
            } else if p.file_name().is_some_and(|n| n == name) {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn a_libvirt_domain_of_the_same_name_that_is_not_this_vms_is_left_alone() {
    let _one = LIBVIRT.lock().unwrap_or_else(|p| p.into_inner());
    libvirt_up();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let name = format!("tresor-foreign-{}", std::process::id());
    let xml = tmp.path().join("foreign.xml");
    std::fs::write(
        &xml,
        format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='q35'>hvm</type></os></domain>"
        ),
    )
    .unwrap();
    virsh(&["define", &xml.display().to_string()]);
    let before = virsh(&["dumpxml", "--inactive", &name]);

    let mut h = Host::open(HostConfig {
        runtime: RuntimeKind::Libvirt(LibvirtConfig::default()),
        ..common::config_tcg(tmp.path())
    })
    .unwrap();
    ok(h.handle(Command::CreateVm {
        spec: VmSpec {
            disk_format: Default::default(),
            id: None,
            name: name.clone(),
            memory_mib: 64,
            vcpus: 1,
            disks: vec![DiskSpec {
                size: 1 << 20,
                own_key: None,
            }],
            key: None,
            networks: Vec::new(),
        },
    }));
    let refused = h.handle(Command::PowerOn { vm: name.clone() });
    match &refused {
        Reply::Failed { code, message } => {
            assert_eq!(code, "libvirt");
            assert!(message.contains("is not this VM's"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Deleting the Tresor VM leaves the other domain as it was.
    ok(h.handle(Command::Delete { vm: name.clone() }));
    assert_eq!(virsh(&["dumpxml", "--inactive", &name]), before);
    virsh(&["undefine", &name]);
}

/// With `accel = "auto"`, a host whose KVM runs QEMU but boots nothing (the nested KVM of these
/// machines) is found out by the first guest that prints nothing on its serial console, and the
/// guest comes up under TCG. Where KVM works, the guest comes up under KVM.
#[test]
fn a_kvm_that_boots_nothing_falls_back_to_tcg() {
    let tmp = tempfile::tempdir().unwrap();
    let guest = guest(tmp.path());
    // accel = auto: KVM when /dev/kvm opens.
    let mut h = Host::open(common::config(tmp.path())).unwrap();
    let report = match ok(h.handle(Command::CreateVm {
        spec: VmSpec {
            disk_format: Default::default(),
            id: None,
            name: "auto01".into(),
            memory_mib: 256,
            vcpus: 1,
            disks: vec![DiskSpec {
                size: 1 << 20,
                own_key: None,
            }],
            key: None,
            networks: Vec::new(),
        },
    })) {
        Reply::Vm { vm } => vm,
        other => panic!("{other:?}"),
    };
    let boot = PathBuf::from(&report.path).join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::copy(guest.join("vmlinuz"), boot.join("vmlinuz")).unwrap();
    std::fs::copy(guest.join("initrd.img"), boot.join("initrd.img")).unwrap();
    std::fs::write(boot.join("cmdline"), "console=ttyS0 panic=-1 tresor.stay").unwrap();
    ok(h.handle(Command::PowerOn {
        vm: "auto01".into(),
    }));
    let first = h.accel_of("auto01");
    let log = tmp.path().join("state/run/auto01/serial.log");
    // The agent looks at its guests with every report to the server; here, every second.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("tresor-guest: staying") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guest never came up (first under {first:?}, now under {:?}); its console:\n{text}",
            h.accel_of("auto01")
        );
        h.resume();
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("first under {first:?}, up under {:?}", h.accel_of("auto01"));
    ok(h.handle(Command::PowerOff {
        vm: "auto01".into(),
    }));
}
