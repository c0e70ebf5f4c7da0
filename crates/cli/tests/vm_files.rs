//! What boots an encrypted VM is guarded like its keys: whoever chooses the kernel, the initrd
//! or the command line of an encrypted VM reads its disks in the clear once it runs, so sending
//! them needs `Cryptographer.Access` (vSphere's "direct access" to encrypted VMs), and an image
//! for it `Cryptographer.AddDisk`. A user without them (the built-in NoCryptoAdmin role) is
//! refused before the host gets a byte, and may still do it for a VM that is not encrypted.
//! Files too large for their kind are refused with 413 before they are read. The serial console
//! of an encrypted VM needs `Cryptographer.Access` too.

mod common;

use common::Dev;

#[test]
fn boot_files_of_an_encrypted_vm_need_direct_access() {
    let dev = Dev::start(1);
    let dir = dev.dir.path();
    let config = dev.operator("NoCryptoAdmin");
    let op = |stdin: &str, args: &[&str]| dev.cli_logged_in(&config, stdin, args);

    dev.create_vm("secret01", true);
    dev.create_vm("plain01", false);
    let kernel = dir.join("evil-vmlinuz");
    std::fs::write(&kernel, b"a kernel that copies the disk elsewhere").unwrap();
    let kernel = kernel.display().to_string();
    let boot_of = |vm: &str| {
        let v = dev.vm(vm);
        let disk = std::path::PathBuf::from(v["disks"][0]["path"].as_str().unwrap());
        disk.parent().unwrap().join("boot")
    };

    for args in [
        &["vm", "upload", "secret01", "--kernel", &kernel][..],
        &["vm", "upload", "secret01", "--cmdline", "init=/bin/sh"][..],
    ] {
        let (ok, _, err) = op("", args);
        assert!(!ok, "{args:?} was allowed");
        assert!(err.contains("Cryptographer.Access"), "{err}");
    }
    let image = dir.join("image.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let (ok, _, err) = op(
        "",
        &[
            "vm",
            "upload",
            "secret01",
            "--image",
            &image.display().to_string(),
        ],
    );
    assert!(!ok && err.contains("Cryptographer.AddDisk"), "{err}");
    assert!(
        !boot_of("secret01").exists(),
        "nothing reached the encrypted VM's folder"
    );
    assert_eq!(dev.vm("secret01")["disks"].as_array().unwrap().len(), 1);

    // A VM that is not encrypted: the operator may.
    let (ok, _, err) = op("", &["vm", "upload", "plain01", "--kernel", &kernel]);
    assert!(ok, "{err}");
    assert!(boot_of("plain01").join("vmlinuz").is_file());
    // The administrator may for the encrypted one.
    dev.ok(&["vm", "upload", "secret01", "--cmdline", "console=ttyS0"]);
    assert_eq!(
        std::fs::read_to_string(boot_of("secret01").join("cmdline")).unwrap(),
        "console=ttyS0"
    );

    // An image larger than one request carries goes in pieces, and arrives whole.
    let big = dir.join("big.raw");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(65 << 20).unwrap();
    drop(f);
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
        f.seek(std::io::SeekFrom::Start((65 << 20) - 512)).unwrap();
        f.write_all(b"TRESOR-LAST-SECTOR").unwrap();
    }
    dev.ok(&[
        "vm",
        "upload",
        "plain01",
        "--image",
        &big.display().to_string(),
    ]);
    let v = dev.vm("plain01");
    assert_eq!(v["disks"].as_array().unwrap().len(), 2, "{v}");
    // Its import was a task, with its progress in bytes of the image.
    let tasks: serde_json::Value =
        serde_json::from_str(&dev.ok(&["task", "list", "-o", "json"])).unwrap();
    let import = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "import" && t["vm"] == "plain01")
        .unwrap_or_else(|| panic!("no import task: {tasks}"));
    assert_eq!(import["state"], "succeeded", "{import}");
    assert_eq!(import["progress"]["total"], 65u64 << 20, "{import}");
    assert_eq!(import["progress"]["unit"], "bytes", "{import}");
    let first = v["disks"][0]["path"].as_str().unwrap();
    let out = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            &format!("read -P 0x54 {} 1", (65u64 << 20) - 512),
            first,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("read 1/1 bytes"), "{text}");

    // The console: the operator may read a plain VM's, not an encrypted one's.
    let (ok, _, err) = op("", &["vm", "console", "plain01", "--log"]);
    assert!(ok, "{err}");
    let (ok, _, err) = op("", &["vm", "console", "secret01", "--log"]);
    assert!(!ok && err.contains("Cryptographer.Access"), "{err}");
    // Typing on a VM that is off says how to get it running.
    let (status, body) = dev.http(
        "POST",
        "/api/v1/vms/plain01/console",
        &dev.token,
        r#"{"input": "ls\n"}"#,
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string().contains("tresor vm power-on plain01"),
        "{body}"
    );

    // Too large for its kind: refused by its announced length.
    let long = "x".repeat(4096);
    let (ok, _, err) = dev.cli(&["vm", "upload", "plain01", "--cmdline", &long]);
    assert!(!ok && err.contains("larger than 2048 bytes"), "{err}");
    // An unknown kind of file.
    let (status, body) = dev.http("PUT", "/api/v1/vms/plain01/files/bios", &dev.token, "");
    assert_eq!(status, 404, "{body}");
}
