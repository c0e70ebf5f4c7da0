//! Files sent to a VM piece by piece: an image imported as its encrypted boot disk (read back
//! through QEMU's LUKS driver, ciphertext only on disk), boot files put in place, and what is
//! refused: pieces out of order, too much, an image with a backing file (it could name any file
//! of the host), a running VM.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

mod common;
use common::{failed, key};

use tresor_agent::disk::{DiskFormat, QemuTools};
use tresor_agent::host::{Host, HostConfig};
use tresor_agent::vmfile::VmFile;
use tresor_core::protocol::{
    Chunk, Command, DiskSpec, KeyMaterial, Reply, UploadKind, VmReport, VmSpec,
};

fn host(dir: &Path) -> Host {
    Host::open(common::config_tcg(dir)).unwrap()
}

fn host_with_seeds(dir: &Path, seed_dir: PathBuf) -> Host {
    Host::open(HostConfig {
        seed_dir,
        ..common::config_tcg(dir)
    })
    .unwrap()
}

fn reply_vm(reply: Reply) -> VmReport {
    match reply {
        Reply::Vm { vm } => vm,
        other => panic!("{other:?}"),
    }
}

/// Sends `bytes` as an upload in pieces of `piece` bytes; the last reply.
fn send(h: &mut Host, vm: &str, kind: UploadKind, bytes: &[u8], piece: usize) -> Reply {
    let mut offset = 0;
    loop {
        let end = (offset + piece).min(bytes.len());
        let reply = h.handle(Command::Upload {
            vm: vm.into(),
            kind,
            offset: offset as u64,
            data: Chunk(bytes[offset..end].to_vec()),
            done: end == bytes.len(),
        });
        if end == bytes.len() || matches!(reply, Reply::Failed { .. }) {
            return reply;
        }
        offset = end;
    }
}

fn encrypted_vm(h: &mut Host, name: &str) -> (PathBuf, KeyMaterial) {
    let vm_key = key("vm-kek", 1);
    assert!(!matches!(
        h.handle(Command::EnableEncryption {
            host_key: key("host-key", 9)
        }),
        Reply::Failed { .. }
    ));
    assert!(!matches!(
        h.handle(Command::PushKeys {
            keys: vec![vm_key.clone()]
        }),
        Reply::Failed { .. }
    ));
    let report = reply_vm(h.handle(Command::CreateVm {
        spec: VmSpec {
            disk_format: Default::default(),
            id: None,
            name: name.into(),
            memory_mib: 64,
            vcpus: 1,
            disks: vec![DiskSpec {
                size: 1 << 20,
                own_key: None,
            }],
            key: Some(vm_key.key.clone()),
            networks: Vec::new(),
        },
    }));
    (PathBuf::from(report.path), vm_key)
}

#[test]
fn an_image_becomes_the_encrypted_boot_disk_and_boot_files_go_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = host(tmp.path());
    let (dir, _) = encrypted_vm(&mut h, "web01");

    // A raw image of 3 MiB with a pattern at 1 MiB, sent in pieces of 700 KiB.
    let marker = b"TRESOR-IMAGE-MARKER-3f1c";
    let mut image = vec![0u8; 3 << 20];
    image[1 << 20..(1 << 20) + marker.len()].copy_from_slice(marker);
    let report = reply_vm(send(&mut h, "web01", UploadKind::Image, &image, 700 << 10));
    assert_eq!(report.disks.len(), 2, "{report:?}");
    assert!(
        report.disks[0].ends_with("disk1.qcow2"),
        "the image is the first disk: {report:?}"
    );
    assert!(
        !dir.join(".upload-image").exists(),
        "the staged image is gone"
    );

    // On disk, ciphertext; through QEMU's LUKS driver with the VM's key, the image.
    let file = VmFile::load(&dir).unwrap();
    assert_eq!(file.disks[0].format, DiskFormat::Qcow2Luks);
    assert_eq!(file.disks[0].size, 3 << 20);
    let stored = std::fs::read(dir.join("disk1.qcow2")).unwrap();
    assert!(!stored.windows(marker.len()).any(|w| w == marker));
    let plan = file.prepare_power_on(&dir, &h.cache).unwrap();
    let read = QemuTools::default()
        .io(
            &plan.disks[0].path,
            DiskFormat::Qcow2Luks,
            plan.disks[0].secret.as_ref(),
            &[&format!("read -v {} {}", 1 << 20, marker.len())],
        )
        .unwrap();
    assert!(
        read.contains("54 52 45 53 4f 52 2d 49 4d 41 47 45 2d 4d 41 52"),
        "{read}"
    );

    // Boot files.
    reply_vm(send(
        &mut h,
        "web01",
        UploadKind::Kernel,
        b"not really a kernel",
        8,
    ));
    reply_vm(send(
        &mut h,
        "web01",
        UploadKind::Cmdline,
        b"console=ttyS0 quiet",
        100,
    ));
    assert_eq!(
        std::fs::read(dir.join("boot/vmlinuz")).unwrap(),
        b"not really a kernel"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("boot/cmdline")).unwrap(),
        "console=ttyS0 quiet"
    );
    let (code, _) = failed(send(&mut h, "web01", UploadKind::Cmdline, b"a\nb", 100));
    assert_eq!(code, "badCmdline");
    let (code, _) = failed(send(
        &mut h,
        "web01",
        UploadKind::Cmdline,
        &vec![b'a'; 3000],
        4096,
    ));
    assert_eq!(code, "tooLarge");
}

#[test]
fn pieces_out_of_order_and_images_that_reach_outside_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = host(tmp.path());
    let (dir, _) = encrypted_vm(&mut h, "web01");

    // A piece for a later offset than the upload has reached.
    let (code, message) = failed(h.handle(Command::Upload {
        vm: "web01".into(),
        kind: UploadKind::Kernel,
        offset: 10,
        data: Chunk(vec![1; 10]),
        done: false,
    }));
    assert_eq!(code, "uploadOutOfOrder", "{message}");

    // A qcow2 image whose backing file is a file of the host: its data must not become the VM's.
    let secret_file = tmp.path().join("host-secret");
    std::fs::write(&secret_file, vec![b'S'; 1 << 20]).unwrap();
    let evil = tmp.path().join("evil.qcow2");
    let status = Process::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&secret_file)
        .arg(&evil)
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&evil).unwrap();
    let (code, message) = failed(send(&mut h, "web01", UploadKind::Image, &bytes, 1 << 20));
    assert_eq!(code, "disk", "{message}");
    assert!(message.contains("backing file"), "{message}");
    assert_eq!(
        VmFile::load(&dir).unwrap().disks.len(),
        1,
        "no disk was added"
    );
    assert!(!dir.join(".upload-image").exists());

    // Something that is not an image of a format Tresor imports: a raw image is anything, so a
    // vmdk header stands in.
    let vmdk = tmp.path().join("disk.vmdk");
    let status = Process::new("qemu-img")
        .args(["create", "-q", "-f", "vmdk"])
        .arg(&vmdk)
        .arg("1M")
        .status()
        .unwrap();
    assert!(status.success());
    let (code, message) = failed(send(
        &mut h,
        "web01",
        UploadKind::Image,
        &std::fs::read(&vmdk).unwrap(),
        1 << 20,
    ));
    assert_eq!(code, "disk", "{message}");
    assert!(message.contains("format vmdk"), "{message}");

    // An unknown VM.
    let (code, _) = failed(send(&mut h, "nope", UploadKind::Kernel, b"x", 1));
    assert_eq!(code, "noSuchVm");
}

#[test]
fn cloud_init_files_are_checked_and_a_seed_never_goes_to_a_disk() {
    let tmp = tempfile::tempdir().unwrap();
    // Seeds would go to a folder on disk: refused at power-on, with what to mount.
    let mut h = host_with_seeds(tmp.path(), tmp.path().join("seeds"));
    let (dir, _) = encrypted_vm(&mut h, "web01");
    let (code, message) = failed(send(
        &mut h,
        "web01",
        UploadKind::SshKey,
        b"not a key at all\n",
        100,
    ));
    assert_eq!(code, "badFile", "{message}");
    reply_vm(send(
        &mut h,
        "web01",
        UploadKind::SshKey,
        b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI test@host\n",
        100,
    ));
    reply_vm(send(
        &mut h,
        "web01",
        UploadKind::UserData,
        b"#cloud-config\npassword: hunter2\n",
        100,
    ));
    // Sealed: neither is readable in the VM's file.
    let text = std::fs::read_to_string(dir.join("vm.json")).unwrap();
    assert!(
        !text.contains("hunter2") && !text.contains("AAAAC3Nza"),
        "{text}"
    );
    let (code, message) = failed(h.handle(Command::PowerOn { vm: "web01".into() }));
    assert_eq!(code, "hostNotSafe", "{message}");
    assert!(message.contains("mount -t tmpfs"), "{message}");
    assert!(!tmp.path().join("seeds/web01.img").exists());
}
