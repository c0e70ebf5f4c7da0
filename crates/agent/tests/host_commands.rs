//! The host agent's commands on real QEMU and real LUKS disks: encryption mode, create, power,
//! a restart that empties the key cache, register, unregister, delete, encrypt and rekey.

mod common;

use common::{failed, key, ok};
use tresor_agent::host::Host;
use tresor_core::protocol::{Command, DiskLayout, DiskSpec, PowerState, Reply, VmReport, VmSpec};

fn host(dir: &std::path::Path) -> Host {
    Host::open(common::config(dir)).unwrap()
}

fn vm(reply: Reply) -> VmReport {
    match reply {
        Reply::Vm { vm } => vm,
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_encrypted_vm_runs_loses_its_keys_on_restart_and_runs_again_when_they_return() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = host(tmp.path());
    let vm_key = key("vm-kek", 1);
    let disk_key = key("disk-kek", 2);
    let spec = VmSpec {
        disk_format: Default::default(),
        id: None,
        name: "web01".into(),
        memory_mib: 64,
        vcpus: 1,
        disks: vec![
            DiskSpec {
                size: 4 << 20,
                own_key: None,
            },
            DiskSpec {
                size: 4 << 20,
                own_key: Some(disk_key.key.clone()),
            },
        ],
        key: Some(vm_key.key.clone()),
        networks: Vec::new(),
    };
    // Encrypted VMs live only on a safe host.
    let (code, message) = failed(h.handle(Command::CreateVm { spec: spec.clone() }));
    assert_eq!(code, "hostNotSafe");
    assert!(
        message.contains("tresor host enable-encryption host-1"),
        "{message}"
    );
    ok(h.handle(Command::EnableEncryption {
        host_key: key("host-key", 9),
    }));
    ok(h.handle(Command::PushKeys {
        keys: vec![vm_key.clone(), disk_key.clone()],
    }));
    let report = vm(ok(h.handle(Command::CreateVm { spec })));
    assert!(report.encrypted);
    assert_eq!(report.key_id, Some(vm_key.key.clone()));
    assert!(report.keys.iter().all(|k| k.on_host));
    // The answer is the VM as it is now, powered on.
    let on = vm(ok(h.handle(Command::PowerOn { vm: "web01".into() })));
    assert_eq!(on.power_state, PowerState::PoweredOn);
    assert_eq!(
        h.report("web01").unwrap().power_state,
        PowerState::PoweredOn
    );
    let (code, _) = failed(h.handle(Command::Unregister { vm: "web01".into() }));
    assert_eq!(code, "vmRunning");

    // A restart stops the VM and empties the key cache.
    h.reboot();
    let report = h.report("web01").unwrap();
    assert_eq!(report.power_state, PowerState::PoweredOff);
    assert!(report.keys.iter().all(|k| !k.on_host));
    ok(h.handle(Command::EnableEncryption {
        host_key: key("host-key", 9),
    }));
    let (code, _) = failed(h.handle(Command::PowerOn { vm: "web01".into() }));
    assert_eq!(code, "homeKeyMissing");
    // With the VM's key but not the disk's own key: the exact disk message.
    ok(h.handle(Command::PushKeys {
        keys: vec![vm_key.clone()],
    }));
    let (code, message) = failed(h.handle(Command::PowerOn { vm: "web01".into() }));
    assert_eq!(code, "diskKeyMissing");
    let disk1 = tmp.path().join("datastore/web01/disk1.qcow2");
    assert_eq!(
        message,
        format!(
            "The disk [{}] is encrypted and a required key was not found.",
            disk1.display()
        )
    );
    ok(h.handle(Command::PushKeys {
        keys: vec![disk_key.clone()],
    }));
    ok(h.handle(Command::PowerOn { vm: "web01".into() }));
    let off = vm(ok(h.handle(Command::PowerOff { vm: "web01".into() })));
    assert_eq!(off.power_state, PowerState::PoweredOff);

    // Unregister keeps the files; a new agent registers the VM from them.
    ok(h.handle(Command::Unregister { vm: "web01".into() }));
    drop(h);
    let mut h = host(tmp.path());
    let dirs = match ok(h.handle(Command::ListVmDirs)) {
        Reply::VmDirs { paths } => paths,
        other => panic!("{other:?}"),
    };
    assert_eq!(dirs.len(), 1);
    let report = vm(ok(h.handle(Command::Register {
        path: dirs[0].clone(),
    })));
    assert_eq!(report.name, "web01");
    assert_eq!(report.keys.len(), 2);
    ok(h.handle(Command::Delete { vm: "web01".into() }));
    assert!(!tmp.path().join("datastore/web01").exists());
}

#[test]
fn a_plain_vm_is_encrypted_then_rekeyed_shallow_and_deep() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = host(tmp.path());
    ok(h.handle(Command::EnableEncryption {
        host_key: key("host-key", 9),
    }));
    let spec = VmSpec {
        disk_format: Default::default(),
        id: None,
        name: "db01".into(),
        memory_mib: 64,
        vcpus: 1,
        disks: vec![DiskSpec {
            size: 2 << 20,
            own_key: None,
        }],
        key: None,
        networks: Vec::new(),
    };
    assert!(!vm(ok(h.handle(Command::CreateVm { spec }))).encrypted);
    let k1 = key("k1", 1);
    let k2 = key("k2", 2);
    let k3 = key("k3", 3);
    ok(h.handle(Command::PushKeys {
        keys: vec![k1.clone(), k2.clone(), k3.clone()],
    }));
    let report = vm(ok(h.handle(Command::Encrypt {
        vm: "db01".into(),
        key: k1.key.clone(),
        disk_format: None,
    })));
    assert!(report.encrypted);
    assert_eq!(report.key_id, Some(k1.key.clone()));
    let report = vm(ok(h.handle(Command::Rekey {
        vm: "db01".into(),
        key: k2.key.clone(),
        deep: false,
        disk_format: None,
    })));
    assert_eq!(report.key_id, Some(k2.key.clone()));
    let report = vm(ok(h.handle(Command::Rekey {
        vm: "db01".into(),
        key: k3.key.clone(),
        deep: true,
        disk_format: None,
    })));
    assert_eq!(report.key_id, Some(k3.key.clone()));
    assert_eq!(report.disk_formats, vec![DiskLayout::Qcow2]);
    // A shallow rekey writes no disk, so it takes no disk format.
    let (code, _) = failed(h.handle(Command::Rekey {
        vm: "db01".into(),
        key: k3.key.clone(),
        deep: false,
        disk_format: Some(DiskLayout::Luks),
    }));
    assert_eq!(code, "badRequest");
    // A deep rekey to raw LUKS moves the qcow2 disk to a LUKS volume.
    let k4 = key("k4", 4);
    ok(h.handle(Command::PushKeys {
        keys: vec![k4.clone()],
    }));
    let report = vm(ok(h.handle(Command::Rekey {
        vm: "db01".into(),
        key: k4.key.clone(),
        deep: true,
        disk_format: Some(DiskLayout::Luks),
    })));
    assert_eq!(report.disk_formats, vec![DiskLayout::Luks]);
    assert!(report.disks[0].ends_with(".luks"), "{:?}", report.disks);
    let head = std::fs::read(&report.disks[0]).unwrap();
    assert_eq!(&head[..6], b"LUKS\xba\xbe");
    // Only the newest key is needed now.
    ok(h.handle(Command::ForgetKeys {
        keys: vec![k1.key.clone(), k2.key.clone(), k3.key.clone()],
    }));
    ok(h.handle(Command::PowerOn { vm: "db01".into() }));
    ok(h.handle(Command::PowerOff { vm: "db01".into() }));
    let report = vm(ok(h.handle(Command::Decrypt { vm: "db01".into() })));
    assert!(!report.encrypted && report.key_id.is_none());
}

#[test]
fn the_encryption_mode_survives_an_agent_restart_and_a_host_restart_ends_pending_incapable() {
    use tresor_core::host::HostCryptoState;
    let tmp = tempfile::tempdir().unwrap();
    let mut h = host(tmp.path());
    assert_eq!(h.crypto_state(), HostCryptoState::Incapable);
    ok(h.handle(Command::EnableEncryption {
        host_key: key("host-key", 9),
    }));
    drop(h);
    let mut h = host(tmp.path());
    assert_eq!(
        h.crypto_state(),
        HostCryptoState::Safe,
        "an agent restart keeps the mode"
    );
    assert!(h.keys_held().is_empty(), "but not the host key");
    ok(h.handle(Command::DisableEncryption));
    drop(h);
    let mut h = host(tmp.path());
    assert_eq!(h.crypto_state(), HostCryptoState::PendingIncapable);
    h.reboot();
    assert_eq!(h.crypto_state(), HostCryptoState::Incapable);
    drop(h);
    assert_eq!(host(tmp.path()).crypto_state(), HostCryptoState::Incapable);
}
