//! Signing in through the API: wrong passwords are answered 429 after a few tries (per user
//! and per address), login tokens expire, changing one's own password needs the current one,
//! and a changed or reset password ends the old sessions.

mod common;

use tresor_server::accounts::Accounts;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_is_limited_tokens_expire_and_password_changes_end_sessions() {
    let data = tempfile::tempdir().unwrap();
    let db = common::TestDb::new();
    let store = db.store();
    common::seed_users(&store);
    Accounts::new(&store)
        .add_user("alice", "alices-long-password", &["ReadOnly".into()])
        .unwrap();
    let served = common::serve_with(store.clone(), data.path(), 600).await;
    let addr = served.addr.as_str();
    let login = |user: &'static str, password: &'static str| async move {
        common::http_body(
            addr,
            "POST",
            "/api/v1/login",
            None,
            &serde_json::json!({"user": user, "password": password}).to_string(),
        )
        .await
    };

    // A token works, and expires (this server gives them 600 s; the old one was made longer
    // ago than that).
    let (status, body) = login("alice", "alices-long-password").await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(
        common::http(addr, "GET", "/api/v1/me", Some(&token))
            .await
            .0,
        200
    );
    let old = "an-old-login-token";
    let made = tresor_server::enrol::now() - 601;
    store
        .add_token(&tresor_server::api::token_hash(old), "alice", "login", made)
        .unwrap();
    let (status, body) = common::http(addr, "GET", "/api/v1/me", Some(old)).await;
    assert_eq!(status, 401);
    assert!(body.to_string().contains("expired"), "{body}");

    // Three wrong passwords are free; then 429, even with the right one.
    for _ in 0..3 {
        assert_eq!(login("alice", "wrong-password-here").await.0, 401);
    }
    let (status, body) = login("alice", "wrong-password-here").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = login("alice", "alices-long-password").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.to_string().contains("try again in"), "{body}");
    // The address waits too, for any user.
    let (status, _) = login("viewer", "whatever-it-is").await;
    assert_eq!(status, 429);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    // One's own password needs the current one; the session in use stays, the others end.
    let (_, body) = login("alice", "alices-long-password").await;
    let first = body["token"].as_str().unwrap().to_owned();
    let (_, body) = login("alice", "alices-long-password").await;
    let second = body["token"].as_str().unwrap().to_owned();
    let change = |current: Option<&str>| {
        let mut b = serde_json::json!({"password": "alices-new-password"});
        if let Some(c) = current {
            b["currentPassword"] = c.into();
        }
        b.to_string()
    };
    let (status, body) = common::http_body(
        addr,
        "PUT",
        "/api/v1/users/alice/password",
        Some(&first),
        &change(None),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = common::http_body(
        addr,
        "PUT",
        "/api/v1/users/alice/password",
        Some(&first),
        &change(Some("alices-long-password")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        common::http(addr, "GET", "/api/v1/me", Some(&first))
            .await
            .0,
        200
    );
    assert_eq!(
        common::http(addr, "GET", "/api/v1/me", Some(&second))
            .await
            .0,
        401
    );

    // A reset by an administrator ends every session of the user.
    let (status, body) = common::http_body(
        addr,
        "PUT",
        "/api/v1/users/alice/password",
        Some("admin-token"),
        &serde_json::json!({"password": "reset-by-the-admin"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        common::http(addr, "GET", "/api/v1/me", Some(&first))
            .await
            .0,
        401
    );
}
