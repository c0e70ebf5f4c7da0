//! VMs in a real QEMU: data written through a running VM's encrypted disk survives power-off and
//! power-on, is not readable in the file, and a VM without its disk key does not start.

use std::time::Duration;

use tresor_agent::disk::{DiskFormat, DiskSecret, QemuTools};
use tresor_agent::keycache::KeyCache;
use tresor_agent::qemu::{QemuConfig, RunningVm};
use tresor_agent::vmfile::{VmConfig, VmFile};
use tresor_core::ids::KeyRef;
use tresor_core::protocol::DataPath;

/// VM `name` in `root`, encrypted under a KEK held in the returned key cache, with one 8 MiB
/// disk `file` of `format`: its folder, the cache and the disk's secret.
fn encrypted_vm(
    root: &std::path::Path,
    name: &str,
    file: &str,
    format: DiskFormat,
) -> (std::path::PathBuf, KeyCache, DiskSecret) {
    let vm_dir = root.join(name);
    std::fs::create_dir_all(&vm_dir).unwrap();
    let kek = KeyRef::new("kms", &format!("{name}-kek"));
    let cache = KeyCache::new(16).unwrap();
    cache.insert(kek.clone(), &[0x42; 32]).unwrap();
    let mut vm = VmFile::new_encrypted(
        &format!("id-{name}"),
        name,
        &VmConfig {
            memory_mib: 64,
            ..Default::default()
        },
        &kek,
        &cache,
    )
    .unwrap();
    let secret = vm
        .add_encrypted_disk("d0", file, format, 8 << 20, None, &cache)
        .unwrap();
    QemuTools::default()
        .create(&vm_dir.join(file), format, 8 << 20, Some(&secret))
        .unwrap();
    vm.save(&vm_dir).unwrap();
    (vm_dir, cache, secret)
}

#[test]
fn data_written_through_a_running_vm_survives_power_off_and_on() {
    let dir = tempfile::tempdir().unwrap();
    let (vm_dir, cache, secret) =
        encrypted_vm(dir.path(), "web01", "disk0.qcow2", DiskFormat::Qcow2Luks);

    let config = QemuConfig::default();
    let plan = VmFile::load(&vm_dir)
        .unwrap()
        .prepare_power_on(&vm_dir, &cache)
        .unwrap();
    let mut running = RunningVm::start(&config, "web01", &vm_dir, &plan).unwrap();
    assert!(running.is_running());
    // Write through the running VM's own disk device.
    running
        .human_command("qemu-io -d /machine/peripheral/vd0/virtio-backend \"write -P 0xc3 0 1M\"")
        .unwrap();
    // No guest answers the ACPI button here; QEMU is stopped after the timeout.
    running.power_off(Duration::from_millis(500));

    let raw = std::fs::read(vm_dir.join("disk0.qcow2")).unwrap();
    assert!(
        !raw.windows(4096).any(|w| w.iter().all(|b| *b == 0xc3)),
        "plaintext in the disk file"
    );

    let tools = QemuTools::default();
    let check = |pattern: &str| {
        let out = tools
            .io(
                &vm_dir.join("disk0.qcow2"),
                DiskFormat::Qcow2Luks,
                Some(&secret),
                &[pattern],
            )
            .unwrap();
        assert!(
            out.contains("read 1048576/1048576") && !out.contains("Pattern verification failed"),
            "{out}"
        );
    };
    check("read -P 0xc3 0 1M");

    // Power on again and write the next megabyte; both are there afterwards.
    let plan = VmFile::load(&vm_dir)
        .unwrap()
        .prepare_power_on(&vm_dir, &cache)
        .unwrap();
    let mut again = RunningVm::start(&config, "web01", &vm_dir, &plan).unwrap();
    again
        .human_command("qemu-io -d /machine/peripheral/vd0/virtio-backend \"write -P 0x5a 1M 1M\"")
        .unwrap();
    again.power_off(Duration::from_millis(200));
    check("read -P 0xc3 0 1M");
    check("read -P 0x5a 1M 1M");

    // Without the key the VM does not get as far as QEMU, and the message is exact.
    cache.clear();
    let err = VmFile::load(&vm_dir)
        .unwrap()
        .prepare_power_on(&vm_dir, &cache)
        .unwrap_err();
    assert!(err.to_string().contains("is not on this host"), "{err}");
    // The QEMU command line never held the secret.
    let log = std::fs::read_to_string(vm_dir.join("qemu.log")).unwrap_or_default();
    let hex: String = secret.bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert!(!log.contains(&hex));
}

#[test]
fn a_vm_that_dies_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let plan = tresor_agent::vmfile::PowerOnPlan {
        id: "0a1b".into(),
        config: VmConfig {
            memory_mib: 64,
            vcpus: 1,
            networks: Vec::new(),
            ..Default::default()
        },
        disks: vec![],
        boot: None,
        seed: None,
    };
    let mut vm = RunningVm::start(&QemuConfig::default(), "short", dir.path(), &plan).unwrap();
    assert!(vm.is_running());
    let pid = vm.pid();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while vm.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead VM still looks alive"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_raw_luks_disk_whose_fast_path_cannot_start_is_opened_by_qemus_driver() {
    let dir = tempfile::tempdir().unwrap();
    let (vm_dir, cache, secret) =
        encrypted_vm(dir.path(), "db01", "disk0.luks", DiskFormat::RawLuks);
    let disk = vm_dir.join("disk0.luks");
    let plan = VmFile::load(&vm_dir)
        .unwrap()
        .prepare_power_on(&vm_dir, &cache)
        .unwrap();
    // A backend that ends at once, saying why.
    let backend = dir.path().join("backend");
    std::fs::write(
        &backend,
        "#!/bin/sh\necho 'Cannot keep the backend memory out of swap' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &backend,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = QemuConfig {
        blk_backend: Some(backend),
        ..QemuConfig::default()
    };
    let mut running = RunningVm::start(&config, "db01", &vm_dir, &plan).unwrap();
    assert_eq!(running.data_paths(), vec![DataPath::Qemu]);
    if tresor_agent::qemu::kvm_available() {
        // Under KVM the backend was tried, and what it said is kept.
        let said = std::fs::read_to_string(vm_dir.join("vd0.log")).unwrap();
        assert!(said.contains("out of swap"), "{said}");
    }
    running
        .human_command("qemu-io -d /machine/peripheral/vd0/virtio-backend \"write -P 0x7e 0 64k\"")
        .unwrap();
    running.power_off(Duration::from_millis(200));
    let out = QemuTools::default()
        .io(
            &disk,
            DiskFormat::RawLuks,
            Some(&secret),
            &["read -P 0x7e 0 64k"],
        )
        .unwrap();
    assert!(
        out.contains("read 65536/65536") && !out.contains("Pattern verification failed"),
        "{out}"
    );
}
