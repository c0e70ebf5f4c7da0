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
    let median = |f: &dyn Fn()| {
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
    let _ = Path::new(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}
