//! The fast data path of encrypted disks: a vhost-user block backend that serves a raw LUKS1
//! disk (the format `tresor-luks` writes, which cryptsetup and QEMU's `luks` driver also read)
//! to a QEMU `vhost-user-blk-pci` device. QEMU moves no data: the guest's requests reach this
//! process through shared memory, and each queue's thread reads or writes the file with
//! `pread`/`pwrite` and decrypts or encrypts with `tresor_luks::SectorCipher` (OpenSSL's AES,
//! the CPU's AES instructions). The volume key is unsealed here from the disk's passphrase and
//! lives in this process's memory only.
//!
//! What the guest sees: a virtio-blk disk of the volume's size, 512-byte sectors, several
//! queues, a volatile write cache that `FLUSH` writes to stable storage (`fdatasync`). A write is
//! acknowledged once it is in the file (the kernel's page cache): killing this process loses
//! none; losing the machine loses what the guest did not flush, as with any disk cache.
//!
//! Everything the guest puts in a request is untrusted: descriptor chains are checked (order,
//! direction, lengths, sectors within the disk) before any byte moves, and a bad one is answered
//! with an error status, never a panic.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tresor_luks::{LuksError, SectorCipher, VolumeKey, SECTOR};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{
    VhostUserBackend, VhostUserDaemon, VringRwLock, VringState, VringStateGuard,
    VringStateMutGuard, VringT,
};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Address, Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use zeroize::Zeroizing;

type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

/// The most data one request may carry, as the guest is told: segments of at most `SIZE_MAX`,
/// at most `SEG_MAX` of them (the data moves in pieces, so its size costs no memory).
const SIZE_MAX: u32 = 1 << 20;
const SEG_MAX: u32 = 128;
const MAX_REQUEST: u64 = SIZE_MAX as u64 * SEG_MAX as u64;
/// The piece of a request read, decrypted and copied (or copied, encrypted and written) at a
/// time: small enough to stay in the core's cache between the three.
const PIECE: usize = 64 << 10;
/// The requests a queue holds.
pub const QUEUE_SIZE: usize = 256;
/// The header of a virtio-blk request: type, reserved, sector.
const REQUEST_HEADER: u32 = 16;

/// Why the backend cannot serve a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlkError {
    #[error("Cannot open disk {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("Disk {path}: {source}")]
    Volume { path: String, source: LuksError },
    #[error("The passphrase does not open disk {path}")]
    WrongPassphrase { path: String },
    #[error("Cannot serve on {socket}: {message}")]
    Serve { socket: String, message: String },
    #[error(
        "Cannot keep the backend's memory out of swap (mlockall): {0}; raise its memlock limit \
         (ulimit -l, LimitMEMLOCK=) or run it as root, or let QEMU's own driver open the disk"
    )]
    Lock(std::io::Error),
    #[error("Cannot keep the backend out of core dumps: {0}")]
    DontDump(std::io::Error),
}

/// This process locks what it maps from now on: given to [`serve`], which stops that once its
/// ciphers and buffers exist (the guest's memory, mapped later, is QEMU's to manage).
#[derive(Debug)]
pub struct LockingMemory(());

/// Keeps what this process holds from now on (the passphrase it reads, the key it unseals, the
/// ciphers' key schedules, the buffers plaintext passes through) out of swap and core dumps:
/// every page it has or maps is locked in RAM as it is touched, and the process is not dumpable.
/// Call it before reading the passphrase, and give what it returns to [`serve`].
pub fn protect_memory() -> Result<LockingMemory, BlkError> {
    use rustix::mm::MlockAllFlags;
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| BlkError::DontDump(e.into()))?;
    let none = rustix::process::Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    rustix::process::setrlimit(rustix::process::Resource::Core, none)
        .map_err(|e| BlkError::DontDump(e.into()))?;
    rustix::mm::mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT)
        .map_err(|e| BlkError::Lock(e.into()))?;
    Ok(LockingMemory(()))
}

/// A raw LUKS1 disk opened for serving: its file, where its data starts, its size in sectors
/// and its volume key.
pub struct Disk {
    file: File,
    base: u64,
    sectors: u64,
    key: VolumeKey,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("sectors", &self.sectors)
            .finish_non_exhaustive()
    }
}

impl Disk {
    /// Opens the raw LUKS1 disk at `path` for reading and writing with its passphrase.
    pub fn open(path: &Path, passphrase: &[u8]) -> Result<Disk, BlkError> {
        let shown = || path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| BlkError::Open {
                path: shown(),
                source,
            })?;
        let volume = |source| BlkError::Volume {
            path: shown(),
            source,
        };
        let io = |source| BlkError::Open {
            path: shown(),
            source,
        };
        let len = file.metadata().map_err(io)?.len();
        let (header, key) =
            match tresor_luks::unseal(|at, buf| file.read_exact_at(buf, at), len, passphrase) {
                Ok(k) => k,
                Err(LuksError::WrongPassphrase) => {
                    return Err(BlkError::WrongPassphrase { path: shown() })
                }
                Err(LuksError::Read(e)) => return Err(io(e)),
                Err(e) => return Err(volume(e)),
            };
        let base = header.payload_offset_bytes();
        Ok(Disk {
            file,
            base,
            sectors: (len - base) / SECTOR as u64,
            key,
        })
    }

    /// The disk's size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }
}

/// One request's outcome: its status and how many bytes it wrote into the guest's memory.
struct Done {
    status: u8,
    written: u32,
}

/// What one queue's thread keeps: its ciphers and its buffer (plaintext passes through it:
/// wiped when the thread's state is dropped).
struct Worker {
    cipher: SectorCipher,
    buf: Zeroizing<Vec<u8>>,
}

/// The backend: one disk, `queues` queues, one thread each.
#[derive(Clone)]
pub struct Backend {
    disk: Arc<Disk>,
    queues: usize,
    workers: Arc<Vec<Mutex<Worker>>>,
    mem: Memory,
    serial: [u8; 20],
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

impl Backend {
    #[cfg(test)]
    fn disk_path_for_tests(&self) -> std::path::PathBuf {
        use std::os::fd::AsRawFd;
        std::fs::read_link(format!("/proc/self/fd/{}", self.disk.file.as_raw_fd())).unwrap()
    }

    /// A backend for `disk` with `queues` queues (at least one), sharing `mem` with the daemon.
    pub fn new(disk: Disk, queues: usize, serial: &str, mem: Memory) -> Result<Backend, BlkError> {
        let queues = queues.clamp(1, 16);
        let mut workers = Vec::with_capacity(queues);
        for _ in 0..queues {
            workers.push(Mutex::new(Worker {
                cipher: SectorCipher::new(&disk.key).map_err(|source| BlkError::Volume {
                    path: serial.to_owned(),
                    source,
                })?,
                buf: Zeroizing::new(vec![0u8; PIECE]),
            }));
        }
        let mut id = [0u8; 20];
        let n = serial.len().min(20);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Ok(Backend {
            disk: Arc::new(disk),
            queues,
            workers: Arc::new(workers),
            mem,
            serial: id,
        })
    }

    /// The virtio-blk configuration space (little-endian, as the specification lays it out).
    fn config_space(&self) -> Vec<u8> {
        let mut c = vec![0u8; 60];
        // capacity, size_max, seg_max; geometry (16..20) unused
        c[0..8].copy_from_slice(&self.disk.sectors.to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        // blk_size; physical_block_exp, alignment_offset, min_io_size, opt_io_size (24..32) zero
        c[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        // writeback, then num_queues
        c[32] = 1;
        c[34..36].copy_from_slice(&(self.queues as u16).to_le_bytes());
        c
    }

    /// Carries out the requests waiting in `vring`.
    fn process(&self, worker: &mut Worker, vring: &Vring) {
        let mem = self.mem.memory();
        loop {
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.clone());
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let written = self.execute(worker, chain);
            if let Err(e) = vring.add_used(head, written) {
                tracing::warn!(error = %e, "cannot return a request to the guest");
            }
        }
    }

    /// Checks and carries out one request; the bytes written into the guest's memory (its
    /// status byte included), 0 when the chain is too malformed to answer.
    fn execute<M>(&self, worker: &mut Worker, chain: DescriptorChain<M>) -> u32
    where
        M: std::ops::Deref<Target = GuestMemoryMmap> + Clone,
    {
        let mem = chain.memory();
        let descs: Vec<_> = chain.clone().collect();
        let (Some(first), Some(last)) = (descs.first(), descs.last()) else {
            return 0;
        };
        if descs.len() < 2
            || first.is_write_only()
            || first.len() < REQUEST_HEADER
            || !last.is_write_only()
            || last.len() < 1
        {
            return 0;
        }
        let mut header = [0u8; 16];
        if mem.read_slice(&mut header, first.addr()).is_err() {
            return 0;
        }
        let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let data = &descs[1..descs.len() - 1];
        let done = self.carry_out(worker, mem, kind, sector, data);
        // The status goes in the last byte of the last descriptor.
        let Some(status_at) = last.addr().checked_add(u64::from(last.len()) - 1) else {
            return 0;
        };
        if mem.write_obj(done.status, status_at).is_err() {
            return 0;
        }
        done.written + 1
    }

    /// Moves a request's `total` bytes between the disk (from `sector`) and the guest's buffers
    /// `data`, in pieces that stay in the core's cache from the file to the guest's memory.
    fn move_data(
        &self,
        worker: &mut Worker,
        mem: &GuestMemoryMmap,
        data: &[virtio_queue::desc::split::Descriptor],
        write: bool,
        sector: u64,
        total: u64,
    ) -> std::io::Result<()> {
        let at = self.disk.base + sector * SECTOR as u64;
        let mut done = 0u64;
        while done < total {
            let n = (total - done).min(PIECE as u64) as usize;
            let piece = &mut worker.buf[..n];
            let first = sector + done / SECTOR as u64;
            if write {
                copy_descs(mem, data, done, piece, Direction::FromGuest)?;
                worker
                    .cipher
                    .encrypt(piece, first)
                    .map_err(std::io::Error::other)?;
                self.disk.file.write_all_at(piece, at + done)?;
            } else {
                self.disk.file.read_exact_at(piece, at + done)?;
                worker
                    .cipher
                    .decrypt(piece, first)
                    .map_err(std::io::Error::other)?;
                copy_descs(mem, data, done, piece, Direction::ToGuest)?;
            }
            done += n as u64;
        }
        Ok(())
    }

    fn carry_out(
        &self,
        worker: &mut Worker,
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data: &[virtio_queue::desc::split::Descriptor],
    ) -> Done {
        let fail = |status: u32| Done {
            status: status as u8,
            written: 0,
        };
        let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
        match kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let write = kind == VIRTIO_BLK_T_OUT;
                // Data the device reads is readable, data it writes is write-only.
                if data.iter().any(|d| d.is_write_only() == write)
                    || total == 0
                    || total > MAX_REQUEST
                    || !total.is_multiple_of(SECTOR as u64)
                    || sector
                        .checked_add(total / SECTOR as u64)
                        .is_none_or(|end| end > self.disk.sectors)
                {
                    return fail(VIRTIO_BLK_S_IOERR);
                }
                let moved = self.move_data(worker, mem, data, write, sector, total);
                match moved {
                    Ok(()) => Done {
                        status: VIRTIO_BLK_S_OK as u8,
                        written: if write { 0 } else { total as u32 },
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, sector, bytes = total, write, "a disk request failed");
                        fail(VIRTIO_BLK_S_IOERR)
                    }
                }
            }
            VIRTIO_BLK_T_FLUSH => match self.disk.file.sync_data() {
                Ok(()) => fail(VIRTIO_BLK_S_OK),
                Err(e) => {
                    tracing::warn!(error = %e, "a flush failed");
                    fail(VIRTIO_BLK_S_IOERR)
                }
            },
            VIRTIO_BLK_T_GET_ID => {
                let Some(d) = data.first().filter(|d| d.is_write_only()) else {
                    return fail(VIRTIO_BLK_S_IOERR);
                };
                let n = (d.len() as usize).min(self.serial.len());
                match mem.write_slice(&self.serial[..n], d.addr()) {
                    Ok(()) => Done {
                        status: VIRTIO_BLK_S_OK as u8,
                        written: n as u32,
                    },
                    Err(_) => fail(VIRTIO_BLK_S_IOERR),
                }
            }
            _ => fail(VIRTIO_BLK_S_UNSUPP),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    FromGuest,
    ToGuest,
}

/// Copies between `piece` and the bytes of the guest's buffers `descs` that start `offset`
/// bytes into them (taken as one run).
fn copy_descs(
    mem: &GuestMemoryMmap,
    descs: &[virtio_queue::desc::split::Descriptor],
    offset: u64,
    piece: &mut [u8],
    direction: Direction,
) -> std::io::Result<()> {
    let mut start = 0u64; // where the current descriptor starts in the run
    let mut at = 0usize; // how much of `piece` is done
    for d in descs {
        let len = u64::from(d.len());
        let end = start + len;
        if at < piece.len() && end > offset + at as u64 {
            let within = offset + at as u64 - start;
            let n = ((len - within) as usize).min(piece.len() - at);
            let addr = d
                .addr()
                .checked_add(within)
                .ok_or_else(|| std::io::Error::other("a buffer beyond the guest's memory"))?;
            let part = &mut piece[at..at + n];
            match direction {
                Direction::FromGuest => mem.read_slice(part, addr),
                Direction::ToGuest => mem.write_slice(part, addr),
            }
            .map_err(std::io::Error::other)?;
            at += n;
        }
        start = end;
    }
    if at == piece.len() {
        Ok(())
    } else {
        Err(std::io::Error::other(
            "the request's buffers are shorter than its data",
        ))
    }
}

impl VhostUserBackend for Backend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.queues
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_MQ)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    /// EVENT_IDX is not offered: the guest is signalled after each round of requests.
    fn set_event_idx(&self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let space = self.config_space();
        let start = (offset as usize).min(space.len());
        let end = start.saturating_add(size as usize).min(space.len());
        space[start..end].to_vec()
    }

    fn update_memory(&self, _mem: Memory) -> std::io::Result<()> {
        // The daemon updates the memory this backend shares with it.
        Ok(())
    }

    /// Each queue's thread ends on an event of its own when QEMU goes.
    fn exit_event(
        &self,
        _thread_index: usize,
    ) -> Option<(
        vmm_sys_util::event::EventConsumer,
        vmm_sys_util::event::EventNotifier,
    )> {
        vmm_sys_util::event::new_event_consumer_and_notifier(
            vmm_sys_util::event::EventFlag::NONBLOCK,
        )
        .ok()
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.queues).map(|q| 1u64 << q).collect()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        thread_id: usize,
    ) -> std::io::Result<()> {
        if evset != EventSet::IN {
            return Err(std::io::Error::other("unexpected event on a queue"));
        }
        let Some(vring) = vrings.get(device_event as usize) else {
            return Err(std::io::Error::other("an event for no queue"));
        };
        let Some(worker) = self.workers.get(thread_id) else {
            return Err(std::io::Error::other("an event for no thread"));
        };
        let mut worker = worker.lock().unwrap_or_else(|p| p.into_inner());
        self.process(&mut worker, vring);
        vring.signal_used_queue()
    }
}

/// A queue's ring as `vhost-user-backend` keeps it, with one change: a new call event (QEMU's
/// `SET_VRING_CALL`, sent again when the guest masks or unmasks the queue's interrupt vector) is
/// signalled once at once, as QEMU's own `libvhost-user` does. QEMU does not wait for the
/// backend to take the new event before it looks at the old one for a pending interrupt, so a
/// completion signalled on the old event in between would never reach the guest; a spurious
/// interrupt only costs the guest a look at its ring.
#[derive(Clone)]
pub struct Vring(VringRwLock<Memory>);

impl std::fmt::Debug for Vring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vring")
    }
}

impl<'a> VringStateGuard<'a, Memory> for Vring {
    type G = std::sync::RwLockReadGuard<'a, VringState<Memory>>;
}

impl<'a> VringStateMutGuard<'a, Memory> for Vring {
    type G = std::sync::RwLockWriteGuard<'a, VringState<Memory>>;
}

impl VringT<Memory> for Vring {
    fn new(mem: Memory, max_queue_size: u16) -> Result<Self, virtio_queue::Error> {
        VringRwLock::new(mem, max_queue_size).map(Vring)
    }
    fn get_ref(&self) -> <Self as VringStateGuard<'_, Memory>>::G {
        self.0.get_ref()
    }
    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, Memory>>::G {
        self.0.get_mut()
    }
    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), virtio_queue::Error> {
        self.0.add_used(desc_index, len)
    }
    fn signal_used_queue(&self) -> std::io::Result<()> {
        self.0.signal_used_queue()
    }
    fn enable_notification(&self) -> Result<bool, virtio_queue::Error> {
        self.0.enable_notification()
    }
    fn disable_notification(&self) -> Result<(), virtio_queue::Error> {
        self.0.disable_notification()
    }
    fn needs_notification(&self) -> Result<bool, virtio_queue::Error> {
        self.0.needs_notification()
    }
    fn set_enabled(&self, enabled: bool) {
        self.0.set_enabled(enabled)
    }
    fn set_queue_info(
        &self,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    ) -> Result<(), virtio_queue::Error> {
        self.0.set_queue_info(desc_table, avail_ring, used_ring)
    }
    fn queue_next_avail(&self) -> u16 {
        self.0.queue_next_avail()
    }
    fn set_queue_next_avail(&self, base: u16) {
        self.0.set_queue_next_avail(base)
    }
    fn set_queue_next_used(&self, idx: u16) {
        self.0.set_queue_next_used(idx)
    }
    fn queue_used_idx(&self) -> Result<u16, virtio_queue::Error> {
        self.0.queue_used_idx()
    }
    fn set_queue_size(&self, num: u16) {
        self.0.set_queue_size(num)
    }
    fn set_queue_event_idx(&self, enabled: bool) {
        self.0.set_queue_event_idx(enabled)
    }
    fn set_queue_ready(&self, ready: bool) {
        self.0.set_queue_ready(ready)
    }
    fn set_kick(&self, file: Option<File>) {
        self.0.set_kick(file)
    }
    fn read_kick(&self) -> std::io::Result<bool> {
        self.0.read_kick()
    }
    fn set_call(&self, file: Option<File>) {
        let new = file.is_some();
        self.0.set_call(file);
        if new {
            tracing::debug!("a new call event: signalled once");
            if let Err(e) = self.0.signal_used_queue() {
                tracing::warn!(error = %e, "cannot signal the guest on its new call event");
            }
        }
    }
    fn set_err(&self, file: Option<File>) {
        self.0.set_err(file)
    }
}

/// Serves `disk` on the vhost-user socket `socket` (created; QEMU connects to it) until QEMU
/// disconnects. Its memory is protected first ([`protect_memory`]).
pub fn serve(
    disk: Disk,
    socket: &Path,
    queues: usize,
    serial: &str,
    _locking: LockingMemory,
) -> Result<(), BlkError> {
    let shown = || socket.display().to_string();
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let backend = Backend::new(disk, queues, serial, mem.clone())?;
    // What holds keys and plaintext stays locked; the guest's memory, mapped from here on, is
    // not locked by this process.
    rustix::mm::mlockall(rustix::mm::MlockAllFlags::CURRENT | rustix::mm::MlockAllFlags::ONFAULT)
        .map_err(|e| BlkError::Lock(e.into()))?;
    let mut daemon =
        VhostUserDaemon::new("tresor-blk".into(), backend, mem).map_err(|e| BlkError::Serve {
            socket: shown(),
            message: e.to_string(),
        })?;
    daemon.serve(socket).map_err(|e| BlkError::Serve {
        socket: shown(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    const PASS: &[u8] = b"test passphrase";

    /// A backend on an 8 MiB raw LUKS disk, and guest memory of 16 MiB.
    fn setup() -> (tempfile::TempDir, Backend, Worker, GuestMemoryMmap) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.luks");
        let key = VolumeKey::generate().unwrap();
        let f = tresor_luks::format(&key, PASS, tresor_luks::MIN_ITERATIONS).unwrap();
        let file = File::create(&path).unwrap();
        file.write_all_at(&f.header.encode(), 0).unwrap();
        file.write_all_at(&f.material, f.header.material_range(0).start)
            .unwrap();
        file.set_len(f.header.payload_offset_bytes() + (8 << 20))
            .unwrap();
        let disk = Disk::open(&path, PASS).unwrap();
        assert_eq!(disk.sectors(), 16384);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let backend = Backend::new(disk, 1, "serial", GuestMemoryAtomic::new(mem.clone())).unwrap();
        let worker = Worker {
            cipher: SectorCipher::new(&backend.disk.key).unwrap(),
            buf: Zeroizing::new(vec![0u8; PIECE]),
        };
        (dir, backend, worker, mem)
    }

    fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    const HEADER: u64 = 0x8000;
    const STATUS: u64 = 0x9000;
    const DATA: u64 = 0x10000;

    /// Runs one request: a header at HEADER, `data` descriptors, a status byte at STATUS.
    fn request(
        backend: &Backend,
        worker: &mut Worker,
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data: &[RawDescriptor],
    ) -> (u32, u8) {
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&kind.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&header, GuestAddress(HEADER)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let mut descs = vec![desc(HEADER, 16, false)];
        descs.extend_from_slice(data);
        descs.push(desc(STATUS, 1, true));
        let queue = MockSplitQueue::create(mem, GuestAddress(0), 16);
        let chain = queue.build_desc_chain(&descs).unwrap();
        let written = backend.execute(worker, chain);
        (written, mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    #[test]
    fn writes_and_reads_come_back_through_any_split_of_the_buffers() {
        let (_dir, backend, mut worker, mem) = setup();
        let data: Vec<u8> = (0..1536u32).map(|i| (i * 7 % 251) as u8).collect();
        mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        // Written from three buffers cut off sector boundaries.
        let (n, status) = request(
            &backend,
            &mut worker,
            &mem,
            VIRTIO_BLK_T_OUT,
            16383 - 2,
            &[
                desc(DATA, 100, false),
                desc(DATA + 100, 1000, false),
                desc(DATA + 1100, 436, false),
            ],
        );
        assert_eq!((n, status), (1, VIRTIO_BLK_S_OK as u8));
        // On the disk: ciphertext, not the data.
        let mut raw = vec![0u8; 1536];
        backend
            .disk
            .file
            .read_exact_at(&mut raw, backend.disk.base + 16381 * 512)
            .unwrap();
        assert_ne!(raw, data);
        // Read back into two other buffers.
        let back = DATA + 0x4000;
        let (n, status) = request(
            &backend,
            &mut worker,
            &mem,
            VIRTIO_BLK_T_IN,
            16381,
            &[desc(back, 513, true), desc(back + 513, 1023, true)],
        );
        assert_eq!((n, status), (1537, VIRTIO_BLK_S_OK as u8));
        let mut got = vec![0u8; 1536];
        mem.read_slice(&mut got, GuestAddress(back)).unwrap();
        assert_eq!(got, data);
        // Flush and the serial number.
        let (_, status) = request(&backend, &mut worker, &mem, VIRTIO_BLK_T_FLUSH, 0, &[]);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        let (n, status) = request(
            &backend,
            &mut worker,
            &mem,
            VIRTIO_BLK_T_GET_ID,
            0,
            &[desc(back, 20, true)],
        );
        assert_eq!((n, status), (21, VIRTIO_BLK_S_OK as u8));
        let mut id = [0u8; 6];
        mem.read_slice(&mut id, GuestAddress(back)).unwrap();
        assert_eq!(&id, b"serial");
    }

    /// A request of many pieces, its buffers cut off the pieces' boundaries.
    #[test]
    fn a_large_request_comes_back_whole() {
        let (_dir, backend, mut worker, mem) = setup();
        let len = 512 << 10;
        assert!(len > 4 * PIECE);
        let data: Vec<u8> = (0..len as u32).map(|i| (i * 31 % 253) as u8).collect();
        mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        let cuts = [
            desc(DATA, 1000, false),
            desc(DATA + 1000, 300_000, false),
            desc(DATA + 301_000, len as u32 - 301_000, false),
        ];
        let (n, status) = request(&backend, &mut worker, &mem, VIRTIO_BLK_T_OUT, 100, &cuts);
        assert_eq!((n, status), (1, VIRTIO_BLK_S_OK as u8));
        let back = DATA + len as u64;
        let (n, status) = request(
            &backend,
            &mut worker,
            &mem,
            VIRTIO_BLK_T_IN,
            100,
            &[
                desc(back, 262_145, true),
                desc(back + 262_145, len as u32 - 262_145, true),
            ],
        );
        assert_eq!((n, status), (len as u32 + 1, VIRTIO_BLK_S_OK as u8));
        let mut got = vec![0u8; len];
        mem.read_slice(&mut got, GuestAddress(back)).unwrap();
        assert!(got == data, "the data came back different");
        // A part read alone: each sector's tweak follows its place on the disk.
        let (n, status) = request(
            &backend,
            &mut worker,
            &mem,
            VIRTIO_BLK_T_IN,
            100 + 512,
            &[desc(back, 4096, true)],
        );
        assert_eq!((n, status), (4097, VIRTIO_BLK_S_OK as u8));
        let mut got = vec![0u8; 4096];
        mem.read_slice(&mut got, GuestAddress(back)).unwrap();
        assert_eq!(got[..], data[512 * 512..512 * 512 + 4096]);
    }

    /// A request as large as the device says it takes (segments of up to 1 MiB): 6 MiB here.
    #[test]
    fn a_request_of_several_whole_segments_is_taken() {
        let (_dir, backend, mut worker, mem) = setup();
        let len: usize = 6 << 20;
        let data: Vec<u8> = (0..len as u32).map(|i| (i % 241) as u8).collect();
        mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        let segments: Vec<RawDescriptor> = (0..6u64)
            .map(|i| desc(DATA + (i << 20), SIZE_MAX, false))
            .collect();
        let (_, status) = request(&backend, &mut worker, &mem, VIRTIO_BLK_T_OUT, 0, &segments);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        let (n, status) = request(
            &backend,
            &mut worker,
            &mem,
            VIRTIO_BLK_T_IN,
            0,
            &[desc(DATA + (8 << 20), len as u32, true)],
        );
        assert_eq!((n, status), (len as u32 + 1, VIRTIO_BLK_S_OK as u8));
        let mut got = vec![0u8; len];
        mem.read_slice(&mut got, GuestAddress(DATA + (8 << 20)))
            .unwrap();
        assert!(got == data, "the data came back different");
    }

    #[test]
    fn bad_requests_are_answered_with_an_error_and_touch_nothing() {
        let (_dir, backend, mut worker, mem) = setup();
        let before = std::fs::read(backend.disk_path_for_tests()).unwrap();
        let ioerr = VIRTIO_BLK_S_IOERR as u8;
        let cases: Vec<(u32, u64, Vec<RawDescriptor>, u8)> = vec![
            // Past the disk's end, and wrapping around.
            (
                VIRTIO_BLK_T_OUT,
                16383,
                vec![desc(DATA, 1024, false)],
                ioerr,
            ),
            (
                VIRTIO_BLK_T_IN,
                u64::MAX,
                vec![desc(DATA, 512, true)],
                ioerr,
            ),
            // Not whole sectors.
            (VIRTIO_BLK_T_OUT, 0, vec![desc(DATA, 500, false)], ioerr),
            // Buffers of the wrong direction.
            (VIRTIO_BLK_T_IN, 0, vec![desc(DATA, 512, false)], ioerr),
            (VIRTIO_BLK_T_OUT, 0, vec![desc(DATA, 512, true)], ioerr),
            // No data, and too much.
            (VIRTIO_BLK_T_OUT, 0, vec![], ioerr),
            (
                VIRTIO_BLK_T_IN,
                0,
                vec![desc(DATA, 65 << 20, true), desc(DATA, 65 << 20, true)],
                ioerr,
            ),
            // Outside the guest's memory.
            (VIRTIO_BLK_T_OUT, 0, vec![desc(1 << 30, 512, false)], ioerr),
            // A kind the device does not know.
            (
                99,
                0,
                vec![desc(DATA, 512, false)],
                VIRTIO_BLK_S_UNSUPP as u8,
            ),
        ];
        for (kind, sector, data, want) in cases {
            let (_, status) = request(&backend, &mut worker, &mem, kind, sector, &data);
            assert_eq!(
                status,
                want,
                "kind {kind}, sector {sector}, {} buffers",
                data.len()
            );
        }
        assert_eq!(
            std::fs::read(backend.disk_path_for_tests()).unwrap(),
            before
        );

        // Chains too malformed to answer: dropped, nothing written.
        let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        for descs in [
            vec![desc(HEADER, 8, false), desc(STATUS, 1, true)], // a short header
            vec![desc(HEADER, 16, false), desc(STATUS, 1, false)], // a read-only status
            vec![desc(HEADER, 16, true), desc(STATUS, 1, true)], // a write-only header
            // Longer than 2^32 bytes in all: the chain ends early, its "status" outside memory.
            vec![
                desc(HEADER, 16, false),
                desc(DATA, u32::MAX / 2, true),
                desc(DATA, u32::MAX / 2, true),
                desc(STATUS, 1, true),
            ],
        ] {
            let chain = queue.build_desc_chain(&descs).unwrap();
            assert_eq!(backend.execute(&mut worker, chain), 0);
        }
    }
}
