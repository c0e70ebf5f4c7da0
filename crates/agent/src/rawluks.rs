//! Raw LUKS1 disks without QEMU's tools: made with a header Tresor writes (`tresor-luks`, read by
//! cryptsetup and by QEMU's `luks` driver alike), opened by unsealing their volume key with the
//! disk's passphrase, and rewritten under a new key (deep rekey) by several threads that decrypt
//! and encrypt with the system's OpenSSL (the CPU's AES instructions) in large pieces. The
//! volume keys live in this process's memory only and are wiped when dropped.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tresor_luks::{Header, LuksError, SectorCipher, VolumeKey, SECTOR};

use crate::disk::{DiskError, DiskSecret};

/// What one thread reads, converts and writes at a time.
const PIECE: usize = 4 << 20;
/// A run of ciphertext that is all zeros was never written (a hole of the sparse file): it
/// stays a hole.
const HOLE_CHECK: usize = 64 << 10;

fn io(path: &Path, what: &str, e: std::io::Error) -> DiskError {
    DiskError::Tool {
        tool: "tresor".into(),
        path: path.display().to_string(),
        message: format!("cannot {what}: {e}"),
    }
}

fn luks(path: &Path, e: LuksError) -> DiskError {
    match e {
        LuksError::WrongPassphrase => DiskError::WrongKey {
            path: path.display().to_string(),
        },
        e => DiskError::Tool {
            tool: "tresor".into(),
            path: path.display().to_string(),
            message: e.to_string(),
        },
    }
}

/// Makes a raw LUKS1 disk of `size` bytes (rounded up to whole sectors) at `path`, which must
/// not exist: a new random volume key sealed by the disk's secret, the data a sparse hole.
pub fn create(path: &Path, size: u64, secret: &DiskSecret) -> Result<(), DiskError> {
    let key = VolumeKey::generate().map_err(|e| luks(path, e))?;
    create_with(path, size, secret, &key).map(|_| ())
}

fn create_with(
    path: &Path,
    size: u64,
    secret: &DiskSecret,
    key: &VolumeKey,
) -> Result<(File, Header), DiskError> {
    let passphrase = secret.passphrase();
    let f = tresor_luks::format(key, passphrase.as_bytes(), tresor_luks::MIN_ITERATIONS)
        .map_err(|e| luks(path, e))?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io(path, "create the disk", e))?;
    let size = size.div_ceil(SECTOR as u64) * SECTOR as u64;
    file.write_all_at(&f.header.encode(), 0)
        .and_then(|_| file.write_all_at(&f.material, f.header.material_range(0).start))
        .and_then(|_| file.set_len(f.header.payload_offset_bytes() + size))
        .map_err(|e| io(path, "write the disk's header", e))?;
    Ok((file, f.header))
}

/// An opened raw LUKS1 disk.
pub struct Volume {
    file: File,
    header: Header,
    key: VolumeKey,
    /// The data's size in bytes.
    size: u64,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Volume {
    /// Opens the disk at `path` with its secret: its volume key, from the first key slot the
    /// secret opens.
    pub fn open(path: &Path, secret: &DiskSecret) -> Result<Volume, DiskError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DiskError::Missing {
                    path: path.display().to_string(),
                })
            }
            Err(e) => return Err(io(path, "open the disk", e)),
        };
        let len = file
            .metadata()
            .map_err(|e| io(path, "read the disk's size", e))?
            .len();
        let passphrase = secret.passphrase();
        let (header, key) = tresor_luks::unseal(
            |at, buf| file.read_exact_at(buf, at),
            len,
            passphrase.as_bytes(),
        )
        .map_err(|e| match e {
            LuksError::Read(e) => io(path, "read the disk's header", e),
            e => luks(path, e),
        })?;
        let size = (len - header.payload_offset_bytes()) / SECTOR as u64 * SECTOR as u64;
        Ok(Volume {
            file,
            header,
            key,
            size,
        })
    }
}

/// Rewrites the raw LUKS1 disk `from` (opened with `from_secret`) as a new one at `to` under a
/// new volume key sealed by `to_secret` (deep rekey): every written piece is decrypted and
/// encrypted again by `threads` threads; holes stay holes. Progress goes to
/// [`crate::progress`]; a cancelled request stops between pieces (the caller removes `to`).
pub fn rekey(
    from: &Path,
    from_secret: &DiskSecret,
    to: &Path,
    to_secret: &DiskSecret,
    threads: usize,
) -> Result<(), DiskError> {
    let source = Volume::open(from, from_secret)?;
    let key = VolumeKey::generate().map_err(|e| luks(to, e))?;
    let (target, header) = create_with(to, source.size, to_secret, &key)?;
    let copy = Copy {
        source: &source,
        from,
        target: &target,
        to_base: header.payload_offset_bytes(),
        to,
        key: &key,
        pieces: source.size.div_ceil(PIECE as u64),
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    };
    crate::progress::copied(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let r = copy.pieces();
                    if r.is_err() {
                        // The others stop at their next piece.
                        copy.stop.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        let mut result = Ok(());
        for w in workers {
            let r = w.join().unwrap_or_else(|_| {
                Err(DiskError::Tool {
                    tool: "tresor".into(),
                    path: from.display().to_string(),
                    message: "a copying thread failed".into(),
                })
            });
            if result.is_ok() {
                result = r;
            }
        }
        result
    })?;
    target
        .sync_all()
        .map_err(|e| io(to, "write the new disk to stable storage", e))
}

/// A copy under way, shared by its threads: each takes the next piece until none is left.
struct Copy<'a> {
    source: &'a Volume,
    from: &'a Path,
    target: &'a File,
    to_base: u64,
    to: &'a Path,
    key: &'a VolumeKey,
    pieces: u64,
    next: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
}

impl Copy<'_> {
    fn pieces(&self) -> Result<(), DiskError> {
        let (from, to) = (self.from, self.to);
        let mut decrypt = SectorCipher::new(&self.source.key).map_err(|e| luks(from, e))?;
        let mut encrypt = SectorCipher::new(self.key).map_err(|e| luks(to, e))?;
        let from_base = self.source.header.payload_offset_bytes();
        let size = self.source.size;
        // Plaintext passes through it: wiped when the thread ends.
        let mut buf = zeroize::Zeroizing::new(vec![0u8; PIECE]);
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if crate::progress::cancelled() {
                return Err(DiskError::Tool {
                    tool: "tresor".into(),
                    path: from.display().to_string(),
                    message: "the copy was cancelled".into(),
                });
            }
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.pieces {
                return Ok(());
            }
            let at = i * PIECE as u64;
            let len = (size - at).min(PIECE as u64) as usize;
            let buf = &mut buf[..len];
            self.source
                .file
                .read_exact_at(buf, from_base + at)
                .map_err(|e| io(from, "read the disk", e))?;
            for (j, run) in buf.chunks_mut(HOLE_CHECK).enumerate() {
                if run.iter().all(|b| *b == 0) {
                    continue;
                }
                let pos = at + (j * HOLE_CHECK) as u64;
                let sector = pos / SECTOR as u64;
                decrypt.decrypt(run, sector).map_err(|e| luks(from, e))?;
                encrypt.encrypt(run, sector).map_err(|e| luks(to, e))?;
                self.target
                    .write_all_at(run, self.to_base + pos)
                    .map_err(|e| io(to, "write the new disk", e))?;
            }
            let d = self.done.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
            crate::progress::copied(d * 10_000 / size.max(1));
        }
    }
}

/// The threads a copy uses: one per core.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
