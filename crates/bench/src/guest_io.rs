//! Random reads inside a guest, for `bench/guest-disks`: `QD` threads each read `BS` bytes at
//! random aligned offsets of a block device with O_DIRECT, one request at a time, for `SECONDS`
//! (so that `QD` requests are in the device's queue at once). Prints one line:
//! `guest-io: randread iops N mib_s M`. Built static, so that it runs in the busybox guest.
//!
//! `guest-io DEVICE BS QD SECONDS`

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A buffer aligned for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: the layout has a non-zero size; the pointer is checked.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Aligned { ptr, layout }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `layout.size()` bytes this struct owns.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: guest-io DEVICE BS QD SECONDS");
        std::process::exit(2);
    }
    let device = args[1].clone();
    let bs: usize = args[2].parse().expect("BS");
    let qd: usize = args[3].parse().expect("QD");
    let seconds: f64 = args[4].parse().expect("SECONDS");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&device)
        .expect("open the device");
    let size = std::fs::File::open(&device)
        .and_then(|mut f| std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)))
        .expect("the device's size");
    let blocks = size / bs as u64;
    let file = Arc::new(file);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..qd)
        .map(|t| {
            let (file, done, stop) = (file.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = Aligned::new(bs);
                // xorshift, seeded per thread
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1).wrapping_mul(0xbf58_476d);
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let at = (x % blocks) * bs as u64;
                    file.read_exact_at(buf.as_mut(), at).expect("read");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("thread");
    }
    let secs = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed) as f64;
    println!(
        "guest-io: randread iops {:.0} mib_s {:.1}",
        n / secs,
        n * bs as f64 / secs / (1 << 20) as f64
    );
}
