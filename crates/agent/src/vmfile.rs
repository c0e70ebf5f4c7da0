//! A VM on disk: a directory with `vm.json` and its disk images.
//!
//! The config names the provider and key id of every KEK the VM needs (`keyId` for the home,
//! each disk's own `keyId`), so a host with the files and the keys can run the VM, and a new
//! server can adopt it. The home data key, wrapped by the VM's KEK, seals the private part of the
//! config; each disk's random secret (its LUKS passphrase) is wrapped by the disk's KEK, the VM's
//! unless the disk was given its own. Without its home key a VM is invalid (its sealed config
//! cannot be read); with the home key but without a disk key, only that disk cannot open.
//!
//! Every change of `vm.json` is atomic: written to a temporary file, synced, renamed over the old
//! one, and the directory synced.

use std::io::Write;
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tresor_core::ids::KeyRef;
use tresor_core::vm::KeyUse;
use tresor_core::Lang;
use zeroize::Zeroizing;

use crate::disk::{DiskFormat, DiskSecret};
use crate::keycache::KeyCache;
use crate::wrap::{self, Purpose, WrapError};
use tresor_core::protocol::{DiskLayout, NetworkSpec, MAX_CMDLINE};

/// The name of a VM's config file.
pub const CONFIG_FILE: &str = "vm.json";
const FORMAT: &str = "tresor-vm/1";

/// Why a VM file cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum VmFileError {
    #[error("Cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a Tresor VM config: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("The home key {key} of VM {vm} is not on this host; the VM is invalid until the server sends it (tresor vm unlock {vm})")]
    HomeKeyMissing { vm: String, key: KeyRef },
    /// The exact message of a disk whose key is missing.
    #[error("{message}")]
    DiskKeyMissing {
        path: String,
        key: KeyRef,
        message: String,
    },
    #[error("The key {key} does not open the {what} of VM {vm}: it is another key, or the file was copied from another VM")]
    WrongKey {
        vm: String,
        key: KeyRef,
        what: String,
    },
    #[error("VM {vm} has no disk {disk}")]
    NoSuchDisk { vm: String, disk: String },
    #[error("The system random number generator failed")]
    Random,
}

/// The part of a VM's config that is sealed under its home key when the VM is encrypted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmConfig {
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Its network interfaces, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkSpec>,
    /// cloud-init user data, given to the guest in a NoCloud seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// SSH public keys for cloud-init.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            memory_mib: 256,
            vcpus: 1,
            networks: Vec::new(),
            user_data: None,
            ssh_keys: Vec::new(),
        }
    }
}

/// The MAC address of interface `index` of VM `id`: QEMU's prefix and three bytes from the VM's
/// id, so that it stays the same across power-ons and differs between VMs.
pub fn mac_address(id: &str, index: usize) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{id}/{index}").as_bytes());
    let b = digest.as_ref();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// One disk in `vm.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskEntry {
    /// Stable within the VM; part of the disk secret's wrapping context.
    pub id: String,
    /// The image file, relative to the VM directory.
    pub file: String,
    pub format: DiskFormat,
    pub size: u64,
    /// The KEK of this disk; `None` means the VM's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_secret: Option<String>,
}

/// A disk ready to open: its image, format and secret.
#[derive(Debug)]
pub struct OpenDisk {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub secret: Option<DiskSecret>,
}

/// What power-on needs.
#[derive(Debug)]
pub struct PowerOnPlan {
    /// The VM's id (`vm.json`).
    pub id: String,
    pub config: VmConfig,
    pub disks: Vec<OpenDisk>,
    /// A kernel to boot directly, when the VM's folder holds one.
    pub boot: Option<DirectBoot>,
    /// The cloud-init seed image, attached read-only after the disks.
    pub seed: Option<PathBuf>,
}

/// Direct kernel boot: `boot/vmlinuz` in the VM's folder, with `boot/initrd.img` and the kernel
/// command line of `boot/cmdline` when they are there. The files are the VM's own, like its
/// disks; no path comes from outside the folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

/// The kernel command line when `boot/cmdline` names none: the serial console, and a panic ends
/// the VM instead of hanging it.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1";

impl DirectBoot {
    /// The direct boot of the VM in `dir`, if its folder has a kernel.
    pub fn of(dir: &Path) -> Result<Option<DirectBoot>, VmFileError> {
        let boot = dir.join("boot");
        let kernel = boot.join("vmlinuz");
        if !kernel.is_file() {
            return Ok(None);
        }
        let initrd = Some(boot.join("initrd.img")).filter(|p| p.is_file());
        let cmdline = match std::fs::read_to_string(boot.join("cmdline")) {
            Ok(text) => {
                let text = text.trim().to_owned();
                if text.len() > MAX_CMDLINE || text.chars().any(char::is_control) {
                    return Err(VmFileError::Parse {
                        path: boot.join("cmdline"),
                        message: format!(
                            "a kernel command line is one line of at most {MAX_CMDLINE} characters"
                        ),
                    });
                }
                text
            }
            Err(_) => DEFAULT_CMDLINE.to_owned(),
        };
        Ok(Some(DirectBoot {
            kernel,
            initrd,
            cmdline,
        }))
    }
}

/// `vm.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmFile {
    pub format: String,
    pub id: String,
    pub name: String,
    pub encrypted: bool,
    /// The VM's KEK (`config.keyId` of the reference API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_home_key: Option<String>,
    /// The private config sealed under the home key (hex), when encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_config: Option<String>,
    /// The config in the clear, when not encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<VmConfig>,
    pub disks: Vec<DiskEntry>,
    /// How its new encrypted disks are stored (not secret: kept in the clear).
    #[serde(default, skip_serializing_if = "DiskLayout::is_default")]
    pub disk_format: DiskLayout,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.is_ascii() || !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Random bytes, wiped when dropped.
pub fn random(len: usize) -> Result<Zeroizing<Vec<u8>>, VmFileError> {
    let mut b = Zeroizing::new(vec![0u8; len]);
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| VmFileError::Random)?;
    Ok(b)
}

fn seal_config(home: &[u8], vm_id: &str, config: &VmConfig) -> Result<String, VmFileError> {
    let key =
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, home).map_err(|_| VmFileError::Random)?);
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| VmFileError::Random)?;
    // The plaintext is sealed in place; what remains in the buffer is ciphertext.
    let mut data = serde_json::to_vec(config).map_err(|_| VmFileError::Random)?;
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(format!("tresor/config/v1\0{vm_id}")),
        &mut data,
    )
    .map_err(|_| VmFileError::Random)?;
    Ok(format!("{}{}", hex(&nonce), hex(&data)))
}

fn open_config(home: &[u8], vm_id: &str, sealed: &str) -> Option<VmConfig> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, home).ok()?);
    let bytes = unhex(sealed)?;
    if bytes.len() < NONCE_LEN + 16 {
        return None;
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[..NONCE_LEN]);
    let mut data = Zeroizing::new(bytes[NONCE_LEN..].to_vec());
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(format!("tresor/config/v1\0{vm_id}")),
            &mut data,
        )
        .ok()?;
    serde_json::from_slice(plain).ok()
}

/// Writes `contents` to `path` atomically: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), VmFileError> {
    let err = |source| VmFileError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

impl VmFile {
    /// Reads `dir/vm.json`.
    pub fn load(dir: &Path) -> Result<VmFile, VmFileError> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| VmFileError::Read {
            path: path.clone(),
            source,
        })?;
        let file: VmFile = serde_json::from_str(&text).map_err(|e| VmFileError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if file.format != FORMAT {
            return Err(VmFileError::Parse {
                path,
                message: format!("unknown format {:?}", file.format),
            });
        }
        Ok(file)
    }

    /// Writes `dir/vm.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), VmFileError> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| VmFileError::Write {
            path: dir.join(CONFIG_FILE),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&dir.join(CONFIG_FILE), &text)
    }

    /// The format of a new disk of this VM: its disk format when it is encrypted, plain qcow2
    /// when not.
    pub fn new_disk_format(&self) -> DiskFormat {
        if self.encrypted {
            DiskFormat::encrypted(self.disk_format)
        } else {
            DiskFormat::Qcow2
        }
    }

    /// A new, unencrypted VM.
    pub fn new_plain(id: &str, name: &str, config: VmConfig) -> VmFile {
        VmFile {
            disk_format: DiskLayout::default(),
            format: FORMAT.into(),
            id: id.into(),
            name: name.into(),
            encrypted: false,
            key_id: None,
            wrapped_home_key: None,
            sealed_config: None,
            config: Some(config),
            disks: Vec::new(),
        }
    }

    /// A new VM encrypted under `kek` (which must be in the key cache): a fresh home key seals its
    /// config.
    pub fn new_encrypted(
        id: &str,
        name: &str,
        config: &VmConfig,
        kek: &KeyRef,
        cache: &KeyCache,
    ) -> Result<VmFile, VmFileError> {
        let home = random(32)?;
        let wrapped = cache
            .with_key(kek, |k| wrap::wrap(k, &home, id, Purpose::Home))
            .ok_or_else(|| VmFileError::HomeKeyMissing {
                vm: name.into(),
                key: kek.clone(),
            })?
            .map_err(|e| wrap_error(e, name, kek, "home key"))?;
        Ok(VmFile {
            disk_format: DiskLayout::default(),
            format: FORMAT.into(),
            id: id.into(),
            name: name.into(),
            encrypted: true,
            key_id: Some(kek.clone()),
            wrapped_home_key: Some(wrapped),
            sealed_config: Some(seal_config(&home, id, config)?),
            config: None,
            disks: Vec::new(),
        })
    }

    /// Every KEK the VM needs, with what each is for.
    pub fn keys_needed(&self) -> Vec<(KeyRef, Vec<KeyUse>)> {
        let mut out: Vec<(KeyRef, Vec<KeyUse>)> = Vec::new();
        let mut add = |k: &KeyRef, u: KeyUse| match out.iter_mut().find(|(r, _)| r == k) {
            Some((_, uses)) => uses.push(u),
            None => out.push((k.clone(), vec![u])),
        };
        if let Some(k) = &self.key_id {
            add(k, KeyUse::Home);
        }
        for d in &self.disks {
            if d.wrapped_secret.is_some() {
                if let Some(k) = d.key_id.as_ref().or(self.key_id.as_ref()) {
                    add(k, KeyUse::Disk(d.file.clone()));
                }
            }
        }
        out
    }

    fn home_key(&self, cache: &KeyCache) -> Result<Zeroizing<Vec<u8>>, VmFileError> {
        let (Some(kek), Some(wrapped)) = (&self.key_id, &self.wrapped_home_key) else {
            return Err(VmFileError::Parse {
                path: CONFIG_FILE.into(),
                message: "an encrypted VM without a home key".into(),
            });
        };
        cache
            .with_key(kek, |k| wrap::unwrap(k, wrapped, &self.id, Purpose::Home))
            .ok_or_else(|| VmFileError::HomeKeyMissing {
                vm: self.name.clone(),
                key: kek.clone(),
            })?
            .map_err(|e| wrap_error(e, &self.name, kek, "home key"))
    }

    /// The VM's config, opening the sealed part with the home key when encrypted.
    pub fn config(&self, cache: &KeyCache) -> Result<VmConfig, VmFileError> {
        if !self.encrypted {
            return Ok(self.config.clone().unwrap_or_default());
        }
        let home = self.home_key(cache)?;
        let sealed = self.sealed_config.as_deref().unwrap_or("");
        open_config(&home, &self.id, sealed).ok_or_else(|| VmFileError::WrongKey {
            vm: self.name.clone(),
            key: self.key_id.clone().unwrap_or_else(|| KeyRef::new("?", "?")),
            what: "sealed configuration".into(),
        })
    }

    /// Replaces the VM's config, sealing it with the home key when encrypted.
    pub fn set_config(&mut self, config: &VmConfig, cache: &KeyCache) -> Result<(), VmFileError> {
        if !self.encrypted {
            self.config = Some(config.clone());
            return Ok(());
        }
        let home = self.home_key(cache)?;
        self.sealed_config = Some(seal_config(&home, &self.id, config)?);
        Ok(())
    }

    /// Adds an encrypted disk entry with a fresh secret wrapped under the VM's KEK or `own_key`;
    /// returns the secret for creating the image.
    pub fn add_encrypted_disk(
        &mut self,
        id: &str,
        file: &str,
        format: DiskFormat,
        size: u64,
        own_key: Option<KeyRef>,
        cache: &KeyCache,
    ) -> Result<DiskSecret, VmFileError> {
        let kek = own_key
            .clone()
            .or_else(|| self.key_id.clone())
            .ok_or_else(|| VmFileError::Parse {
                path: CONFIG_FILE.into(),
                message: "an encrypted disk needs the VM's key or its own".into(),
            })?;
        let secret = random(32)?;
        let wrapped = cache
            .with_key(&kek, |k| {
                wrap::wrap(k, &secret, &self.id, Purpose::Disk(id))
            })
            .ok_or_else(|| self.disk_key_missing(file, &kek, Lang::En))?
            .map_err(|e| wrap_error(e, &self.name, &kek, "disk"))?;
        self.disks.push(DiskEntry {
            id: id.into(),
            file: file.into(),
            format,
            size,
            key_id: own_key,
            wrapped_secret: Some(wrapped),
        });
        Ok(DiskSecret::new(secret))
    }

    fn disk_key_missing(&self, file: &str, key: &KeyRef, lang: Lang) -> VmFileError {
        VmFileError::DiskKeyMissing {
            path: file.into(),
            key: key.clone(),
            message: tresor_core::ops::disk_key_missing(file, lang),
        }
    }

    /// The secret of one disk, from the key cache; `None` for an unencrypted disk.
    pub fn disk_secret(
        &self,
        disk: &DiskEntry,
        dir: &Path,
        cache: &KeyCache,
    ) -> Result<Option<DiskSecret>, VmFileError> {
        let Some(wrapped) = &disk.wrapped_secret else {
            return Ok(None);
        };
        let kek = disk
            .key_id
            .as_ref()
            .or(self.key_id.as_ref())
            .cloned()
            .unwrap_or_else(|| KeyRef::new("?", "?"));
        let path = dir.join(&disk.file).display().to_string();
        let secret = cache
            .with_key(&kek, |k| {
                wrap::unwrap(k, wrapped, &self.id, Purpose::Disk(&disk.id))
            })
            .ok_or_else(|| self.disk_key_missing(&path, &kek, Lang::En))?
            .map_err(|e| wrap_error(e, &self.name, &kek, &format!("disk {}", disk.file)))?;
        Ok(Some(DiskSecret::new(secret)))
    }

    /// What power-on needs: the config and every disk's secret. Fails with the exact message for
    /// the first disk whose key is missing.
    pub fn prepare_power_on(
        &self,
        dir: &Path,
        cache: &KeyCache,
    ) -> Result<PowerOnPlan, VmFileError> {
        let config = self.config(cache)?;
        let mut disks = Vec::new();
        for d in &self.disks {
            disks.push(OpenDisk {
                path: dir.join(&d.file),
                format: d.format,
                secret: self.disk_secret(d, dir, cache)?,
            });
        }
        Ok(PowerOnPlan {
            id: self.id.clone(),
            config,
            disks,
            boot: DirectBoot::of(dir)?,
            seed: None,
        })
    }

    /// Shallow rekey: a new KEK for the VM; the home key and the secrets of disks that use the
    /// VM's KEK are rewrapped. No disk is touched, so it may run while the VM is on.
    pub fn shallow_rekey(&self, new_kek: &KeyRef, cache: &KeyCache) -> Result<VmFile, VmFileError> {
        let mut next = self.clone();
        let home = self.home_key(cache)?;
        next.wrapped_home_key = Some(
            cache
                .with_key(new_kek, |k| wrap::wrap(k, &home, &self.id, Purpose::Home))
                .ok_or_else(|| VmFileError::HomeKeyMissing {
                    vm: self.name.clone(),
                    key: new_kek.clone(),
                })?
                .map_err(|e| wrap_error(e, &self.name, new_kek, "home key"))?,
        );
        next.key_id = Some(new_kek.clone());
        for (i, d) in self.disks.iter().enumerate() {
            if d.key_id.is_some() || d.wrapped_secret.is_none() {
                continue;
            }
            let secret = self
                .disk_secret(d, Path::new("."), cache)?
                .ok_or(VmFileError::Random)?;
            next.disks[i].wrapped_secret = Some(
                cache
                    .with_key(new_kek, |k| {
                        wrap::wrap(k, secret.bytes(), &self.id, Purpose::Disk(&d.id))
                    })
                    .ok_or_else(|| VmFileError::HomeKeyMissing {
                        vm: self.name.clone(),
                        key: new_kek.clone(),
                    })?
                    .map_err(|e| wrap_error(e, &self.name, new_kek, "disk"))?,
            );
        }
        Ok(next)
    }
}

fn wrap_error(e: WrapError, vm: &str, key: &KeyRef, what: &str) -> VmFileError {
    match e {
        WrapError::Random => VmFileError::Random,
        _ => VmFileError::WrongKey {
            vm: vm.into(),
            key: key.clone(),
            what: what.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_with(keys: &[(&KeyRef, u8)]) -> KeyCache {
        let c = KeyCache::new(16).unwrap();
        for (k, b) in keys {
            c.insert((*k).clone(), &[*b; 32]).unwrap();
        }
        c
    }

    #[test]
    fn an_encrypted_vm_without_its_home_key_is_invalid() {
        let kek = KeyRef::new("kms", "vm-kek");
        let cache = cache_with(&[(&kek, 1)]);
        let config = VmConfig {
            memory_mib: 512,
            vcpus: 2,
            networks: vec![NetworkSpec::User],
            user_data: Some("#cloud-config\n".into()),
            ssh_keys: vec!["ssh-ed25519 AAAA test".into()],
        };
        let vm = VmFile::new_encrypted("id-1", "web01", &config, &kek, &cache).unwrap();
        assert_eq!(vm.config(&cache).unwrap(), config);
        let text = serde_json::to_string(&vm).unwrap();
        // Neither the config's fields nor its values in the clear (the random hex of the
        // sealed parts may contain any digits, so the names are what is looked for).
        assert!(
            !text.contains("memoryMib") && !text.contains("vcpus") && !text.contains(":512"),
            "the sealed config is not readable: {text}"
        );
        let empty = KeyCache::new(4).unwrap();
        let err = vm.config(&empty).unwrap_err();
        assert!(matches!(err, VmFileError::HomeKeyMissing { .. }), "{err}");
        // The same key id with other bytes (a different key) is told apart.
        let wrong = cache_with(&[(&kek, 2)]);
        assert!(matches!(
            vm.config(&wrong),
            Err(VmFileError::WrongKey { .. })
        ));
    }

    #[test]
    fn a_disk_with_its_own_missing_key_fails_with_the_exact_message() {
        let vm_kek = KeyRef::new("kms", "vm");
        let disk_kek = KeyRef::new("kms", "disk");
        let cache = cache_with(&[(&vm_kek, 1), (&disk_kek, 2)]);
        let mut vm =
            VmFile::new_encrypted("id-2", "db01", &VmConfig::default(), &vm_kek, &cache).unwrap();
        vm.add_encrypted_disk(
            "d0",
            "disk0.qcow2",
            DiskFormat::Qcow2Luks,
            1 << 20,
            None,
            &cache,
        )
        .unwrap();
        vm.add_encrypted_disk(
            "d1",
            "disk1.qcow2",
            DiskFormat::Qcow2Luks,
            1 << 20,
            Some(disk_kek.clone()),
            &cache,
        )
        .unwrap();
        assert_eq!(
            vm.keys_needed(),
            vec![
                (
                    vm_kek.clone(),
                    vec![KeyUse::Home, KeyUse::Disk("disk0.qcow2".into())]
                ),
                (disk_kek.clone(), vec![KeyUse::Disk("disk1.qcow2".into())]),
            ]
        );
        let dir = Path::new("/vms/db01");
        assert!(vm.prepare_power_on(dir, &cache).is_ok());
        let only_vm_key = cache_with(&[(&vm_kek, 1)]);
        let err = vm.prepare_power_on(dir, &only_vm_key).unwrap_err();
        assert_eq!(
            err.to_string(),
            "The disk [/vms/db01/disk1.qcow2] is encrypted and a required key was not found."
        );
        assert!(
            vm.config(&only_vm_key).is_ok(),
            "home key present: the VM is not invalid"
        );
    }

    #[test]
    fn wrapped_keys_do_not_move_between_vms() {
        let kek = KeyRef::new("kms", "k");
        let cache = cache_with(&[(&kek, 1)]);
        let mut a = VmFile::new_encrypted("id-a", "a", &VmConfig::default(), &kek, &cache).unwrap();
        a.add_encrypted_disk("d0", "d.qcow2", DiskFormat::Qcow2Luks, 1, None, &cache)
            .unwrap();
        let mut b = VmFile::new_encrypted("id-b", "b", &VmConfig::default(), &kek, &cache).unwrap();
        b.wrapped_home_key = a.wrapped_home_key.clone();
        b.disks = a.disks.clone();
        assert!(matches!(
            b.config(&cache),
            Err(VmFileError::WrongKey { .. })
        ));
        assert!(matches!(
            b.disk_secret(&b.disks[0], Path::new("."), &cache),
            Err(VmFileError::WrongKey { .. })
        ));
    }

    #[test]
    fn shallow_rekey_rewraps_under_the_new_key_and_keeps_the_secrets() {
        let old = KeyRef::new("kms", "old");
        let new = KeyRef::new("kms", "new");
        let own = KeyRef::new("kms", "own");
        let cache = cache_with(&[(&old, 1), (&new, 2), (&own, 3)]);
        let mut vm = VmFile::new_encrypted("id", "v", &VmConfig::default(), &old, &cache).unwrap();
        let s0 = vm
            .add_encrypted_disk("d0", "a.qcow2", DiskFormat::Qcow2Luks, 1, None, &cache)
            .unwrap();
        let s1 = vm
            .add_encrypted_disk(
                "d1",
                "b.qcow2",
                DiskFormat::Qcow2Luks,
                1,
                Some(own.clone()),
                &cache,
            )
            .unwrap();
        let next = vm.shallow_rekey(&new, &cache).unwrap();
        assert_eq!(next.key_id, Some(new.clone()));
        assert_eq!(
            next.disks[1].wrapped_secret, vm.disks[1].wrapped_secret,
            "a disk with its own key is untouched"
        );
        let only_new = cache_with(&[(&new, 2), (&own, 3)]);
        assert!(next.config(&only_new).is_ok());
        let dir = Path::new(".");
        assert_eq!(
            next.disk_secret(&next.disks[0], dir, &only_new)
                .unwrap()
                .unwrap()
                .bytes(),
            s0.bytes()
        );
        assert_eq!(
            next.disk_secret(&next.disks[1], dir, &only_new)
                .unwrap()
                .unwrap()
                .bytes(),
            s1.bytes()
        );
    }

    #[test]
    fn saves_atomically_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let vm = VmFile::new_plain("id", "plain", VmConfig::default());
        vm.save(dir.path()).unwrap();
        assert_eq!(VmFile::load(dir.path()).unwrap(), vm);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        assert_eq!(
            names,
            vec!["vm.json".to_string()],
            "no temporary file stays behind"
        );
        std::fs::write(dir.path().join("vm.json"), "{\"format\": \"other\"}").unwrap();
        assert!(matches!(
            VmFile::load(dir.path()),
            Err(VmFileError::Parse { .. })
        ));
    }
}
