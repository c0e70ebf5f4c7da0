//! Memory for keys: one region that is locked in RAM (never swapped), left out of core dumps, and
//! wiped slot by slot when a key is dropped. The only module of the agent with `unsafe` code.

#![allow(unsafe_code)]

use std::sync::{Arc, Mutex};

/// The largest key a slot holds (bytes).
pub const SLOT_LEN: usize = 64;

/// Why protected memory could not be had.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("Cannot map memory for keys: {0}")]
    Map(std::io::Error),
    #[error("Cannot lock key memory in RAM (mlock): {0}; raise the agent's memlock limit (ulimit -l, LimitMEMLOCK=)")]
    Lock(std::io::Error),
    #[error("Cannot exclude key memory from core dumps: {0}")]
    DontDump(std::io::Error),
    #[error("The key memory is full ({0} keys); raise keys.capacity in the agent configuration")]
    Full(usize),
    #[error("A key of {0} bytes is longer than {SLOT_LEN} bytes")]
    TooLong(usize),
}

struct Region {
    ptr: *mut u8,
    len: usize,
    used: Mutex<Vec<bool>>,
}

// SAFETY: the region is only touched through slots, and each slot belongs to one `Secret`, which
// is the only owner of its bytes; the slot table is behind a mutex.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` come from the successful mmap in `SecretMemory::new`; every
        // `Secret` holds an `Arc<Region>`, so no slot outlives the mapping.
        unsafe {
            std::ptr::write_bytes(self.ptr, 0, self.len);
            libc::munlock(self.ptr.cast(), self.len);
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// A locked, non-dumpable region for `capacity` keys.
#[derive(Clone)]
pub struct SecretMemory {
    region: Arc<Region>,
}

impl std::fmt::Debug for SecretMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretMemory({} slots)", self.region.len / SLOT_LEN)
    }
}

impl SecretMemory {
    pub fn new(capacity: usize) -> Result<SecretMemory, MemoryError> {
        let len = (capacity.max(1) * SLOT_LEN).div_ceil(4096) * 4096;
        // SAFETY: an anonymous private mapping; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MemoryError::Map(std::io::Error::last_os_error()));
        }
        let region = Region {
            ptr: ptr.cast(),
            len,
            used: Mutex::new(vec![false; len / SLOT_LEN]),
        };
        // SAFETY: `ptr..ptr+len` is the mapping made above.
        if unsafe { libc::mlock(ptr, len) } != 0 {
            return Err(MemoryError::Lock(std::io::Error::last_os_error()));
        }
        // SAFETY: as above.
        if unsafe { libc::madvise(ptr, len, libc::MADV_DONTDUMP) } != 0 {
            return Err(MemoryError::DontDump(std::io::Error::last_os_error()));
        }
        Ok(SecretMemory {
            region: Arc::new(region),
        })
    }

    /// Copies `bytes` into a free slot.
    pub fn store(&self, bytes: &[u8]) -> Result<Secret, MemoryError> {
        if bytes.len() > SLOT_LEN {
            return Err(MemoryError::TooLong(bytes.len()));
        }
        let index = {
            let mut used = self.region.used.lock().unwrap_or_else(|p| p.into_inner());
            let i = used
                .iter()
                .position(|u| !u)
                .ok_or(MemoryError::Full(used.len()))?;
            used[i] = true;
            i
        };
        let secret = Secret {
            region: self.region.clone(),
            index,
            len: bytes.len(),
        };
        // SAFETY: slot `index` lies inside the region and is ours alone (marked used above).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.region.ptr.add(index * SLOT_LEN),
                bytes.len(),
            );
        }
        Ok(secret)
    }

    /// How many keys are stored.
    pub fn in_use(&self) -> usize {
        self.region
            .used
            .lock()
            .map(|u| u.iter().filter(|x| **x).count())
            .unwrap_or(0)
    }
}

/// A key in protected memory; wiped when dropped. `Debug` never shows it.
pub struct Secret {
    region: Arc<Region>,
    index: usize,
    len: usize,
}

impl Secret {
    /// The key's bytes, for as long as the borrow lasts.
    pub fn expose(&self) -> &[u8] {
        // SAFETY: the slot lies inside the region, holds `len` initialised bytes, and is not
        // written while this `Secret` exists.
        unsafe { std::slice::from_raw_parts(self.region.ptr.add(self.index * SLOT_LEN), self.len) }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.len)
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // SAFETY: the slot is ours until it is marked free below.
        unsafe {
            std::ptr::write_bytes(self.region.ptr.add(self.index * SLOT_LEN), 0, SLOT_LEN);
        }
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut used) = self.region.used.lock() {
            used[self.index] = false;
        }
    }
}

/// An allocator that wipes every block it frees, so that what a library held and let go (TLS
/// records that carried keys, AES key schedules, parsed messages) does not stay in the heap. The
/// `tresor` binary's allocator wraps its real one with it: the server, the key server and the
/// agent all pass keys through code that does not wipe its buffers.
#[derive(Debug, Default)]
pub struct Wiping<A>(pub A);

// SAFETY: every method forwards to the inner allocator with the caller's pointer and layout
// unchanged; `dealloc` first writes zeros over the block's `layout.size()` bytes, which the
// caller guarantees belong to it. `realloc` is the trait's default (allocate, copy, `dealloc`),
// so that a block that moves is wiped too.
unsafe impl<A: std::alloc::GlobalAlloc> std::alloc::GlobalAlloc for Wiping<A> {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded as given.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded as given.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the block is `layout.size()` bytes at `ptr`, still owned by the caller. The
        // inner allocator's `dealloc` is opaque to the compiler (mimalloc's is a C function), and
        // the fence keeps the wipe before it, so the zeros are written.
        unsafe {
            std::ptr::write_bytes(ptr, 0, layout.size());
            std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
            self.0.dealloc(ptr, layout)
        }
    }
}

/// Overwrites the part of this thread's stack below the caller with zeros: the frames of the
/// work just done there (AES key schedules, unwrapped data keys, secrets on their way to QEMU)
/// are gone. Called after each piece of work that used keys.
#[inline(never)]
pub fn scrub_stack() {
    let mut scratch = [0u8; 256 * 1024];
    // Written and read through an opaque reference, so that it is not optimised away.
    std::hint::black_box(&mut scratch);
}

/// Makes the process unable to dump core or be read through ptrace by others of its user.
pub fn harden_process() -> Result<(), std::io::Error> {
    // SAFETY: plain system calls with constant arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::setrlimit(libc::RLIMIT_CORE, &none) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Keeps every page the agent has or maps in RAM (`mlockall`, locked as each is touched): the
/// volume keys and key schedules of the disk work it does itself (a deep rekey of a raw LUKS
/// disk), and the plaintext passing through its buffers, are never swapped out, as the keys in
/// [`SecretMemory`] are not. The processes it starts do not inherit this. Locking takes a
/// memory-lock limit large enough (`LimitMEMLOCK=infinity`, the package's unit) or root's
/// `CAP_IPC_LOCK`.
pub fn lock_all_memory() -> Result<(), std::io::Error> {
    use rustix::mm::MlockAllFlags;
    rustix::mm::mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT)
        .map_err(std::io::Error::from)
}

/// Whether `path` lies on a memory file system (tmpfs or ramfs): what is written there never
/// reaches a disk (swap aside, which the agent's own key memory avoids by locking).
pub fn on_memory_fs(path: &std::path::Path) -> std::io::Result<bool> {
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    let fs = rustix::fs::statfs(path)?;
    Ok([TMPFS_MAGIC, RAMFS_MAGIC].contains(&(fs.f_type as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_stored_wiped_and_their_slots_reused() {
        let mem = SecretMemory::new(4).unwrap();
        let a = mem.store(&[7u8; 32]).unwrap();
        let b = mem.store(&[9u8; 16]).unwrap();
        assert_eq!(a.expose(), &[7u8; 32]);
        assert_eq!(b.expose(), &[9u8; 16]);
        assert_eq!(mem.in_use(), 2);
        let index = a.index;
        drop(a);
        // The slot is zero and free again.
        let c = mem.store(&[]).unwrap();
        assert_eq!(c.index, index);
        let raw =
            unsafe { std::slice::from_raw_parts(mem.region.ptr.add(index * SLOT_LEN), SLOT_LEN) };
        assert!(raw.iter().all(|x| *x == 0));
        assert!(format!("{b:?}").contains("<16 bytes>"));
    }

    #[test]
    fn the_region_is_locked_in_memory() {
        let mem = SecretMemory::new(8).unwrap();
        let _s = mem.store(&[1u8; 32]).unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let locked_kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmLck:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(locked_kb >= 4, "VmLck {locked_kb} kB");
    }

    #[test]
    fn capacity_and_length_limits_are_errors() {
        let mem = SecretMemory::new(1).unwrap();
        let slots = mem.region.len / SLOT_LEN;
        let held: Vec<_> = (0..slots).map(|_| mem.store(&[1]).unwrap()).collect();
        assert!(matches!(mem.store(&[1]), Err(MemoryError::Full(_))));
        drop(held);
        assert!(matches!(
            mem.store(&[0u8; 65]),
            Err(MemoryError::TooLong(65))
        ));
    }
}
