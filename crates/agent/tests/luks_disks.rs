//! Encrypted disks with the real `qemu-img` and `qemu-io`.

use std::path::Path;

use tresor_agent::disk::{DiskError, DiskFormat, DiskSecret, QemuTools};
use zeroize::Zeroizing;

fn secret(byte: u8) -> DiskSecret {
    DiskSecret::new(Zeroizing::new(vec![byte; 32]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `haystack` holds a run of `len` bytes equal to `byte`.
fn has_run(haystack: &[u8], byte: u8, len: usize) -> bool {
    let mut run = 0;
    for b in haystack {
        run = if *b == byte { run + 1 } else { 0 };
        if run >= len {
            return true;
        }
    }
    false
}

/// Where cryptsetup is.
fn cryptsetup() -> &'static str {
    [
        "/usr/sbin/cryptsetup",
        "/sbin/cryptsetup",
        "/usr/bin/cryptsetup",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("cryptsetup is missing: run scripts/setup-test-deps (it installs cryptsetup-bin)")
}

fn sha(path: &Path) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, &std::fs::read(path).unwrap())
        .as_ref()
        .to_vec()
}

#[test]
fn data_written_through_qemu_is_encrypted_at_rest_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let tools = QemuTools::default();
    for format in [DiskFormat::Qcow2Luks, DiskFormat::RawLuks] {
        let path = dir.path().join(format!("{format:?}.img"));
        let s = secret(0x11);
        tools.create(&path, format, 4 << 20, Some(&s)).unwrap();
        tools
            .io(&path, format, Some(&s), &["write -P 0xab 0 256k"])
            .unwrap();
        let out = tools
            .io(&path, format, Some(&s), &["read -P 0xab 0 256k"])
            .unwrap();
        assert!(out.contains("read 262144/262144"), "{out}");
        let raw = std::fs::read(&path).unwrap();
        assert!(
            !has_run(&raw, 0xab, 4096),
            "{format:?}: the pattern is visible in the file"
        );
        assert!(
            !raw.windows(32).any(|w| w == s.bytes()),
            "secret bytes in the file"
        );
        assert!(
            !raw.windows(64).any(|w| w == hex(s.bytes()).as_bytes()),
            "passphrase in the file"
        );
    }
}

#[test]
fn a_wrong_key_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tools = QemuTools::default();
    let path = dir.path().join("d.qcow2");
    tools
        .create(&path, DiskFormat::Qcow2Luks, 1 << 20, Some(&secret(1)))
        .unwrap();
    let before = sha(&path);
    let err = tools
        .verify(&path, DiskFormat::Qcow2Luks, &secret(2))
        .unwrap_err();
    assert!(matches!(err, DiskError::WrongKey { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("The key does not open disk {}", path.display())
    );
    let err = tools
        .io(
            &path,
            DiskFormat::Qcow2Luks,
            Some(&secret(2)),
            &["write -P 0x01 0 4k"],
        )
        .unwrap_err();
    assert!(matches!(err, DiskError::WrongKey { .. }), "{err}");
    assert_eq!(sha(&path), before);
    tools
        .verify(&path, DiskFormat::Qcow2Luks, &secret(1))
        .unwrap();
    let missing = dir.path().join("nope.qcow2");
    assert!(matches!(
        tools.verify(&missing, DiskFormat::Qcow2Luks, &secret(1)),
        Err(DiskError::Missing { .. })
    ));
}

#[test]
fn secrets_never_appear_on_a_command_line() {
    let dir = tempfile::tempdir().unwrap();
    // Wrappers that record their arguments, then run the real tools.
    let log = dir.path().join("argv.log");
    let mut tools = QemuTools::default();
    for (field, real) in [("qemu-img", "qemu-img"), ("qemu-io", "qemu-io")] {
        let wrapper = dir.path().join(field);
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho \"$@\" >> {}\nexec {real} \"$@\"\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        if field == "qemu-img" {
            tools.qemu_img = wrapper;
        } else {
            tools.qemu_io = wrapper;
        }
    }
    let s = secret(0x5c);
    let plain = dir.path().join("plain.qcow2");
    let enc = dir.path().join("enc.qcow2");
    let rekeyed = dir.path().join("rekeyed.qcow2");
    tools
        .create(&plain, DiskFormat::Qcow2, 1 << 20, None)
        .unwrap();
    tools
        .io(&plain, DiskFormat::Qcow2, None, &["write -P 0x42 0 64k"])
        .unwrap();
    tools
        .convert(
            &plain,
            DiskFormat::Qcow2,
            None,
            &enc,
            DiskFormat::Qcow2Luks,
            Some(&s),
        )
        .unwrap();
    let s2 = secret(0x6d);
    tools
        .convert(
            &enc,
            DiskFormat::Qcow2Luks,
            Some(&s),
            &rekeyed,
            DiskFormat::Qcow2Luks,
            Some(&s2),
        )
        .unwrap();
    let out = tools
        .io(
            &rekeyed,
            DiskFormat::Qcow2Luks,
            Some(&s2),
            &["read -P 0x42 0 64k"],
        )
        .unwrap();
    assert!(out.contains("read 65536/65536"), "{out}");
    assert!(matches!(
        tools.verify(&rekeyed, DiskFormat::Qcow2Luks, &s),
        Err(DiskError::WrongKey { .. })
    ));
    let argv = std::fs::read_to_string(&log).unwrap();
    assert!(argv.lines().count() >= 5);
    for s in [&s, &s2] {
        assert!(
            !argv.contains(&hex(s.bytes())),
            "a passphrase reached argv:\n{argv}"
        );
    }
}

#[test]
fn raw_luks_disks_are_standard_luks() {
    let cryptsetup = cryptsetup();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw.luks");
    QemuTools::default()
        .create(&path, DiskFormat::RawLuks, 4 << 20, Some(&secret(7)))
        .unwrap();
    let out = std::process::Command::new(cryptsetup)
        .arg("luksDump")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("LUKS header information"), "{text}");
}

/// A raw LUKS disk rewritten under a new secret by the agent's own threads (deep rekey): QEMU's
/// driver reads the same data with the new secret and refuses the old one, cryptsetup opens it
/// with the new passphrase, what was never written stays a hole, and a wrong source secret
/// makes nothing.
#[test]
fn a_raw_luks_disk_rekeyed_by_the_agent_reads_the_same_through_qemu() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let tools = QemuTools::default();
    let (old, new) = (dir.path().join("old.luks"), dir.path().join("new.luks"));
    let size: u64 = 64 << 20;
    tools
        .create(&old, DiskFormat::RawLuks, size, Some(&secret(1)))
        .unwrap();
    // Written: the start, a piece across a 4 MiB boundary, the last sector; the rest is a hole.
    let writes = [
        "write -P 0x11 0 1M",
        "write -P 0x22 4095k 2k",
        "write -P 0x33 33554432 8M",
        "write -P 0x44 67108352 512",
    ];
    tools
        .io(&old, DiskFormat::RawLuks, Some(&secret(1)), &writes)
        .unwrap();

    let wrong = tools.convert(
        &old,
        DiskFormat::RawLuks,
        Some(&secret(9)),
        &new,
        DiskFormat::RawLuks,
        Some(&secret(2)),
    );
    assert!(
        matches!(wrong, Err(DiskError::WrongKey { .. })),
        "{wrong:?}"
    );
    assert!(!new.exists(), "a wrong secret made a disk");

    tools
        .convert(
            &old,
            DiskFormat::RawLuks,
            Some(&secret(1)),
            &new,
            DiskFormat::RawLuks,
            Some(&secret(2)),
        )
        .unwrap();
    let reads = [
        "read -P 0x11 0 1M",
        "read -P 0x22 4095k 2k",
        "read -P 0x33 33554432 8M",
        "read -P 0x44 67108352 512",
    ];
    let out = tools
        .io(&new, DiskFormat::RawLuks, Some(&secret(2)), &reads)
        .unwrap();
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert_eq!(out.matches("read ").count(), 4, "{out}");
    let err = tools
        .verify(&new, DiskFormat::RawLuks, &secret(1))
        .unwrap_err();
    assert!(matches!(err, DiskError::WrongKey { .. }), "{err}");
    assert_eq!(
        tools
            .io(&new, DiskFormat::RawLuks, Some(&secret(1)), &["read 0 512"])
            .unwrap_err()
            .to_string(),
        format!("The key does not open disk {}", new.display())
    );

    // cryptsetup opens it with the new passphrase.
    let cryptsetup = cryptsetup();
    let mut child = std::process::Command::new(cryptsetup)
        .args(["open", "--test-passphrase", "--key-file=-"])
        .arg(&new)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), hex(&[2; 32]).as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());

    // The hole stayed one: about what was written (9 MiB and the header), not 64 MiB.
    let allocated = std::fs::metadata(&new).unwrap().blocks() * 512;
    assert!(allocated < 16 << 20, "{allocated} bytes allocated");
    let raw = std::fs::read(&new).unwrap();
    assert!(raw[(2 << 20) + (8 << 20)..(2 << 20) + (16 << 20)]
        .iter()
        .all(|b| *b == 0));
}

#[test]
fn a_qcow2_disk_and_a_raw_image_move_to_raw_luks_with_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let tools = QemuTools::default();
    let size: u64 = 24 << 20;
    let writes = ["write -P 0x5a 0 1M", "write -P 0x6b 20M 512"];
    let reads = [
        "read -P 0x5a 0 1M",
        "read -P 0x6b 20M 512",
        "read -P 0 2M 1M",
    ];
    let read_back = |path: &Path, secret: &DiskSecret| {
        let out = tools
            .io(path, DiskFormat::RawLuks, Some(secret), &reads)
            .unwrap();
        assert!(!out.contains("Pattern verification failed"), "{out}");
        assert_eq!(out.matches("read ").count(), 3, "{out}");
    };

    // A qcow2+LUKS disk (encrypt or deep rekey of a VM whose disks are to be raw LUKS).
    let qcow = dir.path().join("d.qcow2");
    tools
        .create(&qcow, DiskFormat::Qcow2Luks, size, Some(&secret(1)))
        .unwrap();
    tools
        .io(&qcow, DiskFormat::Qcow2Luks, Some(&secret(1)), &writes)
        .unwrap();
    let moved = dir.path().join("d.luks");
    tools
        .convert(
            &qcow,
            DiskFormat::Qcow2Luks,
            Some(&secret(1)),
            &moved,
            DiskFormat::RawLuks,
            Some(&secret(2)),
        )
        .unwrap();
    read_back(&moved, &secret(2));
    assert_eq!(
        std::fs::metadata(&moved).unwrap().len(),
        (2 << 20) + size,
        "the volume is as large as the disk, after its 2 MiB header"
    );

    // A raw image imported into a raw LUKS disk.
    let image = dir.path().join("image.raw");
    tools.create(&image, DiskFormat::Qcow2, size, None).unwrap();
    tools.io(&image, DiskFormat::Qcow2, None, &writes).unwrap();
    let plain = dir.path().join("plain.raw");
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&image)
        .arg(&plain)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let imported = dir.path().join("imported.luks");
    tools
        .import(
            &plain,
            &tools.probe_image(&plain).unwrap(),
            &imported,
            DiskFormat::RawLuks,
            Some(&secret(3)),
        )
        .unwrap();
    read_back(&imported, &secret(3));
    let raw = std::fs::read(&imported).unwrap();
    assert!(!has_run(&raw, 0x5a, 4096), "plaintext in the volume");
}
