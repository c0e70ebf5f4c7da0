//! Three servers on one PostgreSQL database, one leading: the leader is killed with SIGKILL in
//! the middle of a bulk unlock (the key server returns after both hosts restarted without it;
//! host-1's VMs are unlocked, host-2's agent is frozen with the keys on their way to it) and of
//! a stream of VM creates sent by a client that knows all three servers. A standby takes over:
//! every acknowledged create is there, every locked VM ends unlocked, and each of their keys is
//! pushed once and recorded once (the push the dead leader sent to host-2 is settled by the new
//! leader from what host-2 holds).

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{pid_of, wait_for, Dev, Proc, TRESOR};

const VMS: usize = 6;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_default()
}

#[test]
fn a_standby_takes_over_from_a_leader_killed_mid_unlock_and_mid_creates() {
    let dev = Dev::start_servers(2, 3, 3, &[]);
    let names: Vec<String> = (0..VMS).map(|i| format!("enc{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let host = format!("host-{}", 1 + i % 2);
        dev.ok(&[
            "vm",
            "create",
            name,
            "--host",
            &host,
            "--disk",
            "1M",
            "--encrypt",
        ]);
    }
    // The key server stops; both hosts restart without it: every encrypted VM locks.
    let kms_config = dev.kms_config();
    Command::new("kill")
        .args(["-INT", &dev.kms_pid()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    dev.ok(&["host", "reboot", "host-1"]);
    dev.ok(&["host", "reboot", "host-2"]);
    let locked = || -> usize {
        json(&dev.ok(&["vm", "list", "--locked", "-o", "json"]))
            .as_array()
            .map_or(0, |a| a.len())
    };
    wait_for("every encrypted VM is locked", || locked() == VMS);
    let last_event = json(&dev.ok(&["event", "list", "-o", "json"]))
        .as_array()
        .and_then(|a| a.iter().filter_map(|e| e["id"].as_i64()).max())
        .unwrap_or(0);

    // A stream of creates, each recorded when the server acknowledged it.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Mutex<Vec<(String, Instant, Instant)>>> = Arc::default();
    let stream = {
        let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
        let env = (dev.servers.join(","), dev.ca(), dev.token.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("plain{n}");
                n += 1;
                let sent = Instant::now();
                let out = Command::new(TRESOR)
                    .args(["vm", "create", &name, "--host", "host-1"])
                    .env("TRESOR_SERVER", &env.0)
                    .env("TRESOR_CA", &env.1)
                    .env("TRESOR_TOKEN", &env.2)
                    .output()
                    .unwrap();
                if out.status.success() {
                    acknowledged
                        .lock()
                        .unwrap()
                        .push((name, sent, Instant::now()));
                }
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));

    // The key server returns and the leader unlocks; host-2's agent is frozen, so the leader
    // is killed with host-1's VMs unlocked and host-2's keys sent but not answered.
    let host2 = pid_of(&["agent --config", "host-2/agent.toml"]);
    Command::new("kill")
        .args(["-STOP", &host2])
        .status()
        .unwrap();
    let _kms = Proc(
        Command::new(TRESOR)
            .args(["kms", "serve", "--config", &kms_config])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Watched on the leader itself (a standby's view follows it within a second).
    let on_leader = |args: &[&str]| -> String {
        let out = Command::new(TRESOR)
            .args(args)
            .env("TRESOR_SERVER", &dev.servers[0])
            .env("TRESOR_CA", dev.ca())
            .env("TRESOR_TOKEN", &dev.token)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut locked_at_kill = VMS;
    wait_for("the leader unlocks host-1's VMs", || {
        locked_at_kill = json(&on_leader(&["vm", "list", "--locked", "-o", "json"]))
            .as_array()
            .map_or(VMS, |a| a.len());
        locked_at_kill == VMS / 2
    });
    // Its push to host-2 is under way.
    std::thread::sleep(Duration::from_millis(500));
    let first = dev.dir.path().join("server/server.toml");
    let leader = pid_of(&["server --config", &first.display().to_string()]);
    Command::new("kill").args(["-9", &leader]).status().unwrap();
    let killed = Instant::now();
    Command::new("kill")
        .args(["-CONT", &host2])
        .status()
        .unwrap();

    wait_for("every locked VM is unlocked by the new leader", || {
        locked() == 0
    });
    let unlocked_after = killed.elapsed();
    wait_for("creates are acknowledged again", || {
        acknowledged
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, sent, _)| *sent > killed)
            .count()
            >= 3
    });
    stop.store(true, Ordering::Relaxed);
    stream.join().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    let takeover = acknowledged
        .iter()
        .filter(|(_, sent, _)| *sent > killed)
        .map(|(_, _, done)| done.duration_since(killed))
        .min()
        .unwrap();
    eprintln!(
        "takeover: the first create sent after the kill was acknowledged {takeover:?} after it; \
         {locked_at_kill} of {VMS} VMs were still locked at the kill, and every VM was unlocked \
         {unlocked_after:?} after it; {} creates acknowledged in all",
        acknowledged.len()
    );

    // Every acknowledged create is there (a standby answering the list follows the leader's
    // writes within a second).
    let missing = || -> Vec<String> {
        let vms = json(&dev.ok(&["vm", "list", "-o", "json"]));
        let listed: Vec<&str> = vms
            .as_array()
            .map(|a| a.iter().filter_map(|v| v["name"].as_str()).collect())
            .unwrap_or_default();
        acknowledged
            .iter()
            .map(|(name, _, _)| name.clone())
            .filter(|name| !listed.contains(&name.as_str()))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !missing().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(missing(), Vec::<String>::new(), "acknowledged, and gone");
    // Each locked VM's key was pushed once since the hosts restarted, by one leader or the
    // other, and recorded once.
    let events = json(&dev.ok(&["event", "list", "--type", "key.pushed", "-o", "json"]));
    for name in &names {
        let pushes = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["id"].as_i64() > Some(last_event) && e["vm"] == name.as_str())
            .count();
        if pushes != 1 {
            let mut logs = String::new();
            for f in ["server.log", "server-2.log", "server-3.log", "host-2.log"] {
                let text = std::fs::read_to_string(dev.dir.path().join("logs").join(f))
                    .unwrap_or_default();
                for line in text.lines().filter(|l| {
                    l.contains("push")
                        || l.contains("leads")
                        || l.contains("settled")
                        || l.contains("session")
                }) {
                    logs.push_str(&format!("{f}: {line}\n"));
                }
            }
            panic!("{name}'s key was pushed {pushes} times: {events}\n{logs}");
        }
    }
    let by_earlier = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["id"].as_i64() > Some(last_event))
        .filter(|e| e.to_string().contains("led before"))
        .count();
    eprintln!("{by_earlier} pushes were settled by the new leader from what the host held");
}
