//! `tresor agent`: the host's part. It holds the keys it is given in memory only, generates the
//! data keys, keeps every data key wrapped next to the data, opens real encrypted disks, and runs
//! the VMs in QEMU.
//!
//! - [`host`]: the host's state and the server's commands.
//! - [`memory`]: locked, non-dumpable memory for keys (the only `unsafe` code of the agent).
//! - [`keycache`]: the keys the server pushed.
//! - [`wrap`]: data keys wrapped under key-encryption keys, bound to VM and purpose.
//! - [`vmfile`]: a VM's directory and `vm.json`: the key hierarchy on disk.
//! - [`run`]: `tresor agent join` and `tresor agent`.
//! - [`session`]: the session with the server: dial, hello, inventory, requests, heartbeats.
//! - [`runtime`]: where VMs run, behind one interface ([`runtime::Runtime`]).
//! - [`qemu`]: the QEMU runtime: VMs in QEMU processes of the agent's, secrets over QMP.
//! - [`libvirt`]: the libvirt runtime: VMs as libvirt domains, secrets as ephemeral libvirt secrets.
//! - [`seed`]: the cloud-init NoCloud seed of a VM, made in memory at power-on.
//! - [`diskops`]: encrypt, decrypt and deep rekey of disks, journaled so a crash loses nothing.
//! - [`disk`]: LUKS disks through `qemu-img` and `qemu-io`, secrets through file descriptors.

#![deny(unsafe_code)]

pub mod disk;
pub mod diskops;
pub mod host;
pub mod keycache;
pub mod libvirt;
pub mod memory;
pub mod metrics;
pub mod progress;
pub mod qemu;
pub mod rawluks;
pub mod run;
pub mod runtime;
pub mod seed;
pub mod session;
pub mod vmfile;
pub mod wrap;
