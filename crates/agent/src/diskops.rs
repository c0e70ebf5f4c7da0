//! Operations that rewrite a disk (encrypt, decrypt, deep rekey) without ever losing it.
//!
//! Each one copies the disk into a new image (`qemu-img convert`) beside the old one and switches
//! `vm.json` over to it in one atomic rename. A journal (`operation.json`) written before the copy
//! names both images; if the agent dies at any moment, [`recover`] on start looks at `vm.json`:
//! if it already names the new image, the operation is finished (the old image removed);
//! otherwise it is rolled back (the new image removed). Either way the VM opens with the old or
//! the new keys and its data is intact.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tresor_core::ids::KeyRef;

use crate::disk::{DiskError, DiskFormat, QemuTools};
use crate::keycache::KeyCache;
use crate::vmfile::{random, write_atomic, DiskEntry, VmFile, VmFileError};
use crate::wrap::{self, Purpose};

/// The journal's file name.
pub const JOURNAL: &str = "operation.json";

/// The file that records a VM-wide operation in progress (encrypt, decrypt, deep rekey): those
/// change the VM's file and each disk in turn, and one that was interrupted is finished when the
/// agent holds the VM's key again (see `Host::resume`).
pub const INTENT: &str = "vm-operation.json";

/// A VM-wide operation in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Intent {
    pub operation: Operation,
    /// The disks still to do (deep rekey; encrypt and decrypt see it from each disk).
    #[serde(default)]
    pub disks: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Operation {
    Encrypt,
    Decrypt,
    DeepRekey,
}

impl Operation {
    /// Its name in a VM's report (the server's task kinds).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Encrypt => "encrypt",
            Operation::Decrypt => "decrypt",
            Operation::DeepRekey => "deepRekey",
        }
    }
}

/// Records (atomically) that `intent` is in progress in the VM directory `dir`.
pub fn write_intent(dir: &Path, intent: &Intent) -> Result<(), DiskOpError> {
    let text = serde_json::to_vec_pretty(intent).map_err(|e| DiskOpError::Io {
        what: "write the operation record".into(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&dir.join(INTENT), &text)?;
    Ok(())
}

/// The operation in progress in `dir`, if any.
pub fn read_intent(dir: &Path) -> Result<Option<Intent>, DiskOpError> {
    let path = dir.join(INTENT);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| DiskOpError::Io {
                what: format!("read {}", path.display()),
                source: std::io::Error::other(e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DiskOpError::Io {
            what: format!("read {}", path.display()),
            source,
        }),
    }
}

/// Records that the operation in `dir` is over.
pub fn clear_intent(dir: &Path) -> Result<(), DiskOpError> {
    remove_if_exists(&dir.join(INTENT))?;
    sync_file(dir)
}

/// Why a disk operation failed (the VM is as it was).
#[derive(Debug, thiserror::Error)]
pub enum DiskOpError {
    #[error(transparent)]
    Vm(#[from] VmFileError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("Cannot {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
}

/// What to do to one disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Change {
    /// Encrypt a plain disk under `key` (the VM's KEK when the VM is encrypted).
    Encrypt { key: KeyRef },
    /// Store the disk in the clear.
    Decrypt,
    /// New secret, data re-encrypted; under `key` if given, else the disk's current KEK.
    DeepRekey { key: Option<KeyRef> },
}

/// The journal of an operation in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Journal {
    pub disk: String,
    pub old_file: String,
    pub new_file: String,
}

/// Steps at which a test may stop an operation, as a crash would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    JournalWritten,
    Converted,
    Committed,
    OldRemoved,
}

/// The name of the next generation of a disk's image, in a format of extension `ext`:
/// `disk0.qcow2` → `disk0.g1.qcow2` → `disk0.g2.luks`.
fn next_file(file: &str, ext: &str) -> String {
    let (stem, _) = file.rsplit_once('.').unwrap_or((file, ""));
    let (base, generation) = match stem.rsplit_once(".g") {
        Some((b, g)) if g.chars().all(|c| c.is_ascii_digit()) && !g.is_empty() => {
            (b, g.parse::<u64>().unwrap_or(0))
        }
        _ => (stem, 0),
    };
    format!("{base}.g{}.{ext}", generation + 1)
}

fn remove_if_exists(path: &Path) -> Result<(), DiskOpError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DiskOpError::Io {
            what: format!("remove {}", path.display()),
            source,
        }),
    }
}

fn sync_file(path: &Path) -> Result<(), DiskOpError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| DiskOpError::Io {
            what: format!("sync {}", path.display()),
            source,
        })
}

/// Runs `change` on disk `disk_id` of the VM in `dir`; `stop_after` makes it stop there, as if
/// the agent died (for tests).
pub fn run(
    dir: &Path,
    disk_id: &str,
    change: &Change,
    cache: &KeyCache,
    tools: &QemuTools,
    stop_after: Option<Step>,
) -> Result<(), DiskOpError> {
    if dir.join(JOURNAL).exists() {
        return Err(DiskOpError::Refused(format!(
            "An earlier disk operation in {} is unfinished; the agent completes or rolls it back when it starts",
            dir.display()
        )));
    }
    let vm = VmFile::load(dir)?;
    let index = vm
        .disks
        .iter()
        .position(|d| d.id == disk_id)
        .ok_or_else(|| VmFileError::NoSuchDisk {
            vm: vm.name.clone(),
            disk: disk_id.into(),
        })?;
    let old = vm.disks[index].clone();
    let old_secret = vm.disk_secret(&old, dir, cache)?;
    let encrypted = old.wrapped_secret.is_some();
    let refuse = |what: &str| {
        Err(DiskOpError::Refused(format!(
            "Disk {disk_id} of VM {} {what}",
            vm.name
        )))
    };
    // The KEK of the new image; `None` stores it in the clear.
    let key = match change {
        Change::Decrypt if !encrypted => return refuse("is not encrypted"),
        Change::Decrypt => None,
        Change::Encrypt { .. } if encrypted => return refuse("is encrypted already"),
        Change::Encrypt { key } => Some(key.clone()),
        Change::DeepRekey { .. } if !encrypted => return refuse("is not encrypted"),
        Change::DeepRekey { key } => key
            .clone()
            .or_else(|| old.key_id.clone())
            .or_else(|| vm.key_id.clone()),
    };
    // A raw LUKS disk stays one; others take the VM's format (so a deep rekey moves a qcow2
    // disk to raw LUKS once the VM's disks are to be stored so).
    let new_format = match (&key, old.format) {
        (None, _) => DiskFormat::Qcow2,
        (Some(_), DiskFormat::RawLuks) => DiskFormat::RawLuks,
        (Some(_), _) => DiskFormat::encrypted(vm.disk_format),
    };
    let new_file = next_file(&old.file, new_format.extension());
    let (new_entry, new_secret) = match key {
        None => (
            DiskEntry {
                file: new_file.clone(),
                format: new_format,
                key_id: None,
                wrapped_secret: None,
                ..old.clone()
            },
            None,
        ),
        Some(key) => {
            let secret = random(32)?;
            let wrapped = cache
                .with_key(&key, |k| wrap::wrap(k, &secret, &vm.id, Purpose::Disk(disk_id)))
                .ok_or_else(|| VmFileError::DiskKeyMissing {
                    path: dir.join(&old.file).display().to_string(),
                    key: key.clone(),
                    message: format!("The key {key} for the new disk secret is not on this host; the server sends it first"),
                })?
                .map_err(|_| VmFileError::Random)?;
            // A disk under the VM's own KEK records no key of its own.
            let own = if vm.key_id.as_ref() == Some(&key) {
                None
            } else {
                Some(key.clone())
            };
            (
                DiskEntry {
                    file: new_file.clone(),
                    format: new_format,
                    key_id: own,
                    wrapped_secret: Some(wrapped),
                    ..old.clone()
                },
                Some(crate::disk::DiskSecret::new(secret)),
            )
        }
    };
    let journal = Journal {
        disk: disk_id.into(),
        old_file: old.file.clone(),
        new_file: new_file.clone(),
    };
    let text = serde_json::to_vec_pretty(&journal).map_err(|e| DiskOpError::Io {
        what: "write the journal".into(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&dir.join(JOURNAL), &text)?;
    if stop_after == Some(Step::JournalWritten) {
        return Ok(());
    }
    let new_path = dir.join(&new_file);
    remove_if_exists(&new_path)?;
    let converted = tools.convert(
        &dir.join(&old.file),
        old.format,
        old_secret.as_ref(),
        &new_path,
        new_entry.format,
        new_secret.as_ref(),
    );
    if let Err(e) = converted {
        // Nothing was switched: roll back now.
        remove_if_exists(&new_path)?;
        remove_if_exists(&dir.join(JOURNAL))?;
        return Err(e.into());
    }
    sync_file(&new_path)?;
    if stop_after == Some(Step::Converted) {
        return Ok(());
    }
    let mut next = vm.clone();
    next.disks[index] = new_entry;
    next.save(dir)?; // the commit point
    if stop_after == Some(Step::Committed) {
        return Ok(());
    }
    remove_if_exists(&dir.join(&old.file))?;
    if stop_after == Some(Step::OldRemoved) {
        return Ok(());
    }
    remove_if_exists(&dir.join(JOURNAL))?;
    Ok(())
}

/// What recovery did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    Nothing,
    Completed(PathBuf),
    RolledBack(PathBuf),
}

/// Completes or rolls back an interrupted operation in the VM directory `dir`.
pub fn recover(dir: &Path) -> Result<Recovery, DiskOpError> {
    let journal_path = dir.join(JOURNAL);
    let text = match std::fs::read(&journal_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recovery::Nothing),
        Err(source) => {
            return Err(DiskOpError::Io {
                what: format!("read {}", journal_path.display()),
                source,
            })
        }
    };
    let journal: Journal = serde_json::from_slice(&text).map_err(|e| DiskOpError::Io {
        what: format!("read {}", journal_path.display()),
        source: std::io::Error::other(e),
    })?;
    let vm = VmFile::load(dir)?;
    let committed = vm
        .disks
        .iter()
        .any(|d| d.id == journal.disk && d.file == journal.new_file);
    let result = if committed {
        remove_if_exists(&dir.join(&journal.old_file))?;
        Recovery::Completed(dir.join(&journal.new_file))
    } else {
        remove_if_exists(&dir.join(&journal.new_file))?;
        Recovery::RolledBack(dir.join(&journal.old_file))
    };
    remove_if_exists(&journal_path)?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_of_a_disk_file() {
        assert_eq!(next_file("disk0.qcow2", "qcow2"), "disk0.g1.qcow2");
        assert_eq!(next_file("disk0.g1.qcow2", "luks"), "disk0.g2.luks");
        assert_eq!(next_file("data.g9.img", "qcow2"), "data.g10.qcow2");
        assert_eq!(next_file("raw", "luks"), "raw.g1.luks");
    }
}
