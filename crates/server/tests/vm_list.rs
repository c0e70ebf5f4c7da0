//! The VM list (`GET /api/v1/vms`): answered from the store's memory, filtered and paged, the
//! same JSON as `vm show`; the engine's deferred VM states are seen at once and written later,
//! and a removed VM does not come back with them.

mod common;

use common::{http, seed_users, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tresor_core::vm::CryptoState;
use tresor_server::api::vm_view;

fn vm_json(r: &VmRecord) -> serde_json::Value {
    serde_json::to_value(vm_view(r)).unwrap()
}
use tresor_server::store::VmRecord;

fn record(i: usize) -> VmRecord {
    let locked = i.is_multiple_of(3);
    VmRecord {
        id: format!("id-{i:04}"),
        name: format!("vm-{i:04}"),
        host: format!("host-{}", i % 2),
        path: format!("/vms/vm-{i:04}"),
        encrypted: true,
        key_provider: Some(if i.is_multiple_of(5) { "other" } else { "kms" }.into()),
        key_id: Some(format!("k{i}")),
        power_state: tresor_core::protocol::PowerState::PoweredOff,
        crypto_state: if locked {
            CryptoState::Locked
        } else {
            CryptoState::Unlocked
        },
        connection_state: tresor_core::vm::ConnectionState::Connected,
        lock_reason: locked.then_some(tresor_core::vm::LockReason::KmsClusterError),
        report: "{}".into(),
    }
}

/// A GET: the status, the `X-Total-Count` header and the JSON body.
async fn get(addr: &str, path: &str) -> (u16, Option<usize>, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer viewer-token\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let header = |name: &str| -> Option<usize> {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name)
                .then(|| v.trim().parse().ok())?
        })
    };
    let status: u16 = head[9..12].parse().unwrap();
    if status != 200 {
        return (status, header("x-total-count"), serde_json::Value::Null);
    }
    // The list is streamed in pieces, with its length said first.
    assert_eq!(header("content-length"), Some(body.len()));
    let json = serde_json::from_str(body).expect("JSON");
    (status, header("x-total-count"), json)
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_list_is_filtered_paged_and_shows_deferred_states_at_once() {
    let db = common::TestDb::new();
    let dir = &db.dir;
    let store = db.store();
    seed_users(&store);
    let records: Vec<VmRecord> = (0..1100).map(record).collect();
    store.put_vms(&records).unwrap();
    let served = serve(store.clone(), dir.path()).await;
    let addr = &served.addr;

    // All of them, by name, each as `vm show` has it.
    let (status, total, all) = get(addr, "/api/v1/vms").await;
    assert_eq!((status, total), (200, Some(1100)));
    let expected: Vec<String> = records.iter().map(|r| r.name.clone()).collect();
    assert_eq!(names(&all), expected);
    for (shown, r) in all.as_array().unwrap().iter().zip(&records) {
        assert_eq!(shown, &vm_json(r));
    }
    let (_, one) = http(addr, "GET", "/api/v1/vms/vm-0007", Some("viewer-token")).await;
    assert_eq!(one, all[7]);
    // Every VM reads as the API's typed view, the one its clients use.
    let typed: Vec<tresor_api::views::Vm> = serde_json::from_value(all.clone()).unwrap();
    assert_eq!(typed.len(), 1100);
    assert_eq!(
        typed[0].lock_reason,
        Some(tresor_api::views::LockReason::KmsClusterError)
    );

    // A page.
    let (_, total, page) = get(addr, "/api/v1/vms?limit=100&offset=1050").await;
    assert_eq!(total, Some(1100));
    assert_eq!(names(&page), expected[1050..1100]);
    let (_, _, page) = get(addr, "/api/v1/vms?limit=600&offset=100").await;
    assert_eq!(names(&page), expected[100..700]);
    let (_, _, empty) = get(addr, "/api/v1/vms?limit=10&offset=1200").await;
    assert_eq!(names(&empty), Vec::<String>::new());

    // Filters, alone and together, and paged.
    let locked_on_0: Vec<String> = records
        .iter()
        .filter(|r| r.crypto_state == CryptoState::Locked && r.host == "host-0")
        .map(|r| r.name.clone())
        .collect();
    let (_, total, got) = get(addr, "/api/v1/vms?locked=true&host=host-0").await;
    assert_eq!(total, Some(locked_on_0.len()));
    assert_eq!(names(&got), locked_on_0);
    let (_, total, got) = get(addr, "/api/v1/vms?provider=other&limit=3&offset=1").await;
    assert_eq!(total, Some(220));
    assert_eq!(names(&got), ["vm-0005", "vm-0010", "vm-0015"]);
    let (status, _, _) = get(addr, "/api/v1/vms?limit=many").await;
    assert_eq!(status, 400);

    // A deferred state is listed at once, rendered anew.
    let mut changed = records[3].clone();
    changed.crypto_state = CryptoState::Unlocked;
    changed.lock_reason = None;
    store.put_vms_deferred(vec![changed.clone()]);
    let (_, _, got) = get(addr, "/api/v1/vms?limit=1&offset=3").await;
    assert_eq!(got[0]["cryptoState"], "unlocked");
    assert_eq!(got[0], vm_json(&changed));
    // A VM removed before the deferred write is not written back by it.
    let mut gone = records[4].clone();
    gone.power_state = tresor_core::protocol::PowerState::PoweredOn;
    store.put_vms_deferred(vec![gone]);
    assert!(store.remove_vm("vm-0004").unwrap());
    assert_eq!(store.write_deferred().unwrap(), 1);
    let (_, total, _) = get(addr, "/api/v1/vms").await;
    assert_eq!(total, Some(1099));

    // What was written is what a new server reads.
    drop(served);
    let reopened = db.open();
    assert_eq!(reopened.vm("vm-0003").unwrap().unwrap(), changed);
    assert!(reopened.vm("vm-0004").unwrap().is_none());
    assert_eq!(reopened.vms().unwrap().len(), 1099);
}
