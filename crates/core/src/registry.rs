//! The server's registry: which VMs exist, on which host, with which keys. It is the operators'
//! intent (a VM is in it because an operator created or registered it) and it decides where keys
//! may go: a VM id belongs to one VM, a VM to one host, a key to the VMs the server created or
//! registered with it. What a host reports is checked against it ([`Registry::admit`]); a report
//! that the registry does not hold, or that contradicts it, is *discovered*: shown, never unlocked.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::ids::KeyRef;
use crate::protocol::VmReport;

/// One registered VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub id: String,
    pub name: String,
    pub host: String,
    /// The keys the server created or registered this VM with: the only keys that may be sent
    /// to its host for it.
    pub keys: BTreeSet<KeyRef>,
}

impl Registration {
    /// The registration a report asks for (an operator's register admits what the VM's files
    /// name).
    pub fn of_report(host: &str, report: &VmReport) -> Registration {
        Registration {
            id: report.id.clone(),
            name: report.name.clone(),
            host: host.to_owned(),
            keys: report.keys.iter().map(|k| k.key.clone()).collect(),
        }
    }
}

/// Why a host's report is not admitted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Discrepancy {
    /// The registry holds no VM of this name or id.
    Unknown,
    /// The id is that of another registered VM.
    IdOfAnotherVm { vm: String },
    /// The VM of this name is registered with another id.
    OtherId { id: String },
    /// The VM is registered on another host.
    OtherHost { host: String },
    /// The report names a key the VM was not registered with.
    ForeignKey { key: KeyRef },
}

impl std::fmt::Display for Discrepancy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Discrepancy::Unknown => f.write_str("the server's registry holds no such VM"),
            Discrepancy::IdOfAnotherVm { vm } => {
                write!(f, "its id belongs to the registered VM {vm}")
            }
            Discrepancy::OtherId { id } => {
                write!(f, "the registered VM of this name has another id ({id})")
            }
            Discrepancy::OtherHost { host } => {
                write!(f, "the VM of this name is registered on host {host}")
            }
            Discrepancy::ForeignKey { key } => {
                write!(f, "it names key {key}, which it was not registered with")
            }
        }
    }
}

/// Why a registration is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("A VM named {name} is registered already (on host {host}); unregister it first")]
    NameTaken { name: String, host: String },
    #[error("VM id {id} belongs to the registered VM {vm}; a copy of a VM cannot be registered beside it (unregister {vm} first)")]
    IdTaken { id: String, vm: String },
    #[error("Key {key} belongs to the registered VM {vm} on host {host}; unregister {vm} first")]
    KeyTaken {
        key: KeyRef,
        vm: String,
        host: String,
    },
}

/// The registered VMs, by name, with indexes by id and by key.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    by_name: HashMap<String, Registration>,
    by_id: HashMap<String, String>,
    by_key: HashMap<KeyRef, HashSet<String>>,
}

impl Registry {
    pub fn new(registrations: impl IntoIterator<Item = Registration>) -> Registry {
        let mut r = Registry::default();
        for reg in registrations {
            r.insert(reg);
        }
        r
    }

    pub fn get(&self, name: &str) -> Option<&Registration> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Whether `reg` may be added: its name and id are free, and none of its keys belongs to a
    /// VM on another host. Registering the same VM again (same id, name and host) is allowed.
    pub fn check(&self, reg: &Registration) -> Result<(), Conflict> {
        if let Some(other) = self.by_name.get(&reg.name) {
            if other.id != reg.id || other.host != reg.host {
                return Err(Conflict::NameTaken {
                    name: reg.name.clone(),
                    host: other.host.clone(),
                });
            }
        }
        if let Some(vm) = self.by_id.get(&reg.id) {
            if vm != &reg.name {
                return Err(Conflict::IdTaken {
                    id: reg.id.clone(),
                    vm: vm.clone(),
                });
            }
        }
        for key in &reg.keys {
            for vm in self.by_key.get(key).into_iter().flatten() {
                if vm == &reg.name {
                    continue;
                }
                if let Some(other) = self.by_name.get(vm) {
                    if other.host != reg.host {
                        return Err(Conflict::KeyTaken {
                            key: key.clone(),
                            vm: vm.clone(),
                            host: other.host.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds or replaces a registration (by name).
    pub fn insert(&mut self, reg: Registration) {
        self.remove(&reg.name);
        self.by_id.insert(reg.id.clone(), reg.name.clone());
        for k in &reg.keys {
            self.by_key
                .entry(k.clone())
                .or_default()
                .insert(reg.name.clone());
        }
        self.by_name.insert(reg.name.clone(), reg);
    }

    pub fn remove(&mut self, name: &str) -> Option<Registration> {
        let reg = self.by_name.remove(name)?;
        if self.by_id.get(&reg.id).is_some_and(|n| n == name) {
            self.by_id.remove(&reg.id);
        }
        for k in &reg.keys {
            if let Some(set) = self.by_key.get_mut(k) {
                set.remove(name);
                if set.is_empty() {
                    self.by_key.remove(k);
                }
            }
        }
        Some(reg)
    }

    /// Whether a host's report of a VM matches the registry: the VM is registered under this
    /// name, with this id, on this host, and names only keys it was registered with.
    pub fn admit(&self, host: &str, report: &VmReport) -> Result<(), Discrepancy> {
        let Some(reg) = self.by_name.get(&report.name) else {
            return Err(match self.by_id.get(&report.id) {
                Some(vm) => Discrepancy::IdOfAnotherVm { vm: vm.clone() },
                None => Discrepancy::Unknown,
            });
        };
        if reg.id != report.id {
            return Err(match self.by_id.get(&report.id) {
                Some(vm) => Discrepancy::IdOfAnotherVm { vm: vm.clone() },
                None => Discrepancy::OtherId { id: reg.id.clone() },
            });
        }
        if reg.host != host {
            return Err(Discrepancy::OtherHost {
                host: reg.host.clone(),
            });
        }
        let named = report
            .keys
            .iter()
            .map(|k| &k.key)
            .chain(report.key_id.as_ref());
        for key in named {
            if !reg.keys.contains(key) {
                return Err(Discrepancy::ForeignKey { key: key.clone() });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{HostKey, PowerState};
    use crate::vm::KeyUse;

    fn report(id: &str, name: &str, keys: &[&str]) -> VmReport {
        VmReport {
            disk_formats: Vec::new(),
            data_paths: Vec::new(),
            id: id.into(),
            name: name.into(),
            path: format!("/ds/{name}"),
            encrypted: !keys.is_empty(),
            power_state: PowerState::PoweredOff,
            key_id: keys.first().map(|k| KeyRef::new("kms", k)),
            keys: keys
                .iter()
                .map(|k| HostKey {
                    key: KeyRef::new("kms", k),
                    uses: vec![KeyUse::Home],
                    on_host: false,
                })
                .collect(),
            disks: vec![],
            operation: None,
        }
    }

    fn registry() -> Registry {
        Registry::new([Registration::of_report(
            "host-1",
            &report("id1", "web01", &["k1"]),
        )])
    }

    #[test]
    fn the_registered_vm_on_its_host_is_admitted() {
        assert_eq!(
            registry().admit("host-1", &report("id1", "web01", &["k1"])),
            Ok(())
        );
    }

    #[test]
    fn a_copy_under_another_name_or_host_or_with_other_keys_is_discovered() {
        let r = registry();
        assert_eq!(
            r.admit("host-2", &report("id1", "evil", &["k1"])),
            Err(Discrepancy::IdOfAnotherVm { vm: "web01".into() })
        );
        assert_eq!(
            r.admit("host-2", &report("id1", "web01", &["k1"])),
            Err(Discrepancy::OtherHost {
                host: "host-1".into()
            })
        );
        assert_eq!(
            r.admit("host-1", &report("id9", "web01", &["k1"])),
            Err(Discrepancy::OtherId { id: "id1".into() })
        );
        assert_eq!(
            r.admit("host-1", &report("id1", "web01", &["k1", "k2"])),
            Err(Discrepancy::ForeignKey {
                key: KeyRef::new("kms", "k2")
            })
        );
        assert_eq!(
            r.admit("host-2", &report("id2", "db01", &["k1"])),
            Err(Discrepancy::Unknown)
        );
    }

    #[test]
    fn registering_a_copy_or_another_hosts_key_is_refused_and_the_same_vm_again_is_not() {
        let r = registry();
        let again = Registration::of_report("host-1", &report("id1", "web01", &["k1"]));
        assert_eq!(r.check(&again), Ok(()));
        let copy = Registration::of_report("host-2", &report("id1", "evil", &["k1"]));
        assert!(matches!(r.check(&copy), Err(Conflict::IdTaken { .. })));
        let other_id = Registration::of_report("host-2", &report("id2", "evil", &["k1"]));
        assert!(matches!(r.check(&other_id), Err(Conflict::KeyTaken { .. })));
        let moved = Registration::of_report("host-2", &report("id1", "web01", &["k1"]));
        assert!(matches!(r.check(&moved), Err(Conflict::NameTaken { .. })));
        // A second VM on the same host may share a key (disks given the VM's key, clones).
        let sibling = Registration::of_report("host-1", &report("id3", "web02", &["k1"]));
        assert_eq!(r.check(&sibling), Ok(()));
    }

    #[test]
    fn removing_frees_name_id_and_keys() {
        let mut r = registry();
        r.remove("web01");
        assert!(r.is_empty());
        let copy = Registration::of_report("host-2", &report("id1", "evil", &["k1"]));
        assert_eq!(r.check(&copy), Ok(()));
    }
}
