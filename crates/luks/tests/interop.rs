//! The crate's volumes against the standard tools, as real files: `cryptsetup` reads what it
//! formats (`luksDump`, `open --test-passphrase`, the volume key it dumps) and QEMU's `luks`
//! driver reads the data it encrypted (`qemu-io`); and it opens volumes that `cryptsetup
//! luksFormat` and `qemu-img create -f luks` made, and reads what QEMU wrote into them.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use tresor_luks::{format, Header, SectorCipher, VolumeKey, HEADER_LEN, SECTOR};

const PASSPHRASE: &str = "5e2b0c0f9e7d6a41c1d2e3f405060708090a0b0c0d0e0f101112131415161718";

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

/// Runs `cmd` with `input` on its standard input.
fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tool runs");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// `qemu-io` on a LUKS volume through QEMU's own driver, the passphrase on descriptor 3 (a
/// pipe); its output.
fn qemu_io(path: &Path, command: &str) -> String {
    let (reader, mut writer) = std::io::pipe().unwrap();
    writer.write_all(PASSPHRASE.as_bytes()).unwrap();
    drop(writer);
    let out = with_fd3(
        Command::new("qemu-io").args([
            "--object",
            "secret,id=s,file=/dev/fd/3",
            "--image-opts",
            &format!(
                "driver=luks,key-secret=s,file.driver=file,file.filename={}",
                path.display()
            ),
            "-c",
            command,
        ]),
        reader,
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "qemu-io {command}: {text}");
    text
}

/// Runs `cmd` with `fd3` as its descriptor 3.
fn with_fd3(cmd: &mut Command, fd3: std::io::PipeReader) -> Output {
    use command_fds::{CommandFdExt, FdMapping};
    cmd.fd_mappings(vec![FdMapping {
        parent_fd: std::os::fd::OwnedFd::from(fd3),
        child_fd: 3,
    }])
    .unwrap();
    cmd.output().expect("qemu-io runs")
}

/// A volume formatted by the crate with `data` encrypted at the start of its payload.
fn tresor_volume(path: &Path, key: &VolumeKey, data: &[u8], size: u64) -> Header {
    let f = format(key, PASSPHRASE.as_bytes(), 1000).unwrap();
    let file = std::fs::File::create(path).unwrap();
    file.set_len(f.header.payload_offset_bytes() + size)
        .unwrap();
    file.write_all_at(&f.header.encode(), 0).unwrap();
    file.write_all_at(&f.material, f.header.material_range(0).start)
        .unwrap();
    let mut sealed = data.to_vec();
    SectorCipher::new(key)
        .unwrap()
        .encrypt(&mut sealed, 0)
        .unwrap();
    file.write_all_at(&sealed, f.header.payload_offset_bytes())
        .unwrap();
    f.header
}

/// The crate opens the volume at `path` with the passphrase: its header, key, and its first
/// `len` bytes of data decrypted.
fn tresor_open(path: &Path, len: usize) -> (Header, VolumeKey, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap();
    let mut first = vec![0u8; HEADER_LEN];
    file.read_exact_at(&mut first, 0).unwrap();
    let header = Header::parse(&first).unwrap();
    let slot = header.active_slots().next().expect("an active slot");
    let range = header.material_range(slot);
    let mut material = vec![0u8; (range.end - range.start) as usize];
    file.read_exact_at(&mut material, range.start).unwrap();
    let key = header
        .open_slot(slot, &material, PASSPHRASE.as_bytes())
        .unwrap();
    let mut data = vec![0u8; len];
    file.read_exact_at(&mut data, header.payload_offset_bytes())
        .unwrap();
    SectorCipher::new(&key)
        .unwrap()
        .decrypt(&mut data, 0)
        .unwrap();
    (header, key, data)
}

#[test]
fn cryptsetup_and_qemu_read_what_the_crate_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.luks");
    let key = VolumeKey::generate().unwrap();
    let data: Vec<u8> = (0..64 * SECTOR).map(|i| (i % 251) as u8).collect();
    let header = tresor_volume(&path, &key, &data, 4 << 20);

    let dump = Command::new(cryptsetup())
        .args(["luksDump"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.status.success(), "{text}");
    assert!(text.contains("Version:       \t1"), "{text}");
    assert!(text.contains("xts-plain64"), "{text}");
    assert!(text.contains(&header.uuid), "{text}");
    assert!(text.contains("Key Slot 0: ENABLED"), "{text}");
    assert!(text.contains("Key Slot 1: DISABLED"), "{text}");

    let test = run_with_input(
        Command::new(cryptsetup())
            .args(["open", "--test-passphrase", "--key-file=-"])
            .arg(&path),
        PASSPHRASE.as_bytes(),
    );
    assert!(test.status.success(), "{test:?}");
    let wrong = run_with_input(
        Command::new(cryptsetup())
            .args(["open", "--test-passphrase", "--key-file=-"])
            .arg(&path),
        b"not the passphrase",
    );
    assert!(!wrong.status.success());

    // The volume key cryptsetup recovers is the crate's.
    let mk = run_with_input(
        Command::new(cryptsetup())
            .args([
                "luksDump",
                "--dump-volume-key",
                "--batch-mode",
                "--key-file=-",
            ])
            .arg(&path),
        PASSPHRASE.as_bytes(),
    );
    let text = String::from_utf8_lossy(&mk.stdout);
    assert!(
        mk.status.success(),
        "{}",
        String::from_utf8_lossy(&mk.stderr)
    );
    let dumped: String = text
        .split_once("MK dump:")
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .take(KEY_HEX_WORDS)
        .collect();
    let ours: String = key.expose().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(dumped, ours);

    // QEMU's driver reads the data through the crate's header and cipher.
    let out = qemu_io(&path, "read -v 0 48");
    let first: Vec<String> = data[..16].iter().map(|b| format!("{b:02x}")).collect();
    assert!(out.contains(&first.join(" ")), "{out}");
    qemu_io(&path, "write -P 0x6b 65536 8192");
    let (_, _, back) = tresor_open(&path, 65536 + 8192);
    assert_eq!(back[..data.len()], data[..]);
    assert!(back[65536..].iter().all(|b| *b == 0x6b));
}

/// The volume key's 64 bytes as `cryptsetup` prints them (one word per byte).
const KEY_HEX_WORDS: usize = 64;

#[test]
fn the_crate_opens_volumes_cryptsetup_and_qemu_make() {
    let dir = tempfile::tempdir().unwrap();
    // cryptsetup's LUKS1: the data at 2 MiB.
    let path = dir.path().join("cryptsetup.luks");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let made = run_with_input(
        Command::new(cryptsetup())
            .args([
                "luksFormat",
                "--type",
                "luks1",
                "--batch-mode",
                "--pbkdf-force-iterations",
                "1000",
                "--hash",
                "sha256",
                "--cipher",
                "aes-xts-plain64",
                "--key-size",
                "512",
                "--key-file=-",
            ])
            .arg(&path),
        PASSPHRASE.as_bytes(),
    );
    assert!(made.status.success(), "{made:?}");
    qemu_io(&path, "write -P 0x3c 4096 4096");
    let (header, _, data) = tresor_open(&path, 8192);
    assert_eq!(header.payload_offset, 4096);
    // (What was never written reads as noise, as on any LUKS volume.)
    assert!(data[4096..].iter().all(|b| *b == 0x3c));
    assert!(!data[..4096].iter().all(|b| *b == 0x3c));

    // QEMU's own LUKS1 (the data right after its key slots, not at 2 MiB).
    let path = dir.path().join("qemu.luks");
    // qemu-img times its key derivation by CPU time, which a busy machine now and then cannot
    // give it ("Unable to get accurate CPU usage"): tried again then.
    let mut made;
    let mut attempt = 0;
    loop {
        let (reader, mut writer) = std::io::pipe().unwrap();
        writer.write_all(PASSPHRASE.as_bytes()).unwrap();
        drop(writer);
        made = with_fd3(
            Command::new("qemu-img")
                .args([
                    "create",
                    "-f",
                    "luks",
                    "--object",
                    "secret,id=s,file=/dev/fd/3",
                    "-o",
                    "key-secret=s,iter-time=10",
                ])
                .arg(&path)
                .arg("4M"),
            reader,
        );
        attempt += 1;
        if made.status.success()
            || attempt == 6
            || !String::from_utf8_lossy(&made.stderr).contains("accurate CPU usage")
        {
            break;
        }
    }
    assert!(made.status.success(), "{made:?}");
    qemu_io(&path, "write -P 0xa5 0 65536");
    let (header, _, data) = tresor_open(&path, 65536);
    assert_ne!(header.payload_offset, 4096);
    assert!(data.iter().all(|b| *b == 0xa5));
}
