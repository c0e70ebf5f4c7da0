//! Key material in memory, with real processes: after typical work (an encrypted VM created and
//! powered on, its host restarted so that its key is fetched and pushed again), the test reads
//! the memory of the server, the key server and the agent (it runs as root; as another user it
//! says so and checks nothing) and counts the copies of the VM's key, as raw bytes and as the hex
//! the agent protocol carries, in the memory each writes at run time. Freed memory is wiped by the
//! binary's allocator and the agent scrubs the stack after work with keys. The TLS library
//! decrypts a record in its receive buffer, where the plaintext stays until something overwrites
//! it: the server therefore does not keep a provider connection whose answer carried a key, and
//! follows a frame that carried keys to an agent, once answered, with a padding frame as long.
//! What is left is the key in the agent's locked key memory, once, and nothing else anywhere.

mod common;

use std::io::{Read, Seek, SeekFrom};

use common::{pid_of, wait_for, Dev};

/// The key's material, read from the key server's database with its master key.
fn key_material(dev: &Dev, uid: &str) -> Vec<u8> {
    let config =
        tresor_kms::config::KmsConfig::load(std::path::Path::new(&dev.kms_config())).unwrap();
    let master = tresor_kms::crypto::MasterKey::load_or_create(&config.master_key_path()).unwrap();
    let store = tresor_kms::store::Store::open(&config.database_path()).unwrap();
    let row = store
        .read(|c| tresor_kms::store::get_object(c, uid))
        .unwrap()
        .unwrap();
    let plain = master.open(uid, row.sealed.as_deref().unwrap()).unwrap();
    let item = tresor_kmip::ttlv::decode_item(&plain, &Default::default()).unwrap();
    find_material(&item).expect("key material in the object")
}

fn find_material(item: &tresor_kmip::ttlv::Item) -> Option<Vec<u8>> {
    use tresor_kmip::ttlv::Value;
    match &item.value {
        Value::ByteString(b) if item.tag == tresor_kmip::spec::tag::KEY_MATERIAL => {
            Some(b.as_slice().to_vec())
        }
        Value::Structure(items) => items.iter().find_map(find_material),
        _ => None,
    }
}

/// How often `needle` occurs in the memory of process `pid` that it writes at run time (heap,
/// stacks, anonymous mappings with pages in them; not the mapped files of its program).
fn copies_in(pid: &str, needle: &[u8]) -> usize {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut count = 0;
    // Each mapping: its header line, then fields such as `Rss:`.
    let mut mappings: Vec<(String, u64)> = Vec::new();
    for line in smaps.lines() {
        if let Some(rss) = line.strip_prefix("Rss:") {
            if let Some(last) = mappings.last_mut() {
                last.1 = rss
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
            }
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            mappings.push((line.to_owned(), 0));
        }
    }
    for (line, rss) in mappings {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        let path = line.split_whitespace().nth(5).unwrap_or("");
        let runtime = path.is_empty() || path.starts_with('[');
        if rss == 0
            || !runtime
            || !perms.starts_with("rw")
            || line.contains("[vvar]")
            || line.contains("[vsyscall]")
        {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (
            u64::from_str_radix(start, 16).unwrap(),
            u64::from_str_radix(end, 16).unwrap(),
        );
        let mut buf = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        let mut at = 0;
        while let Some(i) = buf[at..].iter().position(|&b| b == needle[0]) {
            let start = at + i;
            if buf.len() - start < needle.len() {
                break;
            }
            if &buf[start..start + needle.len()] == needle {
                count += 1;
                eprintln!("  {pid}: copy in {line} at +{start:#x}");
            }
            at = start + 1;
        }
    }
    count
}

#[test]
fn keys_are_held_only_where_they_must_be() {
    if euid_is_not_root() {
        eprintln!("key_copies: not root; another process's memory cannot be read, nothing checked");
        return;
    }
    let dev = Dev::start(1);
    dev.create_vm("web01", true);
    dev.ok(&["vm", "power-on", "web01"]);
    let pushes = || {
        dev.ok(&["event", "list", "--type", "key.pushed", "-o", "json"])
            .matches("\"key.pushed\"")
            .count()
    };
    let before = pushes();
    dev.ok(&["host", "reboot", "host-1"]);
    wait_for("the key is pushed again after the restart", || {
        pushes() > before
    });
    wait_for("web01 is unlocked again", || {
        dev.vm("web01")["cryptoState"] == "unlocked"
    });
    dev.ok(&["vm", "power-on", "web01"]);
    std::thread::sleep(std::time::Duration::from_secs(5));
    let uid = dev
        .ok(&["vm", "get", "web01", "config.keyId.keyId"])
        .trim()
        .to_owned();
    let key = key_material(&dev, &uid);
    assert_eq!(key.len(), 32);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let root = dev.dir.path();
    let server = pid_of(&[
        "server --config",
        &root.join("server/server.toml").display().to_string(),
    ]);
    let kms = dev.kms_pid();
    let agent = pid_of(&[
        "agent --config",
        &root.join("host-1/agent.toml").display().to_string(),
    ]);
    let count = |pid: &str| (copies_in(pid, &key), copies_in(pid, hex.as_bytes()));
    let (server_n, kms_n, agent_n) = (count(&server), count(&kms), count(&agent));
    eprintln!("copies (raw, hex): server {server_n:?}, key server {kms_n:?}, agent {agent_n:?}");
    assert_eq!(
        server_n,
        (0, 0),
        "the server keeps the key after pushing it"
    );
    assert_eq!(kms_n, (0, 0), "the key server holds copies of the key");
    assert_eq!(
        agent_n.0, 1,
        "the agent holds the key once, in its locked memory"
    );
    assert_eq!(
        agent_n.1, 0,
        "the agent holds the key as hex (the protocol's form)"
    );
}

/// Whether this test runs without root (then it cannot read other processes' memory).
fn euid_is_not_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().nth(1).map(|e| e != "0"))
        })
        .unwrap_or(true)
}
