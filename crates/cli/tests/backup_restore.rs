//! Backup, a new machine, restore, unlock: a server and its key server are backed up while they
//! run (the guest of an encrypted VM wrote to its disk before); their machine is lost. In new
//! folders, `tresor server restore` and `tresor kms restore` make them again from the
//! sealed backups, the host (which kept its VMs) connects to the restored server, its VM is
//! locked with keyMissingOnHost after its restart (case 5), and `tresor vm unlock` fetches the
//! key from the restored key server: the guest reads back what it wrote. The backups hold no
//! key in the clear, and do not open without their passphrase.

mod common;
use common::{wait_for, Dev, TRESOR};

fn tresor<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String, String) {
    let out = std::process::Command::new(TRESOR)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let (ok, out, err) = tresor(args);
    let line: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    assert!(ok, "tresor {}: {err}", line.join(" "));
    out
}

/// `tresor PART VERB FILE FLAG AT --passphrase-file PASS`: a backup or a restore.
fn sealed(
    part: &str,
    verb: &str,
    file: &std::path::Path,
    flag: &str,
    at: &std::path::Path,
    pass: &std::path::Path,
) -> Vec<std::ffi::OsString> {
    let pass_flag = "--passphrase-file";
    [
        part.as_ref(),
        verb.as_ref(),
        file.as_os_str(),
        flag.as_ref(),
        at.as_os_str(),
        pass_flag.as_ref(),
        pass.as_os_str(),
    ]
    .into_iter()
    .map(std::ffi::OsStr::to_owned)
    .collect()
}

#[test]
fn a_server_and_key_server_restored_on_a_new_machine_unlock_the_vms() {
    let dev = Dev::start(1);
    dev.ok(&["settings", "set", "unlock.policy", "manual"]);
    dev.create_vm("web01", true);
    dev.ok(&["vm", "power-on", "web01"]);
    let out = dev.guest_io("web01", "vd0", "write -P 0x5e 0 64k");
    assert!(out.contains("wrote 65536/65536 bytes"), "{out}");
    dev.guest_io("web01", "vd0", "flush");
    dev.ok(&["vm", "power-off", "web01"]);

    // Backups while both run, sealed under a passphrase from a file.
    let safe = tempfile::tempdir().unwrap();
    let pass = safe.path().join("passphrase");
    std::fs::write(&pass, "backups of the keys are sealed\n").unwrap();
    let (server_bak, kms_bak) = (safe.path().join("server.bak"), safe.path().join("kms.bak"));
    let server_toml = dev.dir.path().join("server/server.toml");
    let kms_toml = dev.dir.path().join("kms/kms.toml");
    let said = ok(&sealed(
        "server",
        "backup",
        &server_bak,
        "--config",
        &server_toml,
        &pass,
    ));
    assert!(said.contains("sealed"), "{said}");
    ok(&sealed(
        "kms", "backup", &kms_bak, "--config", &kms_toml, &pass,
    ));
    // An existing file is not written over.
    let (refused, _, err) = tresor(&sealed(
        "kms", "backup", &kms_bak, "--config", &kms_toml, &pass,
    ));
    assert!(!refused && err.contains("Cannot create"), "{err}");

    // Nothing secret is in a backup in the clear: not the master key, not a private key.
    let master = std::fs::read(dev.dir.path().join("kms/data/master.key")).unwrap();
    let ca_key = std::fs::read(dev.dir.path().join("server/ca.key")).unwrap();
    for bak in [&server_bak, &kms_bak] {
        let bytes = std::fs::read(bak).unwrap();
        assert!(bytes.starts_with(b"TRESOR-BACKUP\n"));
        assert!(!bytes.windows(master.len()).any(|w| w == &master[..]));
        assert!(!bytes.windows(40).any(|w| w == &ca_key[..40]));
        assert!(!bytes.windows(11).any(|w| w == b"PRIVATE KEY"));
    }

    // The machine of the server and the key server is lost; the host keeps its VMs and its
    // folder.
    let (dir, port, token) = dev.stop();
    std::fs::remove_dir_all(dir.path().join("server")).unwrap();
    std::fs::remove_dir_all(dir.path().join("kms")).unwrap();
    let new = dir;

    // Both restored from the backups, in new folders.
    let wrong = safe.path().join("wrong");
    std::fs::write(&wrong, "not the passphrase of these\n").unwrap();
    let (opened, _, err) = tresor(&sealed(
        "server",
        "restore",
        &server_bak,
        "--data",
        &new.path().join("server"),
        &wrong,
    ));
    assert!(!opened && err.contains("passphrase is wrong"), "{err}");
    assert!(!new.path().join("server").exists());
    let said = ok(&sealed(
        "server",
        "restore",
        &server_bak,
        "--data",
        &new.path().join("server"),
        &pass,
    ));
    assert!(said.contains("tresor server --config"), "{said}");
    ok(&sealed(
        "kms",
        "restore",
        &kms_bak,
        "--dir",
        &new.path().join("kms"),
        &pass,
    ));
    // A restore does not write into a folder that holds one already.
    let (again, _, err) = tresor(&sealed(
        "kms",
        "restore",
        &kms_bak,
        "--dir",
        &new.path().join("kms"),
        &pass,
    ));
    assert!(
        !again && err.contains("is not empty; restore into a new or empty folder"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(new.path().join("admin-token")).unwrap(),
        token
    );

    let dev = Dev::start_in(new, port, 1, &[]);
    // What the restored server knew: the VM, its key, the manual policy.
    assert_eq!(
        dev.ok(&["settings", "get", "unlock.policy"]).trim(),
        "manual"
    );
    wait_for(
        "web01 is locked with keyMissingOnHost on the restored server",
        || {
            let v = dev.vm("web01");
            v["cryptoState"] == "locked" && v["lockReason"] == "keyMissingOnHost"
        },
    );
    let d = dev.ok(&["vm", "diagnose", "web01", "-o", "json"]);
    assert!(d.contains("\"case\": 5"), "{d}");
    // The restored key server has the key: the unlock fetches it.
    let out = dev.ok(&["vm", "unlock", "web01"]);
    assert!(out.contains("1 of 1 unlocked"), "{out}");
    dev.ok(&["vm", "power-on", "web01"]);
    let out = dev.guest_io("web01", "vd0", "read -P 0x5e 0 64k");
    assert!(
        out.contains("read 65536/65536 bytes") && !out.contains("fail"),
        "{out}"
    );
}
