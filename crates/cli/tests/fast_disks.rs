//! The fast data path with a real guest: `tresor agent blk` serves a raw LUKS disk over
//! vhost-user to QEMU (`vhost-user-blk-pci`, the guest's memory shared), the test guest
//! (`scripts/guest/build`, under TCG) writes its marker through it, and the standard tools read
//! what it wrote: QEMU's own `luks` driver (`qemu-io`, and the guest booted again through that
//! driver, the fallback where the fast path is not available) and cryptsetup. The backend ends
//! when QEMU does.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TRESOR;

const PASSPHRASE: &str = "3f1c9a7e5b2d4c6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60";

/// A pipe carrying the passphrase, for a child's descriptor 3.
fn secret_fd() -> std::os::fd::OwnedFd {
    let (r, mut w) = std::io::pipe().unwrap();
    w.write_all(PASSPHRASE.as_bytes()).unwrap();
    r.into()
}

/// Boots the test guest with `disk_args` for its disk (and `fd3` as QEMU's descriptor 3, for
/// the fallback's secret); the guest's serial output.
fn boot(guest: &Path, disk_args: &[String], fd3: Option<std::os::fd::OwnedFd>) -> String {
    use command_fds::{CommandFdExt, FdMapping};
    let mut cmd = guest_command(guest, "console=ttyS0 quiet", disk_args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(fd) = fd3 {
        cmd.fd_mappings(vec![FdMapping {
            parent_fd: fd,
            child_fd: 3,
        }])
        .unwrap();
    }
    let mut child = cmd
        .spawn()
        .expect("qemu-system-x86_64 (scripts/setup-test-deps)");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the guest did not power off");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    out + &err
}

/// QEMU booting the test guest (TCG) with `append` on its kernel command line and `disk_args`.
fn guest_command(guest: &Path, append: &str, disk_args: &[String]) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-machine",
        "q35,accel=tcg",
        "-m",
        "256",
        "-nographic",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(guest.join("vmlinuz"))
    .arg("-initrd")
    .arg(guest.join("initrd.img"))
    .args(["-append", append])
    .args(disk_args);
    cmd
}

/// The fast path's disk arguments: the guest's memory shared with the backend, its socket.
fn fast_path(socket: &Path) -> Vec<String> {
    vec![
        "-object".into(),
        "memory-backend-memfd,id=mem,size=256M,share=on".into(),
        "-numa".into(),
        "node,memdev=mem".into(),
        "-chardev".into(),
        format!("socket,id=blk0,path={}", socket.display()),
        "-device".into(),
        "vhost-user-blk-pci,chardev=blk0,num-queues=2".into(),
    ]
}

/// Starts `tresor agent blk` on `disk`, the passphrase on its standard input, and waits for
/// its socket.
fn backend(disk: &Path, socket: &Path) -> std::process::Child {
    let _ = std::fs::remove_file(socket);
    let mut child = Command::new(TRESOR)
        .args(["agent", "blk", "--queues", "2", "--disk"])
        .arg(disk)
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(PASSPHRASE.as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the backend did not listen");
        assert!(child.try_wait().unwrap().is_none(), "the backend ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    // What holds the key (and the passphrase before it) is locked in RAM.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let locked_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(locked_kib > 0, "the backend locks no memory: {status}");
    child
}

fn marker(out: &str, verb: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.split_once(&format!("tresor-guest: {verb} ")))
        .map(|(_, m)| m.trim().to_owned())
}

#[test]
fn a_guest_writes_through_the_fast_path_and_the_standard_tools_read_it() {
    let tmp = tempfile::tempdir().unwrap();
    let guest = common::test_guest(tmp.path());
    let disk = tmp.path().join("disk.luks");
    let socket = tmp.path().join("blk.sock");
    // A raw LUKS disk as the agent makes it.
    let key = tresor_luks::VolumeKey::generate().unwrap();
    let f = tresor_luks::format(&key, PASSPHRASE.as_bytes(), tresor_luks::MIN_ITERATIONS).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::create(&disk).unwrap();
        file.write_all_at(&f.header.encode(), 0).unwrap();
        file.write_all_at(&f.material, f.header.material_range(0).start)
            .unwrap();
        file.set_len(f.header.payload_offset_bytes() + (64 << 20))
            .unwrap();
    }

    // A wrong passphrase: refused before anything is served.
    let wrong = Command::new(TRESOR)
        .args(["agent", "blk", "--disk"])
        .arg(&disk)
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"not it")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("The passphrase does not open disk"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert!(!socket.exists());

    // First boot through the fast path: the guest writes its marker.
    let mut blk = backend(&disk, &socket);
    let out = boot(&guest, &fast_path(&socket), None);
    let written = marker(&out, "wrote").unwrap_or_else(|| panic!("no marker written: {out}"));
    // The backend ends with QEMU.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = blk.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the backend outlived QEMU");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());

    // The file holds ciphertext only.
    let raw = std::fs::read(&disk).unwrap();
    assert!(!raw.windows(written.len()).any(|w| w == written.as_bytes()));

    // QEMU's own driver reads the marker.
    let mut io = Command::new("qemu-io");
    io.args([
        "--object",
        "secret,id=s,file=/dev/fd/3",
        "--image-opts",
        &format!("driver=luks,key-secret=s,file.filename={}", disk.display()),
        "-c",
        "read -v 0 64",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let io = {
        use command_fds::{CommandFdExt, FdMapping};
        io.fd_mappings(vec![FdMapping {
            parent_fd: secret_fd(),
            child_fd: 3,
        }])
        .unwrap();
        io.output().unwrap()
    };
    let text = String::from_utf8_lossy(&io.stdout);
    let ascii: String = text
        .lines()
        .filter_map(|l| l.rsplit_once("  ").map(|(_, a)| a.to_owned()))
        .collect();
    assert!(
        ascii.contains(&written.replace('-', ".")),
        "qemu-io read {text}"
    );

    // cryptsetup opens it with the passphrase.
    let cryptsetup = [
        "/usr/sbin/cryptsetup",
        "/sbin/cryptsetup",
        "/usr/bin/cryptsetup",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("cryptsetup is missing: run scripts/setup-test-deps");
    let mut c = Command::new(cryptsetup)
        .args(["open", "--test-passphrase", "--key-file=-"])
        .arg(&disk)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(PASSPHRASE.as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success());

    // The fallback: the guest through QEMU's own LUKS driver finds the marker.
    let fallback = vec![
        "-object".into(),
        "secret,id=s0,file=/dev/fd/3".into(),
        "-blockdev".into(),
        format!(
            "driver=luks,key-secret=s0,node-name=d0,file.driver=file,file.filename={}",
            disk.display()
        ),
        "-device".into(),
        "virtio-blk-pci,drive=d0".into(),
    ];
    let out = boot(&guest, &fallback, Some(secret_fd()));
    assert_eq!(marker(&out, "found"), Some(written.clone()), "{out}");

    // And through the fast path again.
    let mut blk = backend(&disk, &socket);
    let out = boot(&guest, &fast_path(&socket), None);
    assert_eq!(marker(&out, "found"), Some(written), "{out}");
    let _ = blk.wait();
}

/// A raw LUKS disk of `mib` MiB as the agent makes it, at `path`.
fn make_disk(path: &Path, mib: u64) {
    use std::os::unix::fs::FileExt;
    let key = tresor_luks::VolumeKey::generate().unwrap();
    let f = tresor_luks::format(&key, PASSPHRASE.as_bytes(), tresor_luks::MIN_ITERATIONS).unwrap();
    let file = std::fs::File::create(path).unwrap();
    file.write_all_at(&f.header.encode(), 0).unwrap();
    file.write_all_at(&f.material, f.header.material_range(0).start)
        .unwrap();
    file.set_len(f.header.payload_offset_bytes() + (mib << 20))
        .unwrap();
}

/// Sector `n` of the disk at `path`, decrypted with the passphrase (by the crate, as
/// cryptsetup would).
fn read_sector(path: &Path, n: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).unwrap();
    let mut first = [0u8; tresor_luks::HEADER_LEN];
    file.read_exact_at(&mut first, 0).unwrap();
    let header = tresor_luks::Header::parse(&first).unwrap();
    let range = header.material_range(0);
    let mut material = vec![0u8; (range.end - range.start) as usize];
    file.read_exact_at(&mut material, range.start).unwrap();
    let key = header
        .open_slot(0, &material, PASSPHRASE.as_bytes())
        .unwrap();
    let mut sector = vec![0u8; tresor_luks::SECTOR];
    file.read_exact_at(&mut sector, header.payload_offset_bytes() + n * 512)
        .unwrap();
    tresor_luks::SectorCipher::new(&key)
        .unwrap()
        .decrypt(&mut sector, n)
        .unwrap();
    sector
}

/// The backend is killed (SIGKILL) while the guest writes one sector after another with
/// O_DIRECT, saying each time the disk acknowledged one: every acknowledged sector is on the
/// disk afterwards (a write is acknowledged once it is in the file).
#[test]
fn killing_the_backend_mid_write_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let guest = common::test_guest(tmp.path());
    let disk = tmp.path().join("disk.luks");
    let socket = tmp.path().join("blk.sock");
    make_disk(&disk, 16);
    let mut blk = backend(&disk, &socket);
    let mut qemu = guest_command(
        &guest,
        "console=ttyS0 quiet tresor.stay",
        &fast_path(&socket),
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    // The serial console, line by line.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mut stdout = qemu.stdout.take().unwrap();
    let mut stdin = qemu.stdin.take().unwrap();
    // Stopped however the test ends.
    let mut qemu = common::Proc(qemu);
    std::thread::spawn(move || {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).unwrap_or(0) == 1 {
            if byte[0] == b'\n' {
                let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
                line.clear();
            } else {
                line.push(byte[0]);
            }
        }
    });
    let wait_line = |what: &str, pred: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(_) => {}
                Err(_) => panic!("the guest did not say {what}"),
            }
        }
    };
    wait_line("it stays", &|l| l.contains("tresor-guest: staying"));
    std::thread::sleep(Duration::from_millis(500));
    // Sector i gets BLOCK-i; "acked i" once dd returned (O_DIRECT: the device answered).
    stdin
        .write_all(
            b"i=1; while true; do printf 'BLOCK-%08d' $i | dd of=/dev/vda bs=512 seek=$i count=1 conv=sync oflag=direct 2>/dev/null && echo acked $i; i=$((i+1)); done\n",
        )
        .unwrap();
    stdin.flush().unwrap();
    let mut acked: Vec<u64> = Vec::new();
    let ack = |l: &str| -> Option<u64> {
        l.trim()
            .strip_prefix("acked ")
            .and_then(|n| n.trim().parse().ok())
    };
    while acked.len() < 40 {
        let l = wait_line("acked", &|l| ack(l).is_some());
        acked.push(ack(&l).unwrap());
    }
    Command::new("kill")
        .args(["-KILL", &blk.id().to_string()])
        .status()
        .unwrap();
    let _ = blk.wait();
    // What the guest still reports was answered before the kill.
    let until = Instant::now() + Duration::from_secs(2);
    while let Ok(l) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
        if let Some(n) = ack(&l) {
            acked.push(n);
        }
    }
    let _ = qemu.0.kill();
    let _ = qemu.0.wait();
    assert!(acked.len() >= 40);
    for n in &acked {
        let sector = read_sector(&disk, *n);
        let want = format!("BLOCK-{n:08}");
        assert_eq!(
            &sector[..want.len()],
            want.as_bytes(),
            "acknowledged sector {n} is not on the disk"
        );
    }
}

/// The id and arguments of each process whose command line holds all of `words`.
fn processes_with(words: &[&str]) -> Vec<(String, Vec<String>)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .strip_suffix(&[0])
                .unwrap_or(&cmdline)
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let pid = e.file_name().to_string_lossy().into_owned();
            words
                .iter()
                .all(|w| args.iter().any(|a| a == w))
                .then_some((pid, args))
        })
        .collect()
}

/// The agent's QEMU runtime serves a VM's raw LUKS disk through the fast data path under KVM
/// (the device is QEMU's `vhost-user-blk-pci`, the backend `tresor agent blk`, ended with the
/// VM), and under TCG leaves it to QEMU's own driver: TCG does not see the backend's writes into
/// guest memory, so code the guest read from the disk could run stale.
#[test]
fn the_qemu_runtime_serves_raw_luks_disks_through_the_fast_path_under_kvm_only() {
    use tresor_agent::disk::{DiskFormat, QemuTools};
    use tresor_agent::keycache::KeyCache;
    use tresor_agent::qemu::{kvm_available, QemuConfig, RunningVm};
    use tresor_agent::vmfile::{VmConfig, VmFile};
    use tresor_core::protocol::DataPath;

    let dir = tempfile::tempdir().unwrap();
    let vm_dir = dir.path().join("fast01");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let kek = tresor_core::ids::KeyRef::new("kms", "fast01-kek");
    let cache = KeyCache::new(16).unwrap();
    cache.insert(kek.clone(), &[0x5c; 32]).unwrap();
    let mut vm = VmFile::new_encrypted(
        "id-fast01",
        "fast01",
        &VmConfig {
            memory_mib: 128,
            vcpus: 2,
            ..Default::default()
        },
        &kek,
        &cache,
    )
    .unwrap();
    let secret = vm
        .add_encrypted_disk(
            "d0",
            "disk0.luks",
            DiskFormat::RawLuks,
            16 << 20,
            None,
            &cache,
        )
        .unwrap();
    let disk = vm_dir.join("disk0.luks");
    QemuTools::default()
        .create(&disk, DiskFormat::RawLuks, 16 << 20, Some(&secret))
        .unwrap();
    vm.save(&vm_dir).unwrap();
    let plan = || {
        VmFile::load(&vm_dir)
            .unwrap()
            .prepare_power_on(&vm_dir, &cache)
            .unwrap()
    };
    let disk_arg = disk.display().to_string();
    let backends = || processes_with(&["agent", "blk", &disk_arg]).len();

    // Under TCG: QEMU's driver.
    let tcg = QemuConfig {
        prefer_kvm: false,
        blk_backend: Some(TRESOR.into()),
        ..QemuConfig::default()
    };
    let mut running = RunningVm::start(&tcg, "fast01", &vm_dir, &plan()).unwrap();
    assert_eq!(running.data_paths(), vec![DataPath::Qemu]);
    assert_eq!(backends(), 0);
    let kind = running
        .human_command("qom-get /machine/peripheral/vd0 type")
        .unwrap();
    assert!(kind.contains("virtio-blk-pci"), "{kind}");
    running.power_off(Duration::from_millis(200));

    if !kvm_available() {
        eprintln!("/dev/kvm cannot be opened here: the fast path under KVM is not tried");
        return;
    }
    let kvm = QemuConfig {
        require_kvm: true,
        ..tcg
    };
    let mut running = RunningVm::start(&kvm, "fast01", &vm_dir, &plan()).unwrap();
    assert_eq!(running.data_paths(), vec![DataPath::Fast]);
    assert_eq!(backends(), 1, "one backend serves the disk");
    let kind = running
        .human_command("qom-get /machine/peripheral/vd0 type")
        .unwrap();
    assert!(kind.contains("vhost-user-blk-pci"), "{kind}");
    // A queue per virtual CPU.
    let queues = running
        .human_command("qom-get /machine/peripheral/vd0 num-queues")
        .unwrap();
    assert_eq!(queues.trim(), "2");
    // The disk's secret reached the backend through a pipe: its arguments are these only.
    for (_, args) in processes_with(&["agent", "blk", &disk_arg]) {
        let flags: Vec<&str> = args[1..].iter().map(String::as_str).collect();
        let socket = vm_dir.join("vd0.sock").display().to_string();
        assert_eq!(
            flags,
            [
                "agent",
                "blk",
                "--queues",
                "2",
                "--disk",
                &disk_arg,
                "--socket",
                &socket,
                "--serial",
                "tresor-vd0"
            ]
        );
    }
    // The backend ends with the VM.
    running.power_off(Duration::from_millis(200));
    let deadline = Instant::now() + Duration::from_secs(10);
    while backends() > 0 {
        assert!(Instant::now() < deadline, "the backend outlived the VM");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A backend that dies while the VM runs is noticed and said.
    let mut running = RunningVm::start(&kvm, "fast01", &vm_dir, &plan()).unwrap();
    let (pid, _) = processes_with(&["agent", "blk", &disk_arg]).remove(0);
    Command::new("kill").args(["-9", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while running.data_paths() != vec![DataPath::Lost] {
        assert!(Instant::now() < deadline, "a dead backend went unnoticed");
        std::thread::sleep(Duration::from_millis(50));
    }
    running.power_off(Duration::from_millis(200));
}
