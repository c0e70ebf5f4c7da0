//! Nothing is lost when the agent dies (the agent issue): the real agent process is killed with
//! SIGKILL at many moments of an encrypt, a deep rekey and a decrypt of a VM whose disk is full
//! of the guest's data, then started again. Each time the VM must open with the old or the new
//! keys, hold exactly the data the guest wrote, carry no leftover of the interrupted operation
//! (no journal, no image that `vm.json` does not name), and accept the next operation.
//!
//! The moments are chosen two ways: by what the VM's folder shows (the request just sent, the
//! journal written, the new image being filled, the new image nearly full) and by time (spread
//! over the length of an uninterrupted run of the same operation).

mod common;
use common::{find_file, wait_for, Dev, Proc, TRESOR};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DISK_MIB: u64 = 48;

/// When to kill the agent.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// As soon as the client has sent the request.
    Sent,
    /// When the journal (`operation.json`) appears.
    Journal,
    /// When the new image holds this many MiB.
    NewImage(u64),
    /// This long after the request.
    After(Duration),
}

/// What the VM's folder showed when the agent was killed.
#[derive(Debug, Default)]
struct Seen {
    journal: bool,
    new_image: bool,
}

struct Host {
    config: PathBuf,
    agent: Option<Proc>,
    pid: String,
}

impl Host {
    fn kill(&mut self, dev: &Dev) {
        std::process::Command::new("kill")
            .args(["-KILL", &self.pid])
            .status()
            .unwrap();
        wait_for("the agent to die", || {
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
        });
        if let Some(mut p) = self.agent.take() {
            let _ = p.0.wait();
        }
        wait_for("the server to see the host go", || !connected(dev));
    }

    fn start(&mut self, dev: &Dev) {
        let log = std::fs::File::create(self.config.with_file_name("restarted-agent.log")).unwrap();
        let child = std::process::Command::new(TRESOR)
            .args(["agent", "--config"])
            .arg(&self.config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.pid = child.id().to_string();
        self.agent = Some(Proc(child));
        wait_for("the host to connect again", || connected(dev));
    }
}

fn connected(dev: &Dev) -> bool {
    let hosts: serde_json::Value =
        serde_json::from_str(&dev.ok(&["host", "list", "-o", "json"])).unwrap_or_default();
    hosts[0]["connected"] == true
}

/// The disk images in the VM's folder.
fn images(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".qcow2") || n.ends_with(".img") || n.ends_with(".luks"))
        .collect();
    out.sort();
    out
}

/// Runs `op` on the VM, kills the agent at `moment`, and says what the folder showed then.
fn interrupt(dev: &Dev, host: &mut Host, dir: &Path, op: &[&str], moment: Moment) -> Seen {
    let before = images(dir);
    let mut client = std::process::Command::new(TRESOR)
        .arg("vm")
        .args(op)
        .env("TRESOR_SERVER", dev.url())
        .env("TRESOR_CA", dev.ca())
        .env("TRESOR_TOKEN", &dev.token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let new_image_mib = || {
        images(dir)
            .iter()
            .filter(|i| !before.contains(i))
            .filter_map(|i| std::fs::metadata(dir.join(i)).ok())
            .map(|m| m.len() >> 20)
            .max()
    };
    loop {
        let done = matches!(client.try_wait(), Ok(Some(_)));
        let due = match moment {
            Moment::Sent => true,
            Moment::Journal => dir.join("operation.json").exists(),
            Moment::NewImage(mib) => new_image_mib().is_some_and(|m| m >= mib),
            Moment::After(d) => started.elapsed() >= d,
        };
        if due || done || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let seen = Seen {
        journal: dir.join("operation.json").exists(),
        new_image: new_image_mib().is_some(),
    };
    host.kill(dev);
    // The client follows the operation's task, which outlives the agent: it is let go.
    let _ = client.kill();
    let _ = client.wait();
    seen
}

/// Whether the VM's disk is encrypted now (what `vm.json` says and the image shows).
fn encrypted(dev: &Dev, name: &str) -> bool {
    let v = dev.vm(name);
    v["cryptoState"] != "unencrypted"
}

/// After a restart: the interrupted operation is finished or undone, the VM opens with its
/// keys, and the guest's data is all there.
fn check(dev: &Dev, dir: &Path, name: &str) {
    // The agent finishes or undoes the disk step at start, and the VM-wide operation once the
    // server has sent the VM's key again.
    wait_for("the interrupted operation to be finished or undone", || {
        !dir.join("vm-operation.json").exists()
    });
    // The server settles the operation's task from the host's journal before the next one.
    wait_for("the server to settle the task", || {
        dev.ok(&["task", "list", "--running", "-o", "json"]).trim() == "[]"
    });
    assert!(
        !dir.join("operation.json").exists(),
        "the journal is left over after the agent started again"
    );
    wait_for("the VM to be reported unlocked or unencrypted", || {
        let v = dev.vm(name);
        v["connectionState"] == "connected"
            && (v["cryptoState"] == "unlocked" || v["cryptoState"] == "unencrypted")
    });
    // The folder holds exactly the images the VM names (the agent reads them from its files,
    // sealed or not, and reports them).
    let named = || -> Vec<String> {
        dev.vm(name)["disks"]
            .as_array()
            .map(|disks| {
                disks
                    .iter()
                    .filter_map(|d| d["path"].as_str())
                    .filter_map(|p| Path::new(p).file_name())
                    .map(|f| f.to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_for("the VM's disks to be the images in its folder", || {
        images(dir) == named()
    });
    // Its keys may still be on their way to the host.
    wait_for("the VM to power on", || {
        dev.cli(&["vm", "power-on", name]).0
    });
    let out = dev.guest_io(name, "vd0", &format!("read -P 0x6b 0 {}M", DISK_MIB - 1));
    assert!(
        out.contains(&format!(
            "read {}/{} bytes",
            (DISK_MIB - 1) << 20,
            (DISK_MIB - 1) << 20
        )),
        "the guest's data is not intact: {out}"
    );
    let out = dev.guest_io(name, "vd0", &format!("read -P 0x2e {}M 1M", DISK_MIB - 1));
    assert!(out.contains("read 1048576/1048576 bytes"), "{out}");
    dev.ok(&["vm", "power-off", name]);
}

#[test]
fn killing_the_agent_during_disk_operations_loses_nothing() {
    let dev = Dev::start(1);
    let name = "db01";
    dev.ok(&[
        "vm",
        "create",
        name,
        "--host",
        "host-1",
        "--disk",
        &format!("{DISK_MIB}M"),
    ]);
    let dir = find_file(dev.dir.path(), &format!("{name}/vm.json"))
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    // The guest fills the disk: one pattern, and another in the last MiB.
    dev.ok(&["vm", "power-on", name]);
    let out = dev.guest_io(name, "vd0", &format!("write -P 0x6b 0 {}M", DISK_MIB - 1));
    assert!(out.contains("wrote"), "{out}");
    let out = dev.guest_io(name, "vd0", &format!("write -P 0x2e {}M 1M", DISK_MIB - 1));
    assert!(out.contains("wrote"), "{out}");
    // A wrong pattern is seen as wrong (the check below can fail).
    let out = dev.guest_io(name, "vd0", "read -P 0x2e 0 1M");
    assert!(out.contains("Pattern verification failed"), "{out}");
    dev.ok(&["vm", "power-off", name]);

    let config = find_file(dev.dir.path(), "host-1/agent.toml").unwrap();
    let mut host = Host {
        pid: common::pid_of(&["agent --config", &config.display().to_string()]),
        config,
        agent: None,
    };

    // How long each operation takes uninterrupted, for the timed moments.
    let timed = |op: &[&str]| {
        let started = Instant::now();
        let mut args = vec!["vm"];
        args.extend_from_slice(op);
        dev.ok(&args);
        started.elapsed()
    };
    let encrypt_time = timed(&["encrypt", name]);
    check(&dev, &dir, name);
    let rekey_time = timed(&["rekey", name, "--deep"]);
    check(&dev, &dir, name);
    let decrypt_time = timed(&["decrypt", name]);
    check(&dev, &dir, name);
    eprintln!(
        "uninterrupted: encrypt {encrypt_time:?}, deep rekey {rekey_time:?}, decrypt {decrypt_time:?}"
    );

    let moments = vec![
        Moment::Sent,
        Moment::Journal,
        Moment::NewImage(1),
        Moment::NewImage(DISK_MIB / 2),
        Moment::NewImage(DISK_MIB - 4),
    ];
    let mut completed = 0;
    let mut rolled_back = 0;
    let mut in_copy = 0;
    let mut kills = 0;
    for op in ["encrypt", "rekey", "decrypt"] {
        let length = match op {
            "encrypt" => encrypt_time,
            "rekey" => rekey_time,
            _ => decrypt_time,
        };
        let mut these = moments.clone();
        these.extend([1, 3, 5, 7, 9].map(|tenths| Moment::After(length * tenths / 10)));
        for moment in these {
            // Bring the VM to where the operation applies.
            let wants_encrypted = op != "encrypt";
            if encrypted(&dev, name) != wants_encrypted {
                dev.ok(&[
                    "vm",
                    if wants_encrypted {
                        "encrypt"
                    } else {
                        "decrypt"
                    },
                    name,
                ]);
            }
            let args: Vec<&str> = match op {
                "rekey" => vec!["rekey", name, "--deep"],
                other => vec![other, name],
            };
            let before = images(&dir);
            let seen = interrupt(&dev, &mut host, &dir, &args, moment);
            kills += 1;
            if seen.journal && seen.new_image {
                in_copy += 1;
            }
            host.start(&dev);
            check(&dev, &dir, name);
            if images(&dir) == before {
                rolled_back += 1;
            } else {
                completed += 1;
            }
            eprintln!("{op} killed at {moment:?}: {seen:?}");
        }
    }
    eprintln!(
        "{kills} kills: {completed} operations completed, {rolled_back} rolled back, {in_copy} killed while copying"
    );
    // The kills landed in different phases: some while the new image was being written, some
    // before or after.
    assert!(
        in_copy >= 3,
        "too few kills hit the copy: {in_copy} of {kills}"
    );
    assert!(
        rolled_back >= 1 && completed >= 1,
        "{completed} completed, {rolled_back} rolled back"
    );
}
