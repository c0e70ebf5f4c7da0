//! The VMs: what the API shows of them and everything done to them. The registry decides the
//! VM's id and keys before its host makes anything; a key made for an operation that fails is
//! disowned again; a locked VM refuses what it cannot do with the message of the core's `ops`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tresor_api::requests::{
    AddDisk, AdoptVm, CreateVm, CryptoRequest, RegisterRequest, UnlockMany, MAX_FILE_PIECE,
};
use tresor_api::views::{
    ConsoleOutput, Diagnosis, DiscoveredVm, Disk, KeyId, Registered, Task, UnlockFailed,
    UnlockStarted, Vm, VmConfig, VmDone,
};
use tresor_api::ErrorCode;
use tresor_core::access::Privilege;
use tresor_core::ids::{KeyRef, NameKind};
use tresor_core::ops::VmOp;
use tresor_core::protocol::{
    Chunk, Command, DiskSpec, NetworkSpec, PowerState, Reply, SecretBytes, UploadKind, VmReport,
    MAX_CHUNK, MAX_CONSOLE_WRITE,
};
use tresor_core::task::TaskKind;
use tresor_core::vm::{ConnectionState, CryptoState, ProviderAnswer};
use tresor_core::Lang;

use super::keys::{self, Audited};
use super::{
    ask_host, check_name, no_host, no_provider, no_vm, provider_or_default, reachable_host, Caller,
    Context, ServiceError,
};
use crate::store::{StoredVm, VmRecord};

/// The VMs.
#[derive(Clone, Copy, Debug)]
pub struct Vms<'a> {
    pub(super) cx: &'a Context,
}

/// Which VMs the list shows.
#[derive(Clone, Debug, Default)]
pub struct VmFilter {
    pub locked: bool,
    pub host: Option<String>,
    pub provider: Option<String>,
    pub offset: usize,
    pub limit: Option<usize>,
}

/// What a piece of a file sent to a VM gives: the VM as it is after it, or (the last piece of an
/// image) the task that imports the image.
#[derive(Debug)]
pub enum Uploaded {
    Vm(Vm),
    Task(Task),
}

/// What can be done to one VM by name (`POST /api/v1/vms/{name}/{action}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmAction {
    PowerOn,
    PowerOff,
    Unlock,
    Unregister,
    Reload,
    Delete,
    Encrypt,
    Decrypt,
    Rekey,
}

impl VmAction {
    /// The action a path names.
    pub fn parse(name: &str) -> Option<VmAction> {
        Some(match name {
            "power-on" => VmAction::PowerOn,
            "power-off" => VmAction::PowerOff,
            "unlock" => VmAction::Unlock,
            "unregister" => VmAction::Unregister,
            "reload" => VmAction::Reload,
            "delete" => VmAction::Delete,
            "encrypt" => VmAction::Encrypt,
            "decrypt" => VmAction::Decrypt,
            "rekey" => VmAction::Rekey,
            _ => return None,
        })
    }

    /// Its name in the API (and the `done` of its answer).
    pub fn as_str(self) -> &'static str {
        match self {
            VmAction::PowerOn => "power-on",
            VmAction::PowerOff => "power-off",
            VmAction::Unlock => "unlock",
            VmAction::Unregister => "unregister",
            VmAction::Reload => "reload",
            VmAction::Delete => "delete",
            VmAction::Encrypt => "encrypt",
            VmAction::Decrypt => "decrypt",
            VmAction::Rekey => "rekey",
        }
    }

    /// The privilege it needs, whatever the VM's state.
    pub fn privilege(self) -> Privilege {
        match self {
            VmAction::PowerOn => Privilege::VmPowerOn,
            VmAction::PowerOff => Privilege::VmPowerOff,
            VmAction::Unlock => Privilege::CryptoRegisterVm,
            VmAction::Unregister => Privilege::VmUnregister,
            VmAction::Reload => Privilege::VmConfig,
            VmAction::Delete => Privilege::VmDelete,
            VmAction::Encrypt => Privilege::CryptoEncrypt,
            VmAction::Decrypt => Privilege::CryptoDecrypt,
            VmAction::Rekey => Privilege::CryptoRecrypt,
        }
    }

    /// What the caller does, for a refusal ("Powering VM web01 on").
    pub fn describe(self, vm: &str) -> String {
        match self {
            VmAction::PowerOn => format!("Powering VM {vm} on"),
            VmAction::PowerOff => format!("Powering VM {vm} off"),
            VmAction::Unlock => format!("Unlocking VM {vm}"),
            other => format!("{} of VM {vm}", other.as_str()),
        }
    }
}

/// A VM as the surface defines it (`tresor vm show NAME -o json`), as JSON text: the VM list
/// renders tens of thousands of these, once per change.
pub fn vm_json_text(record: &VmRecord) -> String {
    serde_json::to_string(&vm_view(record)).unwrap_or_default()
}

/// A VM as the API shows it: the registry's record and the host's last report.
pub fn vm_view(record: &VmRecord) -> Vm {
    let report: Option<VmReport> = serde_json::from_str(&record.report).ok();
    let disks = report
        .as_ref()
        .map(|r| {
            r.disks
                .iter()
                .enumerate()
                .map(|(i, path)| {
                    let file = std::path::Path::new(path)
                        .file_name()
                        .and_then(|f| f.to_str())
                        .unwrap_or_default();
                    let hk = r.keys.iter().find(|k| {
                        k.uses
                            .iter()
                            .any(|u| matches!(u, tresor_core::vm::KeyUse::Disk(p) if p == file))
                    });
                    Disk {
                        path: path.clone(),
                        key_id: hk.map(|k| KeyId::of(&k.key)),
                        key_available: hk.map(|k| k.on_host).unwrap_or(true),
                        format: r.disk_formats.get(i).map(|f| f.as_str().to_owned()),
                        data_path: r.data_paths.get(i).map(|p| p.as_str().to_owned()),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Vm {
        name: record.name.clone(),
        id: record.id.clone(),
        host: record.host.clone(),
        path: record.path.clone(),
        power_state: record.power_state,
        connection_state: record.connection_state,
        crypto_state: record.crypto_state,
        lock_reason: record
            .lock_reason
            .filter(|_| record.crypto_state == CryptoState::Locked),
        config: VmConfig {
            key_id: report
                .as_ref()
                .and_then(|r| r.key_id.as_ref())
                .map(KeyId::of),
        },
        disks,
    }
}

/// How old a provider's status may be for a diagnosis to show it without probing again.
const FRESH_STATUS_SECS: i64 = 5;

/// The most characters one console request types.
pub const MAX_CONSOLE_INPUT: usize = 4096;

/// One request's piece of a file for a VM.
#[derive(Clone, Debug)]
pub struct FilePiece {
    /// What the file is (`image`, `kernel`, ...), as the request names it.
    pub kind: String,
    /// Where the piece begins in the file.
    pub offset: u64,
    /// Whether more pieces follow.
    pub more: bool,
    /// The length the request announces.
    pub announced: Option<u64>,
}

impl Vms<'_> {
    /// The registered VMs that match, by name: how many, and the page asked for (each renders
    /// itself once per change, see [`StoredVm::rendered`]).
    pub fn list(&self, filter: &VmFilter) -> (usize, Vec<Arc<StoredVm>>) {
        self.cx.store.select_vms(
            |r| {
                (!filter.locked || r.crypto_state == CryptoState::Locked)
                    && filter.host.as_ref().is_none_or(|h| &r.host == h)
                    && filter
                        .provider
                        .as_ref()
                        .is_none_or(|p| r.key_provider.as_ref() == Some(p))
            },
            filter.offset,
            filter.limit.unwrap_or(usize::MAX),
        )
    }

    /// The VMs hosts report that the registry does not hold as reported: what each is and why
    /// it is not admitted.
    pub fn discovered(&self, host: Option<&str>) -> Vec<DiscoveredVm> {
        self.cx
            .engine
            .discovered()
            .into_iter()
            .filter(|d| host.is_none_or(|h| d.host == h))
            .map(|d| DiscoveredVm {
                name: d.report.name.clone(),
                id: d.report.id.clone(),
                host: d.host.clone(),
                path: d.report.path.clone(),
                encrypted: d.report.encrypted,
                power_state: d.report.power_state,
                config: VmConfig {
                    key_id: d.report.key_id.as_ref().map(KeyId::of),
                },
                key_ids: d.report.keys.iter().map(|k| KeyId::of(&k.key)).collect(),
                discovered: true,
                reason: serde_json::to_value(&d.reason).unwrap_or_default(),
                message: format!("Not registered: {}", d.reason),
                next_step: format!(
                    "If it is yours: tresor vm register {} --host {} (needs Cryptographer.RegisterVM when its keys must be fetched)",
                    d.report.path, d.host
                ),
            })
            .collect()
    }

    fn record(&self, name: &str) -> Result<VmRecord, ServiceError> {
        self.cx.store.vm(name)?.ok_or_else(|| no_vm(name))
    }

    /// The record of a VM just made or adopted. A pass of the engine's loop that took the VM
    /// first writes it (within a quarter of a second, or at its end), so it is waited for,
    /// briefly.
    async fn new_record(&self, name: &str) -> Result<VmRecord, ServiceError> {
        for _ in 0..100 {
            if let Some(r) = self.cx.store.vm(name)? {
                return Ok(r);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            self.cx.engine.decide_now(&[name.to_owned()]).await;
        }
        self.record(name)
    }

    /// One VM; for one a host reports but the registry does not hold, where it is.
    pub fn show(&self, name: &str) -> Result<Vm, ServiceError> {
        let record = self.cx.store.vm(name)?.ok_or_else(|| {
            match self.cx.engine.discovered().into_iter().find(|d| d.report.name == name) {
                Some(d) => ServiceError::new(ErrorCode::NotRegistered,
                    format!(
                        "VM {name} is not registered: host {} reports it in {} ({}); see `tresor vm list --discovered`, and register it if it is yours",
                        d.host, d.report.path, d.reason
                    ),
                ),
                None => no_vm(name),
            }
        })?;
        Ok(vm_view(&record))
    }

    /// Walks the troubleshooting procedure for one VM: which case applies, the evidence, and the
    /// next step.
    pub async fn diagnose(
        &self,
        caller: &Caller,
        name: &str,
        lang: Lang,
    ) -> Result<Diagnosis, ServiceError> {
        let cx = self.cx;
        let record = self.record(name)?;
        let view = cx.engine.vm(name);
        let (host_connected, verdict) = match &view {
            Some(v) => (v.host_connected, v.verdict.clone()),
            None => (false, None),
        };
        let encrypted = view.as_ref().is_some_and(|v| v.report.encrypted);
        // Each provider involved (endpoints, certificates, vendor): as last probed when that is
        // a few seconds old, else probed now (and so at most once in that time, however often
        // diagnoses are asked for).
        let providers: BTreeSet<String> = verdict
            .iter()
            .flat_map(|v| v.missing.iter().map(|k| k.key.provider().to_owned()))
            .collect();
        let mut statuses = BTreeMap::new();
        for p in providers {
            let cached = cx
                .providers
                .last_status(&p)
                .filter(|st| crate::enrol::now() - st.checked_at <= FRESH_STATUS_SECS);
            let status = match cached {
                Some(st) => Some(st),
                None => match cx.providers.probe(&p).await {
                    Ok(st) => Some(st),
                    Err(_) => cx.providers.last_status(&p),
                },
            };
            if let Some(st) = status {
                statuses.insert(p, st);
            }
        }
        let input = tresor_core::diagnose::DiagnoseInput {
            vm: name.to_owned(),
            host: view
                .as_ref()
                .map(|v| v.host.clone())
                .unwrap_or_else(|| record.host.clone()),
            host_connected,
            crypto_state: match (&verdict, encrypted) {
                (_, false) => CryptoState::Unencrypted,
                (Some(v), true) => v.crypto_state,
                (None, true) => CryptoState::Unlocked,
            },
            lock_reason: verdict.as_ref().and_then(|v| v.lock_reason),
            missing: verdict
                .as_ref()
                .map(|v| {
                    v.missing
                        .iter()
                        .map(|k| tresor_core::diagnose::MissingKey {
                            key_id: k.key.key_id.clone(),
                            provider: k.key.provider().to_owned(),
                            uses: k.uses.clone(),
                            answer: k.provider.clone(),
                            provider_is_tresor_kms: statuses
                                .get(k.key.provider())
                                .and_then(|st| st.vendor.as_deref())
                                .is_some_and(|v| v == tresor_kmip::TRESOR_VENDOR),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            user_may_unlock: caller.may(Privilege::CryptoRegisterVm),
        };
        let diagnosis = tresor_core::diagnose::diagnose(&input, lang);
        // The providers' status only for those who may read providers.
        let provider_status = caller
            .may(Privilege::CryptoReadKeyServersInfo)
            .then_some(statuses);
        Ok(Diagnosis {
            vm: diagnosis.vm,
            case: diagnosis.case,
            summary: diagnosis.summary,
            evidence: diagnosis.evidence,
            next_steps: diagnosis.next_steps,
            provider_status,
        })
    }

    /// Unlocks one VM now: its missing keys are fetched at once, and the VM is unlocked or the
    /// provider's answer is the error.
    pub async fn unlock(&self, caller: &Caller, name: &str) -> Result<bool, ServiceError> {
        let record = self.record(name)?;
        let (requested, failed) = self.request_unlocks(&caller.user, vec![record]).await?;
        if let Some(f) = failed.into_iter().next() {
            return Err(f.error);
        }
        Ok(!requested.is_empty())
    }

    /// Asks for many VMs to be unlocked: named ones, every locked one, the locked ones of a
    /// host, or those whose keys come from a provider.
    pub async fn unlock_many(
        &self,
        caller: &Caller,
        req: &UnlockMany,
    ) -> Result<UnlockStarted, ServiceError> {
        let cx = self.cx;
        let vms: Vec<VmRecord> = if !req.names.is_empty() {
            let mut v = Vec::new();
            for n in &req.names {
                v.push(self.record(n)?);
            }
            v
        } else {
            if let Some(h) = &req.host {
                if cx.store.host(h)?.is_none() {
                    return Err(no_host(h));
                }
            }
            if let Some(p) = &req.provider {
                if cx.store.provider(p)?.is_none() {
                    return Err(no_provider(p));
                }
            }
            cx.store
                .locked_vms()?
                .into_iter()
                .filter(|v| req.host.as_ref().is_none_or(|h| &v.host == h))
                .filter(|v| req.provider.as_ref().is_none_or(|p| uses_provider(v, p)))
                .collect()
        };
        let (requested, failed) = self.request_unlocks(&caller.user, vms).await?;
        let failed = failed
            .into_iter()
            .map(|f| UnlockFailed {
                vm: f.vm,
                key_id: KeyId::of(&f.key),
                code: f.error.code,
                message: f.error.message,
            })
            .collect();
        let task = match requested.is_empty() {
            true => None,
            false => Some(self.follow_unlocks(&caller.user, requested.clone())?),
        };
        Ok(UnlockStarted {
            requested,
            failed,
            task,
        })
    }

    /// A task that follows VMs whose unlock was requested until each is unlocked: its progress
    /// counts them; it fails naming those still locked when none was unlocked for the agents'
    /// timeout; cancelling it stops the following, not the unlocks.
    fn follow_unlocks(&self, user: &str, vms: Vec<String>) -> Result<String, ServiceError> {
        let cx = self.cx;
        let (ctl, _) = cx.tasks.start(TaskKind::Unlock, user, None, None, None)?;
        let id = ctl.id.clone();
        let task_cx = cx.clone();
        cx.tasks.spawn(async move {
            use tresor_core::task::TaskEvent;
            let total = vms.len() as u64;
            let mut last_change = std::time::Instant::now();
            let mut unlocked_before = 0;
            loop {
                let still: Vec<&str> = vms
                    .iter()
                    .filter(|v| task_cx.store.crypto_state(v) == Some(CryptoState::Locked))
                    .map(String::as_str)
                    .collect();
                let unlocked = total - still.len() as u64;
                ctl.progress(unlocked, total);
                if still.is_empty() {
                    let result = serde_json::json!({ "unlocked": vms });
                    ctl.end(TaskEvent::Succeeded, Some(result), None);
                    return;
                }
                if unlocked != unlocked_before {
                    unlocked_before = unlocked;
                    last_change = std::time::Instant::now();
                }
                if ctl.stopping() {
                    let message = format!("No longer followed; still locked: {}", still.join(", "));
                    ctl.end(TaskEvent::Cancelled, None, Some(("cancelled".into(), message)));
                    return;
                }
                if last_change.elapsed() > task_cx.hub.timeout() {
                    let message = format!(
                        "Still locked after {} s without progress: {}; `tresor vm diagnose NAME` shows why",
                        task_cx.hub.timeout().as_secs(),
                        still.join(", ")
                    );
                    let code = ErrorCode::VmLocked.as_str().into();
                    ctl.end(TaskEvent::Failed, None, Some((code, message)));
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        });
        Ok(id)
    }

    /// Asks the providers now for the keys the VMs' hosts lack. The VMs whose keys are all there
    /// are unlocked (the engine pushes them, the material already at hand); for the others the
    /// unlock fails at once, with the provider's answer, and is over (nothing stays pending to
    /// happen later by itself). Each outcome is audited.
    async fn request_unlocks(
        &self,
        user: &str,
        vms: Vec<VmRecord>,
    ) -> Result<(Vec<String>, Vec<UnlockFailure>), ServiceError> {
        let cx = self.cx;
        let mut missing: BTreeMap<String, Vec<KeyRef>> = Default::default();
        let mut wanted: BTreeSet<KeyRef> = Default::default();
        for vm in &vms {
            let keys = cx.engine.missing_keys(&vm.name);
            wanted.extend(keys.iter().cloned());
            missing.insert(vm.name.clone(), keys);
        }
        // Many keys of one provider per request.
        let mut by_provider: BTreeMap<String, Vec<KeyRef>> = Default::default();
        for k in wanted {
            by_provider
                .entry(k.provider().to_owned())
                .or_default()
                .push(k);
        }
        let mut answers: HashMap<KeyRef, ProviderAnswer> = Default::default();
        let mut materials: HashMap<KeyRef, SecretBytes> = Default::default();
        for (provider, keys) in by_provider {
            for chunk in keys.chunks(32) {
                let got = cx.broker.fetch_many(&provider, chunk).await;
                for (key, (answer, material)) in chunk.iter().zip(got) {
                    answers.insert(key.clone(), answer);
                    if let Some(m) = material {
                        materials.insert(key.clone(), m);
                    }
                }
            }
        }
        let mut requested = Vec::new();
        let mut failed = Vec::new();
        for vm in vms {
            let keys = missing.remove(&vm.name).unwrap_or_default();
            let bad = keys.iter().find_map(|k| match answers.get(k) {
                Some(ProviderAnswer::Active) | None => None,
                Some(a) => Some((k.clone(), a.clone())),
            });
            let Some((key, answer)) = bad else {
                if !keys.is_empty() {
                    // The engine pushes with the material at hand.
                    for k in &keys {
                        let material = materials.remove(k);
                        if material.is_some() {
                            cx.engine.take_answer(k, ProviderAnswer::Active, material);
                        }
                    }
                    cx.engine.request_unlock(&vm.name, user);
                    requested.push(vm.name.clone());
                    if let (Some(p), Some(id)) = (&vm.key_provider, &vm.key_id) {
                        let key = KeyRef::new(p, id);
                        keys::audit(cx, user, "unlock", Audited::Vm(&vm.name), &key)?;
                    }
                }
                continue;
            };
            let (code, why, why_de) = unlock_refused(&key, &answer);
            cx.store.add_event(&crate::store::EventRow {
                id: 0,
                time: crate::enrol::now(),
                event_type: tresor_core::events::CRYPTO_OPERATION_FAILED.id.into(),
                severity: "warning".into(),
                vm: Some(vm.name.clone()),
                host: None,
                provider: Some(key.provider().into()),
                user: Some(user.into()),
                args: vec![
                    ("user".into(), user.into()),
                    ("operation".into(), "unlock".into()),
                    ("key".into(), key.key_id.clone()),
                    ("error".into(), why.clone()),
                ],
            })?;
            cx.engine.take_answer(&key, answer.clone(), None);
            let error = ServiceError::new(
                code,
                format!(
                    "Cannot unlock VM {}: {why}. Nothing was changed; run `tresor vm diagnose {}` for the way forward",
                    vm.name, vm.name
                ),
            )
            .de(format!(
                "VM {} kann nicht entsperrt werden: {why_de}. Nichts wurde geändert; `tresor vm diagnose {}` zeigt den Weg",
                vm.name, vm.name
            ));
            failed.push(UnlockFailure {
                vm: vm.name.clone(),
                key,
                error,
            });
        }
        // Material no requested VM needs is dropped (and wiped) here.
        drop(materials);
        Ok((requested, failed))
    }

    /// Adopts a powered-off libvirt domain of a host as a Tresor VM of the same name, and
    /// encrypts it when asked. Every privilege is checked before the host is asked.
    pub async fn adopt(&self, caller: &Caller, req: &AdoptVm) -> Result<Vm, ServiceError> {
        let cx = self.cx;
        let action = format!("Adopting domain {} of host {}", req.domain, req.host);
        caller.require(Privilege::VmRegister, &action)?;
        if req.encrypt {
            caller.require(Privilege::CryptoEncrypt, &action)?;
        }
        check_name(NameKind::Vm, &req.domain)?;
        check_name(NameKind::Host, &req.host)?;
        if cx.store.vm(&req.domain)?.is_some() || cx.engine.registration(&req.domain).is_some() {
            return Err(ServiceError::new(
                ErrorCode::Exists,
                format!(
                    "A VM named {} exists already; rename the domain first (virsh domrename)",
                    req.domain
                ),
            ));
        }
        reachable_host(cx, &req.host)?;
        let id = new_vm_id()?;
        self.register(&id, &req.domain, &req.host, [])?;
        let command = Command::Adopt {
            domain: req.domain.clone(),
            id,
        };
        let reply = match ask_host(cx, &req.host, command).await {
            Ok(r) => r,
            Err(e) => {
                cx.engine.forget(&req.domain);
                cx.store.remove_vm(&req.domain)?;
                return Err(e);
            }
        };
        if let Reply::Vm { vm } = reply {
            cx.engine.observe_now(&req.host, vm).await;
        }
        tracing::info!(vm = %req.domain, host = %req.host, user = %caller.user, "domain adopted");
        if req.encrypt {
            let body = CryptoRequest {
                provider: req.provider.clone(),
                deep: false,
                disk_format: None,
            };
            let not_encrypted = |e: ServiceError| {
                let message = format!(
                    "Domain {} was adopted as a VM, but not encrypted: {}; encrypt it with tresor vm encrypt {}",
                    req.domain, e.message, req.domain
                );
                ServiceError { message, ..e }
            };
            let task = self
                .operate(caller, &req.domain, VmAction::Encrypt, Some(&body))
                .await
                .map_err(not_encrypted)?;
            // The adoption answers the VM as it is encrypted: its task is waited for.
            if let Some(task) = task {
                let ended = cx.tasks.wait(&task.id).await?;
                if let Some(e) =
                    ended.filter(|t| t.state != tresor_core::task::TaskState::Succeeded.as_str())
                {
                    return Err(not_encrypted(ServiceError::new(
                        ErrorCode::HostRefused,
                        e.error_message
                            .unwrap_or_else(|| format!("task {} {}", e.id, e.state)),
                    )));
                }
            }
        }
        Ok(vm_view(&self.new_record(&req.domain).await?))
    }

    /// Creates a VM on a host: the registry decides its id and keys (made on the provider and
    /// pushed to the host) before the host makes anything; whatever fails undoes the rest.
    pub async fn create(&self, caller: &Caller, req: &CreateVm) -> Result<Vm, ServiceError> {
        let cx = self.cx;
        let user = caller.user.as_str();
        check_name(NameKind::Vm, &req.name)?;
        check_name(NameKind::Host, &req.host)?;
        let all_disks: Vec<u64> = req
            .disks
            .iter()
            .chain(&req.own_key_disks)
            .copied()
            .collect();
        tresor_core::protocol::check_shape(0, &all_disks, Some(req.memory_mib))
            .and_then(|()| tresor_core::protocol::check_vcpus(req.cpus))
            .map_err(bad_shape)?;
        if !req.own_key_disks.is_empty() && !req.encrypt {
            return Err(ServiceError::new(
                ErrorCode::BadRequest,
                "Disks with a key of their own need an encrypted VM; add --encrypt",
            ));
        }
        let disk_format: tresor_core::protocol::DiskLayout =
            req.disk_format.map(Into::into).unwrap_or_default();
        if disk_format == tresor_core::protocol::DiskLayout::Luks && !req.encrypt {
            return Err(ServiceError::new(
                ErrorCode::BadRequest,
                "Disk format luks is for encrypted disks; add --encrypt, or leave the format out",
            ));
        }
        if req.networks.len() > tresor_core::protocol::MAX_NICS {
            return Err(ServiceError::new(
                ErrorCode::BadShape,
                format!(
                    "A VM has at most {} network interfaces",
                    tresor_core::protocol::MAX_NICS
                ),
            ));
        }
        let networks = req
            .networks
            .iter()
            .map(|n| n.parse::<NetworkSpec>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ServiceError::new(ErrorCode::BadRequest, e.to_string()))?;
        // What can be checked is checked before a key is made on the provider.
        reachable_host(cx, &req.host)?;
        if let Some(other) = cx.engine.registration(&req.name) {
            return Err(ServiceError::new(
                ErrorCode::Exists,
                format!(
                    "A VM named {} is registered already (on host {})",
                    req.name, other.host
                ),
            ));
        }
        let made_for = Audited::Vm(&req.name);
        // The registry decides the VM's id and keys before the host makes anything.
        let id = new_vm_id()?;
        let mut own_keys = Vec::new();
        let mut created: Vec<KeyRef> = Vec::new();
        let key = if req.encrypt {
            let provider = provider_or_default(cx, req.provider.clone())?;
            let mut purposes = vec![req.name.clone()];
            for i in 0..req.own_key_disks.len() {
                purposes.push(format!("{}-disk{}", req.name, req.disks.len() + i));
            }
            let mut materials = Vec::new();
            for purpose in purposes {
                match keys::create(cx, &provider, &purpose).await {
                    Ok(k) => materials.push(k),
                    Err(e) => {
                        let made: Vec<_> = materials.iter().map(|k| k.key.clone()).collect();
                        keys::retire(cx, user, made_for, &made).await;
                        return Err(e);
                    }
                }
            }
            let refs: Vec<KeyRef> = materials.iter().map(|k| k.key.clone()).collect();
            created = refs.clone();
            if let Err(e) = self.register(&id, &req.name, &req.host, refs.iter().cloned()) {
                keys::retire(cx, user, made_for, &refs).await;
                return Err(e);
            }
            if let Err(e) = keys::push(cx, &req.host, materials).await {
                cx.engine.forget(&req.name);
                cx.store.remove_vm(&req.name)?;
                keys::retire(cx, user, made_for, &refs).await;
                return Err(e);
            }
            own_keys = refs[1..].to_vec();
            Some(refs[0].clone())
        } else {
            self.register(&id, &req.name, &req.host, [])?;
            None
        };
        let spec = tresor_core::protocol::VmSpec {
            id: Some(id),
            name: req.name.clone(),
            memory_mib: req.memory_mib,
            vcpus: req.cpus,
            disks: req
                .disks
                .iter()
                .map(|size| DiskSpec {
                    size: *size,
                    own_key: None,
                })
                .chain(
                    req.own_key_disks
                        .iter()
                        .zip(&own_keys)
                        .map(|(size, k)| DiskSpec {
                            size: *size,
                            own_key: Some(k.clone()),
                        }),
                )
                .collect(),
            key: key.clone(),
            networks,
            disk_format,
        };
        let reply = match ask_host(cx, &req.host, Command::CreateVm { spec }).await {
            Ok(r) => r,
            Err(e) => {
                // Nothing was made: the registration and the new keys go again.
                cx.engine.forget(&req.name);
                cx.store.remove_vm(&req.name)?;
                keys::retire(cx, user, made_for, &created).await;
                return Err(e);
            }
        };
        if let Some(k) = &key {
            keys::audit(cx, user, "create-encrypted", made_for, k)?;
        }
        let Reply::Vm { vm } = reply else {
            return Err(ServiceError::new(
                ErrorCode::HostRefused,
                "The host did not report the new VM",
            ));
        };
        cx.engine.observe_now(&req.host, vm).await;
        Ok(vm_view(&self.new_record(&req.name).await?))
    }

    /// Registers VMs from their folders on a host. An encrypted VM whose keys the host lacks
    /// (the server must fetch them) needs `Cryptographer.RegisterVM`: every privilege and every
    /// conflict is decided, from what the host says each folder holds, before the host or the
    /// registry changes.
    pub async fn register_folders(
        &self,
        caller: &Caller,
        req: &RegisterRequest,
        task: Option<&crate::tasks::TaskCtl>,
    ) -> Result<Registered, ServiceError> {
        let cx = self.cx;
        reachable_host(cx, &req.host)?;
        let paths = match (&req.path, req.all) {
            (Some(p), false) => vec![p.clone()],
            (None, true) => match ask_host(cx, &req.host, Command::ListVmDirs).await? {
                Reply::VmDirs { paths } => paths,
                _ => Vec::new(),
            },
            _ => {
                return Err(ServiceError::new(
                    ErrorCode::BadRequest,
                    "Give either a path or all",
                ))
            }
        };
        let may_fetch = caller.may(Privilege::CryptoRegisterVm);
        let mut found = Vec::new();
        for path in paths {
            let inspect = Command::Inspect { path: path.clone() };
            let Reply::Vm { vm } = ask_host(cx, &req.host, inspect).await? else {
                continue;
            };
            check_name(NameKind::Vm, &vm.name)?;
            if vm.encrypted && vm.keys.iter().any(|k| !k.on_host) {
                caller.require(
                    Privilege::CryptoRegisterVm,
                    &format!(
                        "Registering encrypted VM {} whose keys must be fetched",
                        vm.name
                    ),
                )?;
            }
            let reg = tresor_core::registry::Registration::of_report(&req.host, &vm);
            cx.engine
                .check_registration(&reg)
                .map_err(|c| ServiceError::new(ErrorCode::RegistryConflict, c.to_string()))?;
            found.push((path, reg, vm.encrypted));
        }
        let mut registered = Vec::new();
        let total = found.len() as u64;
        for (i, (path, reg, encrypted)) in found.into_iter().enumerate() {
            if let Some(t) = task {
                // Cancelled: the folders not yet registered are left alone.
                if t.stopping() {
                    break;
                }
                t.progress(i as u64, total);
            }
            let name = reg.name.clone();
            self.admit(reg)?;
            let vm = match ask_host(cx, &req.host, Command::Register { path }).await {
                Ok(Reply::Vm { vm }) => vm,
                Ok(_) => continue,
                Err(e) => {
                    cx.engine.forget(&name);
                    cx.store.remove_vm(&name)?;
                    return Err(e);
                }
            };
            cx.engine.observe_report(&req.host, Arc::new(vm));
            // Registering unlocks, under either policy, when the user may cause keys to move.
            if encrypted && may_fetch {
                cx.engine.request_unlock(&name, &caller.user);
            }
            registered.push(name);
        }
        cx.engine.decide_now(&registered).await;
        Ok(Registered { registered })
    }

    /// Registers every VM folder of a host as a task: answered once started.
    pub fn register_all(
        &self,
        caller: &Caller,
        req: RegisterRequest,
    ) -> Result<Task, ServiceError> {
        let cx = self.cx;
        reachable_host(cx, &req.host)?;
        let (ctl, started) = cx.tasks.start(
            TaskKind::Register,
            &caller.user,
            None,
            Some(&req.host),
            None,
        )?;
        let (task_cx, caller) = (cx.clone(), caller.clone());
        cx.tasks.spawn(async move {
            use tresor_core::task::TaskEvent;
            match task_cx.vms().register_folders(&caller, &req, Some(&ctl)).await {
                Ok(r) if ctl.stopping() => {
                    let message = format!(
                        "Cancelled after registering {} VMs of host {}; the other folders are left alone",
                        r.registered.len(),
                        req.host
                    );
                    let result = serde_json::to_value(&r).ok();
                    ctl.end(TaskEvent::Cancelled, result, Some(("cancelled".into(), message)));
                }
                Ok(r) => ctl.end(TaskEvent::Succeeded, serde_json::to_value(&r).ok(), None),
                Err(e) => ctl.end(
                    TaskEvent::Failed,
                    None,
                    Some((e.code.as_str().into(), e.message)),
                ),
            }
        });
        Ok(started)
    }

    /// Adds a disk to a powered-off VM: encrypted with the VM's key, or with a new key of its
    /// own (created on the VM's provider and sent to the host first). It needs
    /// `VirtualMachine.Config`, or `Cryptographer.AddDisk` for an encrypted VM.
    pub async fn add_disk(
        &self,
        caller: &Caller,
        name: &str,
        req: &AddDisk,
    ) -> Result<Vm, ServiceError> {
        let cx = self.cx;
        let user = caller.user.as_str();
        let action = format!("Adding a disk to VM {name}");
        let Some(record) = cx.store.vm(name)? else {
            // Whether a VM exists is told only to those who may change VMs.
            caller.require(Privilege::VmConfig, &action)?;
            return Err(no_vm(name));
        };
        let privilege = if record.encrypted {
            Privilege::CryptoAddDisk
        } else {
            Privilege::VmConfig
        };
        caller.require(privilege, &action)?;
        tresor_core::ops::check(name, VmOp::AddDisk, record.crypto_state, record.lock_reason)
            .map_err(|r| ServiceError::new(ErrorCode::VmLocked, r.message).de(r.message_de))?;
        if req.size == 0 {
            return Err(ServiceError::new(
                ErrorCode::BadRequest,
                "A disk needs a size above zero, for example --size 10G",
            ));
        }
        let disks_before = serde_json::from_str::<VmReport>(&record.report)
            .map(|r| r.disks.len())
            .unwrap_or(0);
        tresor_core::protocol::check_shape(disks_before, &[req.size], None).map_err(bad_shape)?;
        let own_key = if req.own_key {
            let provider = record.key_provider.clone().ok_or_else(|| {
                ServiceError::new(ErrorCode::PlainVm,
                    format!("VM {name} is not encrypted; a disk with a key of its own needs an encrypted VM (tresor vm encrypt {name})"),
                )
            })?;
            let material = keys::create(cx, &provider, &format!("{name}-disk")).await?;
            let key = material.key.clone();
            self.allow_key(name, &key)?;
            if let Err(e) = keys::push(cx, &record.host, vec![material]).await {
                keys::disown(cx, user, name, &record.host, &key).await;
                return Err(e);
            }
            keys::audit(cx, user, "add disk", Audited::Vm(name), &key)?;
            Some(key)
        } else {
            None
        };
        let command = Command::AddDisk {
            vm: name.to_owned(),
            disk: DiskSpec {
                size: req.size,
                own_key: own_key.clone(),
            },
        };
        let answer = cx
            .hub
            .request(&record.host, command, cx.hub.timeout())
            .await
            .map_err(super::agent_error)?;
        let reply = match super::reply_error(answer) {
            Ok(r) => r,
            Err(e) => {
                // The host refused: the disk's new key is used by nothing. (When the host did
                // not answer, the disk may still be made; the key stays.)
                if let Some(key) = &own_key {
                    keys::disown(cx, user, name, &record.host, key).await;
                }
                return Err(e);
            }
        };
        if let Reply::Vm { vm } = reply {
            cx.engine.observe_now(&record.host, vm).await;
        }
        Ok(vm_view(&self.record(name)?))
    }

    /// Who may use the console of VM `record`: `VirtualMachine.Console`, and for an encrypted
    /// VM `Cryptographer.Access` too (what its console shows comes from its disks in the clear).
    fn console_allowed(
        &self,
        caller: &Caller,
        name: &str,
        action: &str,
    ) -> Result<VmRecord, ServiceError> {
        let Some(record) = self.cx.store.vm(name)? else {
            caller.require(Privilege::VmConsole, action)?;
            return Err(no_vm(name));
        };
        caller.require(Privilege::VmConsole, action)?;
        if record.encrypted {
            caller.require(Privilege::CryptoAccess, action)?;
        }
        Ok(record)
    }

    /// What the serial console of VM `name` said, from byte `offset` of its log on.
    pub async fn console_read(
        &self,
        caller: &Caller,
        name: &str,
        offset: u64,
    ) -> Result<ConsoleOutput, ServiceError> {
        let record =
            self.console_allowed(caller, name, &format!("Reading the console of VM {name}"))?;
        reachable_host(self.cx, &record.host)?;
        let answer = self
            .cx
            .hub
            .request(
                &record.host,
                Command::ConsoleRead {
                    vm: name.to_owned(),
                    offset,
                },
                self.cx.hub.timeout(),
            )
            .await
            .map_err(super::agent_error)?;
        match super::reply_error(answer)? {
            Reply::Console {
                offset,
                next,
                data,
                running,
            } => {
                use base64::Engine;
                Ok(ConsoleOutput {
                    vm: name.to_owned(),
                    offset,
                    next,
                    data: base64::engine::general_purpose::STANDARD.encode(&data.0),
                    running,
                })
            }
            other => Err(ServiceError::new(
                ErrorCode::Internal,
                format!(
                    "Host {} answered a console read with {other:?}",
                    record.host
                ),
            )),
        }
    }

    /// Types `input` on the serial console of VM `name`.
    pub async fn console_write(
        &self,
        caller: &Caller,
        name: &str,
        input: &str,
    ) -> Result<VmDone, ServiceError> {
        let record =
            self.console_allowed(caller, name, &format!("Typing on the console of VM {name}"))?;
        // The document's limit is in characters; the host takes pieces of at most
        // MAX_CONSOLE_WRITE bytes, in order.
        if input.chars().count() > MAX_CONSOLE_INPUT {
            return Err(ServiceError::new(
                ErrorCode::BadRequest,
                format!("Console input is at most {MAX_CONSOLE_INPUT} characters a request; send more in several"),
            ));
        }
        reachable_host(self.cx, &record.host)?;
        let mut rest = input;
        while !rest.is_empty() {
            let mut cut = rest.len().min(MAX_CONSOLE_WRITE);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let answer = self
                .cx
                .hub
                .request(
                    &record.host,
                    Command::ConsoleWrite {
                        vm: name.to_owned(),
                        data: Chunk(rest.as_bytes()[..cut].to_vec()),
                    },
                    self.cx.hub.timeout(),
                )
                .await
                .map_err(super::agent_error)?;
            super::reply_error(answer)?;
            rest = &rest[cut..];
        }
        Ok(VmDone {
            vm: name.to_owned(),
            done: "typed".into(),
        })
    }

    /// Sends a file to a powered-off VM: an image (imported as its first disk, encrypted when
    /// the VM is) or a boot file. `body` yields the bytes as they arrive; they go to the host in
    /// pieces of at most [`MAX_CHUNK`] bytes, one after the other, so that an upload holds at
    /// most one piece in memory. Privileges and state are checked before the first byte is read.
    pub async fn upload<S, B, E>(
        &self,
        caller: &Caller,
        name: &str,
        piece: &FilePiece,
        body: &mut S,
    ) -> Result<Uploaded, ServiceError>
    where
        S: futures_util::Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;
        let cx = self.cx;
        let action = format!("Sending a file to VM {name}");
        let Some(record) = cx.store.vm(name)? else {
            caller.require(Privilege::VmConfig, &action)?;
            return Err(no_vm(name));
        };
        let kind: UploadKind = piece.kind.parse().map_err(|_| {
            ServiceError::new(
                ErrorCode::NotFound,
                format!(
                    "No file kind {:?}; a VM takes: image, kernel, initrd, cmdline",
                    piece.kind
                ),
            )
        })?;
        // An image is a new disk: for an encrypted VM, Cryptographer.AddDisk, as `add-disk`.
        // Whoever chooses what an encrypted VM boots reads its disks in the clear once it runs:
        // its kernel, initrd and command line need Cryptographer.Access (direct access).
        let privilege = match (kind, record.encrypted) {
            (_, false) => Privilege::VmConfig,
            (UploadKind::Image, true) => Privilege::CryptoAddDisk,
            (_, true) => Privilege::CryptoAccess,
        };
        caller.require(Privilege::VmConfig, &action)?;
        caller.require(privilege, &action)?;
        if kind == UploadKind::Image {
            tresor_core::ops::check(name, VmOp::AddDisk, record.crypto_state, record.lock_reason)
                .map_err(|r| ServiceError::new(ErrorCode::VmLocked, r.message).de(r.message_de))?;
        }
        let too_large = || {
            ServiceError::new(
                ErrorCode::TooLarge,
                format!(
                    "The {kind} is larger than {} bytes, the most a VM takes",
                    kind.max_bytes()
                ),
            )
        };
        let piece_too_large = || {
            ServiceError::new(
                ErrorCode::TooLarge,
                format!(
                    "One request carries at most {MAX_FILE_PIECE} bytes of a file; send it in pieces (?offset=N&more=true), as tresor vm upload does"
                ),
            )
        };
        let start = piece.offset;
        if piece
            .announced
            .is_some_and(|n| start.saturating_add(n) > kind.max_bytes())
        {
            return Err(too_large());
        }
        if piece.announced.is_some_and(|n| n > MAX_FILE_PIECE) {
            return Err(piece_too_large());
        }
        reachable_host(cx, &record.host)?;
        let mut offset = start;
        let mut buffer: Vec<u8> = Vec::with_capacity(MAX_CHUNK.min(1 << 20));
        let reply = loop {
            let next = body.next().await;
            let done = next.is_none();
            if let Some(bytes) = next {
                let bytes = bytes.map_err(|e| {
                    ServiceError::new(
                        ErrorCode::BadRequest,
                        format!("The {kind} could not be read to its end ({e}); send it again"),
                    )
                })?;
                let bytes = bytes.as_ref();
                let end = offset + (buffer.len() + bytes.len()) as u64;
                if end > kind.max_bytes() {
                    return Err(too_large());
                }
                if end - start > MAX_FILE_PIECE {
                    return Err(piece_too_large());
                }
                let mut rest = bytes;
                while !rest.is_empty() {
                    let take = rest.len().min(MAX_CHUNK - buffer.len());
                    buffer.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if buffer.len() == MAX_CHUNK {
                        let data = std::mem::take(&mut buffer);
                        let len = data.len() as u64;
                        self.send_piece(&record.host, name, kind, offset, data, false)
                            .await?;
                        offset += len;
                    }
                }
            }
            if done {
                let data = std::mem::take(&mut buffer);
                if kind == UploadKind::Image && !piece.more {
                    // The last piece of an image: its copy into the VM's new disk is a task.
                    let command = Command::Upload {
                        vm: name.to_owned(),
                        kind,
                        offset,
                        data: Chunk(data),
                        done: true,
                    };
                    let work = super::tasks::DiskWork {
                        kind: TaskKind::Import,
                        host: record.host.clone(),
                        vm: name.to_owned(),
                        path: record.path.clone(),
                        key: None,
                        user: caller.user.clone(),
                    };
                    tracing::info!(vm = name, user = %caller.user, %kind, "image sent to the VM; its import is a task");
                    return super::tasks::start_disk(cx, work, command).map(Uploaded::Task);
                }
                break self
                    .send_piece(&record.host, name, kind, offset, data, !piece.more)
                    .await?;
            }
        };
        if let Reply::Vm { vm } = reply {
            cx.engine.observe_now(&record.host, vm).await;
        }
        if !piece.more {
            tracing::info!(vm = name, user = %caller.user, %kind, bytes = offset, "file sent to the VM");
        }
        Ok(Uploaded::Vm(vm_view(&self.record(name)?)))
    }

    async fn send_piece(
        &self,
        host: &str,
        vm: &str,
        kind: UploadKind,
        offset: u64,
        data: Vec<u8>,
        done: bool,
    ) -> Result<Reply, ServiceError> {
        let command = Command::Upload {
            vm: vm.to_owned(),
            kind,
            offset,
            data: Chunk(data),
            done,
        };
        let answer = self
            .cx
            .hub
            .request(host, command, self.cx.hub.timeout())
            .await
            .map_err(super::agent_error)?;
        super::reply_error(answer)
    }

    /// Powers a VM on or off, unless its lock state forbids it.
    pub async fn power(
        &self,
        caller: &Caller,
        name: &str,
        on: bool,
    ) -> Result<PowerState, ServiceError> {
        let record = self.record(name)?;
        let op = if on { VmOp::PowerOn } else { VmOp::PowerOff };
        tresor_core::ops::check(name, op, record.crypto_state, record.lock_reason).map_err(
            |r| {
                // Only a disk's key missing (the VM itself is readable): the disk's exact
                // message first.
                let view = vm_view(&record);
                let disk = view.disks.iter().find(|d| !d.key_available);
                match disk {
                    Some(d) if on && record.connection_state != ConnectionState::Invalid => {
                        ServiceError::new(
                            ErrorCode::DiskKeyMissing,
                            format!(
                                "{} {}",
                                tresor_core::ops::disk_key_missing(&d.path, Lang::En),
                                r.message
                            ),
                        )
                        .de(format!(
                            "{} {}",
                            tresor_core::ops::disk_key_missing(&d.path, Lang::De),
                            r.message_de
                        ))
                    }
                    _ => ServiceError::new(ErrorCode::VmLocked, r.message).de(r.message_de),
                }
            },
        )?;
        let command = if on {
            Command::PowerOn { vm: name.into() }
        } else {
            Command::PowerOff { vm: name.into() }
        };
        // The host answers with the VM as it is now: taken at once, so that `vm show` after the
        // answer says what the host did.
        if let Reply::Vm { vm } = ask_host(self.cx, &record.host, command).await? {
            self.cx.engine.observe_now(&record.host, vm).await;
        }
        let event = match on {
            true => &tresor_core::events::VM_POWERED_ON,
            false => &tresor_core::events::VM_POWERED_OFF,
        };
        let user = caller.user.as_str();
        self.cx.store.add_event(&crate::store::EventRow {
            id: 0,
            time: crate::enrol::now(),
            event_type: event.id.into(),
            severity: event.severity.as_str().into(),
            vm: Some(name.to_owned()),
            host: Some(record.host.clone()),
            provider: None,
            user: Some(user.to_owned()),
            args: vec![
                ("vm".into(), name.to_owned()),
                ("host".into(), record.host.clone()),
                ("user".into(), user.to_owned()),
            ],
        })?;
        Ok(if on {
            PowerState::PoweredOn
        } else {
            PowerState::PoweredOff
        })
    }

    /// Unregister, reload, delete, encrypt, decrypt and rekey: checked against the VM's lock
    /// state, then carried out by the VM's host. Encrypt and rekey make the new key first (on the
    /// VM's provider, or the one asked for) and push it; a host that refuses leaves it unused,
    /// and it is retired. Encrypt, decrypt and rekey are tasks: answered once they are started
    /// (the task), carried out after.
    pub async fn operate(
        &self,
        caller: &Caller,
        name: &str,
        action: VmAction,
        body: Option<&CryptoRequest>,
    ) -> Result<Option<Task>, ServiceError> {
        let cx = self.cx;
        let user = caller.user.as_str();
        let deep = body.is_some_and(|b| b.deep);
        let vm_op = match action {
            VmAction::Unregister => VmOp::Unregister,
            VmAction::Reload => VmOp::Reload,
            VmAction::Delete => VmOp::Delete,
            VmAction::Encrypt => VmOp::Encrypt,
            VmAction::Decrypt => VmOp::Decrypt,
            VmAction::Rekey if deep => VmOp::DeepRekey,
            VmAction::Rekey => VmOp::Rekey,
            VmAction::PowerOn | VmAction::PowerOff | VmAction::Unlock => {
                return Err(ServiceError::new(
                    ErrorCode::Internal,
                    format!("{} is not an operation of this kind", action.as_str()),
                ))
            }
        };
        let disk_format = body
            .and_then(|b| b.disk_format)
            .map(tresor_core::protocol::DiskLayout::from);
        if disk_format.is_some() && !matches!(vm_op, VmOp::Encrypt | VmOp::DeepRekey) {
            return Err(ServiceError::new(
                ErrorCode::BadRequest,
                "A disk format is for encrypt or a deep rekey (--deep): no other operation writes the disks",
            ));
        }
        let record = self.record(name)?;
        tresor_core::ops::check(name, vm_op, record.crypto_state, record.lock_reason)
            .map_err(|r| ServiceError::new(ErrorCode::VmLocked, r.message).de(r.message_de))?;
        if let Some(task) = cx.tasks.running_on(name) {
            return Err(ServiceError::new(
                ErrorCode::Conflict,
                format!("VM {name} has task {task} running; wait for it (`tresor task wait {task}`) or cancel it"),
            ));
        }
        let mut new_key_made = None;
        let vm = name.to_owned();
        let command = match action {
            VmAction::Unregister => Command::Unregister { vm },
            VmAction::Reload => Command::Reload { vm },
            VmAction::Delete => Command::Delete { vm },
            VmAction::Decrypt => Command::Decrypt { vm },
            _ => {
                let provider = provider_or_default(
                    cx,
                    body.and_then(|b| b.provider.clone())
                        .or_else(|| record.key_provider.clone()),
                )?;
                let material = keys::create(cx, &provider, name).await?;
                let key = material.key.clone();
                let one = std::slice::from_ref(&key);
                if let Err(e) = self.allow_key(name, &key) {
                    keys::retire(cx, user, Audited::Vm(name), one).await;
                    return Err(e);
                }
                if let Err(e) = keys::push(cx, &record.host, vec![material]).await {
                    keys::retire(cx, user, Audited::Vm(name), one).await;
                    return Err(e);
                }
                new_key_made = Some(key.clone());
                let audited = match vm_op {
                    VmOp::Encrypt => "encrypt",
                    VmOp::DeepRekey => "deep rekey",
                    _ => "rekey",
                };
                keys::audit(cx, user, audited, Audited::Vm(name), &key)?;
                if action == VmAction::Encrypt {
                    Command::Encrypt {
                        vm,
                        key,
                        disk_format,
                    }
                } else {
                    Command::Rekey {
                        vm,
                        key,
                        deep: vm_op == VmOp::DeepRekey,
                        disk_format,
                    }
                }
            }
        };
        let kind = match vm_op {
            VmOp::Encrypt => Some(TaskKind::Encrypt),
            VmOp::Decrypt => Some(TaskKind::Decrypt),
            VmOp::Rekey => Some(TaskKind::Rekey),
            VmOp::DeepRekey => Some(TaskKind::DeepRekey),
            VmOp::Unregister
            | VmOp::Reload
            | VmOp::Delete
            | VmOp::PowerOn
            | VmOp::PowerOff
            | VmOp::Unlock
            | VmOp::AddDisk => None,
        };
        if let Some(kind) = kind {
            let work = super::tasks::DiskWork {
                kind,
                host: record.host.clone(),
                vm: name.to_owned(),
                path: record.path.clone(),
                key: new_key_made,
                user: user.to_owned(),
            };
            return super::tasks::start_disk(cx, work, command).map(Some);
        }
        let reply = cx
            .hub
            .request(&record.host, command, cx.hub.timeout())
            .await
            .map_err(super::agent_error)?;
        let reply = match super::reply_error(reply) {
            Ok(r) => r,
            Err(e) => {
                // The host refused or undid the operation: its new key is used by nothing.
                // (When the host did not answer, the operation may still finish; the key stays.)
                if let Some(key) = &new_key_made {
                    keys::retire(cx, user, Audited::Vm(name), std::slice::from_ref(key)).await;
                }
                return Err(e);
            }
        };
        match (action, reply) {
            (VmAction::Unregister | VmAction::Delete, _) => {
                // The engine first: a pass of it that is under way may still write the VM.
                cx.engine.forget(name);
                cx.store.remove_vm(name)?;
            }
            (_, Reply::Vm { vm }) => {
                if action != VmAction::Reload {
                    self.settle_keys(&vm)?;
                }
                cx.engine.observe_now(&record.host, vm).await;
            }
            _ => {}
        }
        Ok(None)
    }

    /// Registers a VM with these keys (written before the answer), unless the registry refuses
    /// it.
    fn register(
        &self,
        id: &str,
        name: &str,
        host: &str,
        keys: impl IntoIterator<Item = KeyRef>,
    ) -> Result<(), ServiceError> {
        self.admit(tresor_core::registry::Registration {
            id: id.to_owned(),
            name: name.to_owned(),
            host: host.to_owned(),
            keys: keys.into_iter().collect(),
        })
    }

    /// Adds a registration (or changes one) after the registry's checks.
    fn admit(&self, reg: tresor_core::registry::Registration) -> Result<(), ServiceError> {
        self.cx
            .engine
            .check_registration(&reg)
            .map_err(|c| ServiceError::new(ErrorCode::RegistryConflict, c.to_string()))?;
        self.cx.engine.register(reg)?;
        Ok(())
    }

    /// Lets a registered VM use one more key (a new key of the server's, before it is pushed).
    fn allow_key(&self, vm: &str, key: &KeyRef) -> Result<(), ServiceError> {
        let mut reg = self.cx.engine.registration(vm).ok_or_else(|| no_vm(vm))?;
        reg.keys.insert(key.clone());
        self.cx.engine.register(reg)?;
        Ok(())
    }

    /// After an operation the server started, a VM keeps only the keys its host still names (the
    /// registry never gains a key from what a host says).
    pub(crate) fn settle_keys(&self, report: &VmReport) -> Result<(), ServiceError> {
        let Some(mut reg) = self.cx.engine.registration(&report.name) else {
            return Ok(());
        };
        let named: BTreeSet<_> = report.keys.iter().map(|k| &k.key).collect();
        let before = reg.keys.len();
        reg.keys.retain(|k| named.contains(k));
        if reg.keys.len() != before {
            self.cx.engine.register(reg)?;
        }
        Ok(())
    }
}

/// An unlock that cannot be done now, and why.
struct UnlockFailure {
    vm: String,
    key: KeyRef,
    error: ServiceError,
}

/// Why the provider's answer for `key` refuses an unlock: the code, and the reason in English
/// and German.
fn unlock_refused(key: &KeyRef, answer: &ProviderAnswer) -> (ErrorCode, String, String) {
    let p = key.provider();
    match answer {
        ProviderAnswer::Unreachable(e) => (
            ErrorCode::ProviderUnreachable,
            format!("key provider {p} cannot be reached ({e}; kmsClusterError)"),
            format!("der Schlüsselanbieter {p} ist nicht erreichbar ({e}; kmsClusterError)"),
        ),
        ProviderAnswer::PermissionDenied(e) => (
            ErrorCode::ProviderRefused,
            format!("key provider {p} refuses the server ({e}; kmsClusterError)"),
            format!("der Schlüsselanbieter {p} weist den Server ab ({e}; kmsClusterError)"),
        ),
        ProviderAnswer::NotFound => (
            ErrorCode::KeyMissingOnKms,
            format!("key {key} is not on the provider (keyMissingOnKms)"),
            format!("Schlüssel {key} ist nicht auf dem Anbieter (keyMissingOnKms)"),
        ),
        ProviderAnswer::NotActive(state) => (
            ErrorCode::KeyMissingOnKms,
            format!("key {key} is {state} on the provider (keyMissingOnKms); its administrator reactivates it"),
            format!("Schlüssel {key} ist auf dem Anbieter {state} (keyMissingOnKms); dessen Administrator aktiviert ihn wieder"),
        ),
        _ => (
            ErrorCode::ProviderError,
            format!("{answer:?}"),
            format!("{answer:?}"),
        ),
    }
}

/// Whether a VM needs a key of `provider` (its own KEK or a disk's).
fn uses_provider(vm: &VmRecord, provider: &str) -> bool {
    if vm.key_provider.as_deref() == Some(provider) {
        return true;
    }
    serde_json::from_str::<VmReport>(&vm.report)
        .map(|r| r.keys.iter().any(|k| k.key.provider() == provider))
        .unwrap_or(false)
}

fn bad_shape(e: tresor_core::protocol::ShapeError) -> ServiceError {
    ServiceError::new(ErrorCode::BadShape, e.to_string())
}

/// A new VM id, chosen by the server.
fn new_vm_id() -> Result<String, ServiceError> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).map_err(|_| {
        ServiceError::new(
            ErrorCode::Internal,
            "The system's random number generator failed; try again",
        )
    })?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
