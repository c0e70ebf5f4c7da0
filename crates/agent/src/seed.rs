//! The cloud-init NoCloud seed of a VM: a small FAT image labelled CIDATA holding `meta-data`
//! (the VM's id as instance id, its name as host name, its SSH keys) and `user-data`, made in
//! memory from the VM's (sealed, for an encrypted VM) config at each power-on.

use std::io::{Cursor, Write};

use crate::vmfile::VmConfig;

/// The size of the seed image.
const SIZE: usize = 1 << 20;

/// Why a seed could not be made.
#[derive(Debug, thiserror::Error)]
#[error("Cannot make the cloud-init seed of VM {vm}: {detail}")]
pub struct SeedError {
    vm: String,
    detail: String,
}

/// Whether the VM has anything for cloud-init.
pub fn wanted(config: &VmConfig) -> bool {
    config.user_data.is_some() || !config.ssh_keys.is_empty()
}

/// The seed image of VM `name` (id `id`).
pub fn nocloud(id: &str, name: &str, config: &VmConfig) -> Result<Vec<u8>, SeedError> {
    let fail = |detail: String| SeedError {
        vm: name.into(),
        detail,
    };
    // Each value as a double-quoted YAML string (JSON's escapes are YAML's).
    let quoted = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into());
    let mut meta = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        quoted(id),
        quoted(name)
    );
    if !config.ssh_keys.is_empty() {
        meta.push_str("public-keys:\n");
        for k in &config.ssh_keys {
            meta.push_str(&format!("  - {}\n", quoted(k)));
        }
    }
    let user = config
        .user_data
        .clone()
        .unwrap_or_else(|| "#cloud-config\n{}\n".into());
    let mut image = Cursor::new(vec![0u8; SIZE]);
    fatfs::format_volume(
        &mut image,
        fatfs::FormatVolumeOptions::new()
            .volume_label(*b"CIDATA     ")
            .fat_type(fatfs::FatType::Fat12),
    )
    .map_err(|e| fail(e.to_string()))?;
    {
        let fs = fatfs::FileSystem::new(&mut image, fatfs::FsOptions::new())
            .map_err(|e| fail(e.to_string()))?;
        let root = fs.root_dir();
        for (file, text) in [("meta-data", meta.as_str()), ("user-data", user.as_str())] {
            let mut f = root.create_file(file).map_err(|e| fail(e.to_string()))?;
            f.write_all(text.as_bytes())
                .map_err(|e| fail(e.to_string()))?;
        }
    }
    Ok(image.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_is_a_fat_volume_labelled_cidata_with_both_files() {
        let config = VmConfig {
            user_data: Some("#cloud-config\npackages: [htop]\n".into()),
            ssh_keys: vec!["ssh-ed25519 AAAAC3Nza test@example".into()],
            ..VmConfig::default()
        };
        let image = nocloud("0a1b2c", "web01", &config).unwrap();
        assert_eq!(image.len(), SIZE);
        let mut cursor = Cursor::new(image);
        let fs = fatfs::FileSystem::new(&mut cursor, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "CIDATA");
        let read = |name: &str| {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut fs.root_dir().open_file(name).unwrap(), &mut s)
                .unwrap();
            s
        };
        let meta = read("meta-data");
        assert!(meta.contains("instance-id: \"0a1b2c\""), "{meta}");
        assert!(meta.contains("local-hostname: \"web01\""), "{meta}");
        assert!(
            meta.contains("  - \"ssh-ed25519 AAAAC3Nza test@example\""),
            "{meta}"
        );
        assert_eq!(read("user-data"), "#cloud-config\npackages: [htop]\n");
        // A key cannot break out of its YAML string.
        let evil = VmConfig {
            ssh_keys: vec!["ssh-ed25519 A\"\ninstance-id: x".into()],
            ..VmConfig::default()
        };
        let image = nocloud("1", "w", &evil).unwrap();
        let mut cursor = Cursor::new(image);
        let fs = fatfs::FileSystem::new(&mut cursor, fatfs::FsOptions::new()).unwrap();
        let mut meta = String::new();
        std::io::Read::read_to_string(
            &mut fs.root_dir().open_file("meta-data").unwrap(),
            &mut meta,
        )
        .unwrap();
        assert_eq!(
            meta.lines()
                .filter(|l| l.starts_with("instance-id:"))
                .count(),
            1,
            "{meta}"
        );
    }
}
