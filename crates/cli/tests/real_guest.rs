//! A real Linux guest whose root file system lives on an encrypted disk, end to end through
//! `tresor dev` and the CLI, under each runtime and with each kind of key provider: the test
//! guest's ext4 image is imported with `vm create --image --encrypt`, its kernel and initrd sent
//! with `--kernel --initrd --cmdline`, and booted. The guest writes a marker file and powers off;
//! the key provider goes away and the host restarts, so the VM locks; the provider returns, the VM
//! is unlocked, and the guest boots again from its encrypted root and finds its marker. The disk
//! on the host holds only ciphertext. The guest has a network (user-mode) and gets an address,
//! and a cloud-init NoCloud seed with its id, an SSH key and the user data sent. Under TCG: the nested KVM of the test machines does not
//! boot a stock kernel.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{console_line, libvirt_up, wait_for, Dev, Proc, PyKmip, TRESOR};

enum Provider {
    Embedded,
    PyKmip,
}

fn scenario(runtime: &str, provider: Provider) {
    scenario_with(runtime, provider, None)
}

/// The scenario with the VM's disks stored as `disk_format` (`--disk-format`).
fn scenario_with(runtime: &str, provider: Provider, disk_format: Option<&str>) {
    if runtime == "libvirt" {
        libvirt_up();
    }
    let dev = Dev::start_with(1, &["--runtime", runtime, "--accel", "tcg"]);
    let mut pykmip = match &provider {
        Provider::PyKmip => Some(PyKmip::start_as_default(&dev)),
        Provider::Embedded => None,
    };
    let g = common::test_guest(dev.dir.path());
    // libvirt's domain names are the host's: one of its own per run.
    let vm = format!(
        "rg-{runtime}-{}-{}",
        match provider {
            Provider::Embedded => "kms",
            Provider::PyKmip => "pykmip",
        },
        std::process::id()
    );
    let file = |f: &str| g.join(f).display().to_string();
    // cloud-init: user data and an SSH key, given to the guest in a NoCloud seed.
    let user_data = "#cloud-config\nhostname: tresor-guest\n";
    std::fs::write(dev.dir.path().join("user-data"), user_data).unwrap();
    std::fs::write(
        dev.dir.path().join("keys.pub"),
        "# the operator's key\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTest test@tresor\n",
    )
    .unwrap();
    let seed_file = |f: &str| dev.dir.path().join(f).display().to_string();
    let (rootfs, kernel, initrd) = (file("rootfs.img"), file("vmlinuz"), file("initrd.img"));
    let (user_data_file, keys_file) = (seed_file("user-data"), seed_file("keys.pub"));
    let mut create = vec![
        "vm",
        "create",
        &vm,
        "--host",
        "host-1",
        "--encrypt",
        "--memory",
        "256M",
        "--network",
        "user",
        "--image",
        &rootfs,
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--cmdline",
        "console=ttyS0 quiet panic=-1 tresor.root",
        "--user-data",
        &user_data_file,
        "--ssh-key",
        &keys_file,
    ];
    if let Some(f) = disk_format {
        create.extend(["--disk-format", f]);
    }
    let out = dev.ok(&create);
    assert!(out.contains(&vm), "{out}");
    let show = || -> serde_json::Value {
        serde_json::from_str(&dev.cli(&["vm", "show", &vm, "-o", "json"]).1).unwrap_or_default()
    };
    let v = show();
    assert_eq!(v["cryptoState"], "unlocked", "{v}");
    let disks = v["disks"].as_array().cloned().unwrap_or_default();
    assert_eq!(disks.len(), 1, "the image is the VM's one disk: {v}");

    // First boot: the guest's root is the imported image, opened through LUKS.
    dev.ok(&["vm", "power-on", &vm]);
    let log = dev
        .dir
        .path()
        .join("host-1/state/run")
        .join(&vm)
        .join("serial.log");
    console_line(&log, "tresor-guest: root up");
    let disk = PathBuf::from(disks[0]["path"].as_str().unwrap());
    // `vm show` says how the disk is stored and which path its data takes.
    let shown = &show()["disks"][0];
    assert_eq!(shown["format"], disk_format.unwrap_or("qcow2"), "{shown}");
    // Under TCG (here) the fast data path is not used: QEMU's own driver opens a raw LUKS disk
    // too (the fast path itself is in fast_disks.rs).
    assert_eq!(shown["dataPath"], "qemu", "{shown}");
    if disk_format == Some("luks") {
        // A LUKS volume that cryptsetup opens too.
        let head = std::fs::read(&disk).unwrap();
        assert_eq!(
            &head[..6],
            b"LUKS\xba\xbe",
            "{} is not a LUKS volume",
            disk.display()
        );
    }
    // Its cloud-init seed: the VM's id, the one key, the user data as sent.
    let seed = console_line(&log, "tresor-guest: seed ");
    let id = v["id"].as_str().unwrap_or_default().to_owned();
    let md5 = {
        let out = Command::new("md5sum")
            .arg(dev.dir.path().join("user-data"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)[..8].to_owned()
    };
    assert_eq!(
        seed,
        format!("tresor-guest: seed instance-id: \"{id}\" keys 1 user-data {md5}"),
        "{v}"
    );
    assert!(
        !std::path::Path::new(&format!("/dev/shm/tresor-seeds/{vm}.img")).exists(),
        "the seed is removed once the VM has it"
    );
    // Its network: QEMU's user-mode network gives it an address by DHCP.
    let net = console_line(&log, "tresor-guest: net ");
    assert!(net.ends_with(" 10.0.2.15"), "{net}");
    let wrote = console_line(&log, "tresor-guest: wrote ");
    let marker = wrote.trim_start_matches("tresor-guest: wrote ").to_owned();
    wait_for("the guest powers itself off", || {
        show()["powerState"] == "poweredOff"
    });

    // On the host, the disk holds ciphertext only: not the marker, not the guest's own init.
    let bytes = std::fs::read(&disk).unwrap();
    for needle in [marker.as_bytes(), b"tresor-guest: root up".as_slice()] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{} holds {:?} in the clear",
            disk.display(),
            String::from_utf8_lossy(needle)
        );
    }

    // The key provider goes away and the host restarts: the VM locks.
    let kms_config = dev.kms_config();
    match &mut pykmip {
        Some(p) => p.halt(),
        None => {
            let pid = dev.kms_pid();
            Command::new("kill").args(["-INT", &pid]).status().unwrap();
        }
    }
    dev.ok(&["host", "reboot", "host-1"]);
    wait_for("the VM is locked", || show()["cryptoState"] == "locked");
    let (ok, _, err) = dev.cli(&["vm", "power-on", &vm]);
    assert!(!ok && err.contains("locked"), "{err}");

    // The provider returns; the VM is unlocked and boots again from its encrypted root.
    let _kms = match &mut pykmip {
        Some(p) => {
            p.resume();
            None
        }
        None => Some(Proc(
            Command::new(TRESOR)
                .args(["kms", "serve", "--config", &kms_config])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )),
    };
    wait_for("the VM is unlocked", || {
        if show()["cryptoState"] == "unlocked" {
            return true;
        }
        let _ = dev.cli(&["vm", "unlock", &vm, "--no-wait"]);
        false
    });
    // This time the guest stays up with a shell on its console.
    dev.ok(&[
        "vm",
        "upload",
        &vm,
        "--cmdline",
        "console=ttyS0 quiet panic=-1 tresor.root tresor.stay",
    ]);
    dev.ok(&["vm", "power-on", &vm]);
    let found = console_line(&log, "tresor-guest: found ");
    assert_eq!(found, format!("tresor-guest: found {marker}"));

    console_line(&log, "tresor-guest: staying");
    // `vm console` types into the guest's shell and shows what it answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = dev.cli_with_input(
            "echo tresor-$((6*7))-answer\n",
            &["vm", "console", &vm, "--wait", "2"],
        );
        if out.contains("tresor-42-answer") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guest's shell did not answer on the console: {out}"
        );
    }
    let logged = dev.ok(&["vm", "console", &vm, "--log"]);
    assert!(logged.contains(&found), "{logged}");
    dev.ok(&["vm", "power-off", &vm]);
    dev.ok(&["vm", "delete", &vm]);
}

#[test]
fn a_guest_with_its_root_on_an_encrypted_disk_under_qemu_with_the_embedded_key_server() {
    scenario("qemu", Provider::Embedded);
}

#[test]
fn a_guest_with_its_root_on_a_raw_luks_disk() {
    scenario_with("qemu", Provider::Embedded, Some("luks"));
}

#[test]
fn a_guest_with_its_root_on_an_encrypted_disk_under_libvirt_with_pykmip() {
    scenario("libvirt", Provider::PyKmip);
}

#[test]
fn a_guest_with_its_root_on_an_encrypted_disk_under_qemu_with_pykmip() {
    scenario("qemu", Provider::PyKmip);
}

#[test]
fn a_guest_with_its_root_on_an_encrypted_disk_under_libvirt_with_the_embedded_key_server() {
    scenario("libvirt", Provider::Embedded);
}
