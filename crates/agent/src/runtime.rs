//! Where a host's VMs run, behind one interface: a [`Runtime`] starts a VM from its power-on
//! plan (disks opened with their secrets) and finds one still running after the agent restarted;
//! a [`Guest`] is one running VM. The QEMU runtime ([`crate::qemu`]: QEMU processes the agent
//! starts itself, secrets over QMP) is the one of `tresor dev` and the default; the libvirt
//! runtime ([`crate::libvirt`]: domains of libvirtd, secrets as ephemeral private libvirt
//! secrets) is the one of production KVM hosts.

use std::path::Path;
use std::time::Duration;

use crate::vmfile::PowerOnPlan;

/// Why a runtime could not start or reach a VM.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Qemu(#[from] crate::qemu::QemuError),
    #[error(transparent)]
    Libvirt(#[from] crate::libvirt::LibvirtError),
}

/// Which runtime a host uses.
#[derive(Clone, Debug, Default)]
pub enum RuntimeKind {
    /// QEMU processes the agent starts itself.
    #[default]
    Qemu,
    /// Domains of libvirtd.
    Libvirt(crate::libvirt::LibvirtConfig),
}

/// A way of running VMs on a host.
pub trait Runtime: Send + std::fmt::Debug {
    /// Its name in the agent's config and logs (`qemu`).
    fn name(&self) -> &'static str;

    /// Starts VM `name` with the disks of `plan`, each opened with its secret; `run_dir` is the
    /// VM's private folder for sockets and logs.
    fn start(
        &self,
        name: &str,
        run_dir: &Path,
        plan: &PowerOnPlan,
    ) -> Result<Box<dyn Guest>, RuntimeError>;

    /// VM `name` still running from an earlier run of the agent, with `disks` disks.
    fn find(&self, name: &str, run_dir: &Path, disks: usize) -> Option<Box<dyn Guest>>;

    /// How long a guest has to shut down after it is asked to.
    fn shutdown_timeout(&self) -> Duration;

    /// Runs VMs under TCG from now on (KVM was found not to boot guests here).
    fn fall_back_to_tcg(&mut self) {}

    /// Whether VMs run here without any key reaching disk; if not, why and what to do.
    fn keeps_keys_off_disk(&self) -> Result<(), String> {
        Ok(())
    }

    /// An existing VM of the runtime's own that is not Tresor's (a libvirt domain), powered off,
    /// for adoption: what it is, or why it cannot be adopted.
    fn describe_foreign(&self, domain: &str) -> Result<crate::libvirt::DomainShape, String> {
        Err(format!(
            "This host's agent runs VMs in QEMU itself ({}); adopting domain {domain} needs runtime = \"libvirt\"",
            self.name()
        ))
    }

    /// Lets go of a foreign VM that was adopted (its definition goes; Tresor's replaces it).
    fn release_foreign(&self, _domain: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// Forgets VM `name` with id `id` (unregistered or deleted, and not running): whatever the
    /// runtime keeps of it outside the VM's folder goes.
    fn forget(&self, _name: &str, _id: &str) -> Result<(), RuntimeError> {
        Ok(())
    }
}

/// A running VM.
pub trait Guest: Send + std::fmt::Debug {
    /// The id of the process that runs it, for logs.
    fn pid(&self) -> u32;

    /// The accelerator it runs under: `kvm` or `tcg`.
    fn accel(&self) -> &'static str;

    /// Whether it still runs (one that died is noticed here).
    fn is_running(&mut self) -> bool;

    /// Asks the guest to shut down, and stops it if it has not within `timeout`; whether it shut
    /// down by itself.
    fn power_off(self: Box<Self>, timeout: Duration) -> bool;

    /// Leaves it running when the handle goes (the agent stops; the guest does not).
    fn detach(self: Box<Self>);

    /// The path each of its disks' data takes, in order (empty: QEMU's driver for all).
    fn data_paths(&mut self) -> Vec<tresor_core::protocol::DataPath> {
        Vec::new()
    }
}
