//! Encrypted disk benchmark: how long an encrypted disk takes to open, and how fast the agent
//! encrypts and deep-rekeys a disk, next to a plain `qemu-img convert` of the same image.
//!
//! disk-bench [--size-mib N] [--opens N]     (prints one JSON line per measurement)

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use clap::Parser;
use tresor_agent::disk::{DiskFormat, QemuTools};
use tresor_agent::diskops::{self, Change};
use tresor_agent::keycache::KeyCache;
use tresor_agent::vmfile::{DiskEntry, VmConfig, VmFile};
use tresor_core::ids::KeyRef;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    #[arg(long, default_value_t = 50)]
    opens: u32,
    /// A folder in memory (tmpfs) where the raw LUKS copies run again: the data path without
    /// the storage's own limit.
    #[arg(long)]
    memory_dir: Option<std::path::PathBuf>,
}

fn line(what: &str, value: f64, unit: &str) {
    println!(
        "{}",
        serde_json::json!({"row": what, "value": value, "unit": unit})
    );
}

fn main() {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("tresor-disk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let tools = QemuTools::default();
    let size = args.size_mib << 20;
    let cache = KeyCache::new(8).expect("key memory");
    let key = KeyRef::new("bench", "vm");
    let new_key = KeyRef::new("bench", "new");
    cache.insert(key.clone(), &[1; 32]).expect("key");
    cache.insert(new_key.clone(), &[2; 32]).expect("key");

    // A plain image full of data (written by qemu-io in 64 MiB requests).
    let mut vm =
        VmFile::new_encrypted("bench-vm", "bench", &VmConfig::default(), &key, &cache).expect("vm");
    vm.disks.push(DiskEntry {
        id: "d0".into(),
        file: "disk0.qcow2".into(),
        format: DiskFormat::Qcow2,
        size,
        key_id: None,
        wrapped_secret: None,
    });
    let plain = dir.join("disk0.qcow2");
    tools
        .create(&plain, DiskFormat::Qcow2, size, None)
        .expect("create");
    let writes: Vec<String> = (0..args.size_mib / 64)
        .map(|i| format!("write -P {} {}M 64M", 0x10 + i % 200, i * 64))
        .collect();
    let refs: Vec<&str> = writes.iter().map(String::as_str).collect();
    tools
        .io(&plain, DiskFormat::Qcow2, None, &refs)
        .expect("fill");
    vm.save(&dir).expect("save");

    // Baseline: a plain convert of the same image.
    let start = Instant::now();
    let out = Command::new("qemu-img")
        .arg("convert")
        .arg("-O")
        .arg("qcow2")
        .arg(&plain)
        .arg(dir.join("copy.qcow2"))
        .status()
        .expect("qemu-img");
    assert!(out.success());
    let secs = start.elapsed().as_secs_f64();
    line(
        "plain qemu-img convert (qcow2 -> qcow2)",
        args.size_mib as f64 / secs,
        "MiB/s",
    );
    let _ = std::fs::remove_file(dir.join("copy.qcow2"));

    let start = Instant::now();
    diskops::run(
        &dir,
        "d0",
        &Change::Encrypt { key: key.clone() },
        &cache,
        &tools,
        None,
    )
    .expect("encrypt");
    let secs = start.elapsed().as_secs_f64();
    line(
        "encrypt (qcow2 -> qcow2+LUKS, journaled)",
        args.size_mib as f64 / secs,
        "MiB/s",
    );

    let start = Instant::now();
    diskops::run(
        &dir,
        "d0",
        &Change::DeepRekey {
            key: Some(new_key.clone()),
        },
        &cache,
        &tools,
        None,
    )
    .expect("deep rekey");
    let secs = start.elapsed().as_secs_f64();
    line(
        "deep rekey (qcow2+LUKS -> qcow2+LUKS, new secret)",
        args.size_mib as f64 / secs,
        "MiB/s",
    );

    // Opening: the time qemu-io needs to open the encrypted disk and read one sector, next to a
    // plain disk, median of N.
    let vm = VmFile::load(&dir).expect("load");
    let disk = &vm.disks[0];
    let secret = vm
        .disk_secret(disk, &dir, &cache)
        .expect("secret")
        .expect("encrypted");
    let path = dir.join(&disk.file);
    let median = |f: &dyn Fn()| -> f64 {
        let mut t: Vec<f64> = (0..args.opens)
            .map(|_| {
                let s = Instant::now();
                f();
                s.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        t.sort_by(|a, b| a.total_cmp(b));
        t[t.len() / 2]
    };
    let enc = median(&|| {
        tools
            .verify(&path, DiskFormat::Qcow2Luks, &secret)
            .expect("open")
    });
    let small = dir.join("small.qcow2");
    tools
        .create(&small, DiskFormat::Qcow2, 1 << 20, None)
        .expect("create");
    let plain_open = median(&|| {
        tools
            .io(&small, DiskFormat::Qcow2, None, &["read 0 512"])
            .expect("open");
    });
    line(
        "open encrypted disk and read a sector (qemu-io, median)",
        enc,
        "ms",
    );
    line(
        "open plain disk and read a sector (qemu-io, median)",
        plain_open,
        "ms",
    );
    raw_luks(&dir, "", &tools, args.size_mib, &median);
    if let Some(m) = &args.memory_dir {
        let mem = m.join(format!("tresor-disk-bench-{}", std::process::id()));
        std::fs::create_dir_all(&mem).expect("memory dir");
        raw_luks(
            &mem,
            ", files in memory (tmpfs)",
            &tools,
            args.size_mib,
            &median,
        );
        let _ = std::fs::remove_dir_all(&mem);
    }
    let _ = Path::new(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Raw LUKS1 disks, the fast path's format: made with the agent's own header, deep-rekeyed by
/// the agent's threads, next to QEMU's `luks` driver doing the same copy (`qemu-img convert`),
/// and opened by unsealing the volume key next to opening with `qemu-io`.
fn raw_luks(
    dir: &Path,
    place: &str,
    tools: &QemuTools,
    size_mib: u64,
    median: &dyn Fn(&dyn Fn()) -> f64,
) {
    use tresor_agent::disk::DiskSecret;
    let secret = |b: u8| DiskSecret::new(zeroize::Zeroizing::new(vec![b; 32]));
    let (a, b, c) = (dir.join("a.luks"), dir.join("b.luks"), dir.join("c.luks"));
    let size = size_mib << 20;
    let start = Instant::now();
    tools
        .create(&a, DiskFormat::RawLuks, size, Some(&secret(1)))
        .expect("create");
    line(
        &format!("create a raw LUKS disk (the agent's own header){place}"),
        start.elapsed().as_secs_f64() * 1000.0,
        "ms",
    );
    // Every byte written, so that the copies below copy it all.
    let writes: Vec<String> = (0..size_mib / 64)
        .map(|i| format!("write -P {} {}M 64M", 0x10 + i % 200, i * 64))
        .collect();
    let refs: Vec<&str> = writes.iter().map(String::as_str).collect();
    tools
        .io(&a, DiskFormat::RawLuks, Some(&secret(1)), &refs)
        .expect("fill");
    let threads = tresor_agent::rawluks::threads();
    // The agent's copy and a plain copy of the same file, each twice and in turn (the storage's
    // speed wanders; each row is its better run), then QEMU's.
    let (mut fast, mut plain) = (f64::MAX, f64::MAX);
    for _ in 0..2 {
        let _ = std::fs::remove_file(&b);
        let start = Instant::now();
        tools
            .convert(
                &a,
                DiskFormat::RawLuks,
                Some(&secret(1)),
                &b,
                DiskFormat::RawLuks,
                Some(&secret(2)),
            )
            .expect("rekey");
        fast = fast.min(start.elapsed().as_secs_f64());
        let _ = std::fs::remove_file(&c);
        let start = Instant::now();
        plain_copy(&a, &c);
        plain = plain.min(start.elapsed().as_secs_f64());
    }
    line(
        &format!(
            "deep rekey, raw LUKS -> raw LUKS, the agent's {threads} threads (incl. fsync){place}"
        ),
        size_mib as f64 / fast,
        "MiB/s",
    );
    line(
        &format!("plain copy of the same file, 4 MiB pieces, no cipher (incl. fsync){place}"),
        size_mib as f64 / plain,
        "MiB/s",
    );
    let _ = std::fs::remove_file(&c);
    let start = Instant::now();
    qemu_img_rekey(&a, &c);
    line(
        &format!(
            "deep rekey, raw LUKS -> raw LUKS, qemu-img convert (QEMU's luks driver, incl. fsync){place}"
        ),
        size_mib as f64 / start.elapsed().as_secs_f64(),
        "MiB/s",
    );
    let opened = median(&|| {
        tools
            .verify(&b, DiskFormat::RawLuks, &secret(2))
            .expect("open")
    });
    line(
        &format!("open a raw LUKS disk: unseal its volume key (the agent, median){place}"),
        opened,
        "ms",
    );
}

/// `qemu-img convert` from raw LUKS to raw LUKS with new keys, its secrets through pipes, and
/// an fsync of the result as the agent does.
fn qemu_img_rekey(from: &Path, to: &Path) {
    use command_fds::{CommandFdExt, FdMapping};
    use std::io::Write;
    let pipe = |b: u8| {
        let (r, mut w) = std::io::pipe().expect("pipe");
        let hex: String = std::iter::repeat_n(format!("{b:02x}"), 32).collect();
        w.write_all(hex.as_bytes()).expect("secret");
        std::os::fd::OwnedFd::from(r)
    };
    let status = Command::new("qemu-img")
        .args([
            "convert",
            "--object",
            "secret,id=src,file=/dev/fd/3",
            "--object",
            "secret,id=dst,file=/dev/fd/4",
            "--image-opts",
            &format!(
                "driver=luks,file.filename={},key-secret=src",
                from.display()
            ),
            "-O",
            "luks",
            "-o",
            "key-secret=dst,iter-time=10",
        ])
        .arg(to)
        .fd_mappings(vec![
            FdMapping {
                parent_fd: pipe(1),
                child_fd: 3,
            },
            FdMapping {
                parent_fd: pipe(2),
                child_fd: 4,
            },
        ])
        .expect("fds")
        .status()
        .expect("qemu-img");
    assert!(status.success());
    std::fs::File::open(to)
        .and_then(|f| f.sync_all())
        .expect("fsync");
}

/// The storage's own ceiling for the copy: the same bytes read and written in the same pieces,
/// without a cipher, then fsync.
fn plain_copy(from: &Path, to: &Path) {
    use std::io::{Read, Write};
    let mut src = std::fs::File::open(from).expect("open");
    let mut dst = std::fs::File::create(to).expect("create");
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = src.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n]).expect("write");
    }
    dst.sync_all().expect("fsync");
}
