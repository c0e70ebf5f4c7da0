//! Encrypt, decrypt and deep rekey, stopped at every step as a crash would stop them: after
//! recovery the VM opens with the old or the new keys and its data is intact.

use std::path::Path;

use tresor_agent::disk::{DiskFormat, QemuTools};
use tresor_agent::diskops::{self, Change, Recovery, Step};
use tresor_agent::keycache::KeyCache;
use tresor_agent::vmfile::{VmConfig, VmFile};
use tresor_core::ids::KeyRef;

const STOPS: [Option<Step>; 5] = [
    Some(Step::JournalWritten),
    Some(Step::Converted),
    Some(Step::Committed),
    Some(Step::OldRemoved),
    None,
];

fn keys() -> (KeyCache, KeyRef, KeyRef) {
    let cache = KeyCache::new(16).unwrap();
    let vm_key = KeyRef::new("kms", "vm-key");
    let new_key = KeyRef::new("kms", "new-key");
    cache.insert(vm_key.clone(), &[1; 32]).unwrap();
    cache.insert(new_key.clone(), &[2; 32]).unwrap();
    (cache, vm_key, new_key)
}

/// A VM with one 4 MiB disk holding a pattern in its first MiB.
fn vm_with_data(dir: &Path, encrypted: bool, cache: &KeyCache, vm_key: &KeyRef) {
    let tools = QemuTools::default();
    let mut vm = VmFile::new_encrypted("id-1", "vm1", &VmConfig::default(), vm_key, cache).unwrap();
    if encrypted {
        let s = vm
            .add_encrypted_disk(
                "d0",
                "disk0.qcow2",
                DiskFormat::Qcow2Luks,
                4 << 20,
                None,
                cache,
            )
            .unwrap();
        tools
            .create(
                &dir.join("disk0.qcow2"),
                DiskFormat::Qcow2Luks,
                4 << 20,
                Some(&s),
            )
            .unwrap();
        tools
            .io(
                &dir.join("disk0.qcow2"),
                DiskFormat::Qcow2Luks,
                Some(&s),
                &["write -P 0x77 0 1M"],
            )
            .unwrap();
    } else {
        vm.disks.push(tresor_agent::vmfile::DiskEntry {
            id: "d0".into(),
            file: "disk0.qcow2".into(),
            format: DiskFormat::Qcow2,
            size: 4 << 20,
            key_id: None,
            wrapped_secret: None,
        });
        tools
            .create(&dir.join("disk0.qcow2"), DiskFormat::Qcow2, 4 << 20, None)
            .unwrap();
        tools
            .io(
                &dir.join("disk0.qcow2"),
                DiskFormat::Qcow2,
                None,
                &["write -P 0x77 0 1M"],
            )
            .unwrap();
    }
    vm.save(dir).unwrap();
}

/// The VM opens with the keys in the cache and its data is intact; no stray file is left.
fn assert_intact(dir: &Path, cache: &KeyCache) -> (DiskFormat, String) {
    let vm = VmFile::load(dir).unwrap();
    let disk = &vm.disks[0];
    let secret = vm.disk_secret(disk, dir, cache).unwrap();
    let out = QemuTools::default()
        .io(
            &dir.join(&disk.file),
            disk.format,
            secret.as_ref(),
            &["read -P 0x77 0 1M"],
        )
        .unwrap();
    assert!(
        out.contains("read 1048576/1048576") && !out.contains("verification failed"),
        "{out}"
    );
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    files.sort();
    let mut want = vec![disk.file.clone(), "vm.json".to_string()];
    want.sort();
    assert_eq!(files, want, "stray files");
    (disk.format, disk.file.clone())
}

fn crash_and_recover(encrypted: bool, change: Change, done_format: DiskFormat) {
    for stop in STOPS {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (cache, vm_key, _) = keys();
        vm_with_data(dir, encrypted, &cache, &vm_key);
        diskops::run(dir, "d0", &change, &cache, &QemuTools::default(), stop).unwrap();
        let recovery = diskops::recover(dir).unwrap();
        let (format, file) = assert_intact(dir, &cache);
        let rolled_back = matches!(stop, Some(Step::JournalWritten) | Some(Step::Converted));
        if rolled_back {
            assert!(
                matches!(recovery, Recovery::RolledBack(_)),
                "{stop:?}: {recovery:?}"
            );
            assert_eq!(file, "disk0.qcow2", "{stop:?}: the old image stays");
        } else {
            let expected = if stop.is_none() {
                Recovery::Nothing
            } else {
                Recovery::Completed(dir.join("disk0.g1.qcow2"))
            };
            assert_eq!(recovery, expected, "{stop:?}");
            assert_eq!(
                (format, file.as_str()),
                (done_format, "disk0.g1.qcow2"),
                "{stop:?}"
            );
        }
    }
}

#[test]
fn encrypt_survives_a_crash_at_every_step() {
    crash_and_recover(
        false,
        Change::Encrypt {
            key: KeyRef::new("kms", "vm-key"),
        },
        DiskFormat::Qcow2Luks,
    );
}

#[test]
fn decrypt_survives_a_crash_at_every_step() {
    crash_and_recover(true, Change::Decrypt, DiskFormat::Qcow2);
}

#[test]
fn deep_rekey_survives_a_crash_at_every_step_and_changes_the_secret() {
    crash_and_recover(
        true,
        Change::DeepRekey {
            key: Some(KeyRef::new("kms", "new-key")),
        },
        DiskFormat::Qcow2Luks,
    );
    // After a finished deep rekey only the new key opens the disk.
    let tmp = tempfile::tempdir().unwrap();
    let (cache, vm_key, new_key) = keys();
    vm_with_data(tmp.path(), true, &cache, &vm_key);
    let before = VmFile::load(tmp.path()).unwrap();
    let old_secret = before
        .disk_secret(&before.disks[0], tmp.path(), &cache)
        .unwrap()
        .unwrap();
    diskops::run(
        tmp.path(),
        "d0",
        &Change::DeepRekey {
            key: Some(new_key.clone()),
        },
        &cache,
        &QemuTools::default(),
        None,
    )
    .unwrap();
    let after = VmFile::load(tmp.path()).unwrap();
    assert_eq!(after.disks[0].key_id, Some(new_key.clone()));
    let err = QemuTools::default()
        .verify(
            &tmp.path().join(&after.disks[0].file),
            DiskFormat::Qcow2Luks,
            &old_secret,
        )
        .unwrap_err();
    assert!(matches!(
        err,
        tresor_agent::disk::DiskError::WrongKey { .. }
    ));
    cache.remove(&new_key);
    let err = after.prepare_power_on(tmp.path(), &cache).unwrap_err();
    assert!(err.to_string().starts_with("The disk ["), "{err}");
}

#[test]
fn an_operation_that_cannot_start_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, vm_key, _) = keys();
    vm_with_data(tmp.path(), false, &cache, &vm_key);
    let missing = KeyRef::new("kms", "not-pushed");
    let err = diskops::run(
        tmp.path(),
        "d0",
        &Change::Encrypt { key: missing },
        &cache,
        &QemuTools::default(),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("not on this host"), "{err}");
    assert_intact(tmp.path(), &cache);
    let err = diskops::run(
        tmp.path(),
        "d0",
        &Change::Decrypt,
        &cache,
        &QemuTools::default(),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("is not encrypted"), "{err}");
}
