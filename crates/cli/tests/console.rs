//! The web console in a real headless Chromium against `tresor dev`: sign in, find the VM locked
//! by an injected provider fault, read the cause and the key id, press Unlock once the fault is
//! gone, see the VM unlocked and the events arrive without a reload; a user without
//! `Cryptographer.RegisterVM` sees Unlock disabled with the reason; the language switch is
//! remembered per user. Screenshots of the main pages go to `target/screenshots/` (and to
//! `docs/screenshots/` with `TRESOR_UPDATE_SCREENSHOTS=1`).

mod common;
use std::process::{Command, Stdio};

use common::browser::Browser;
use common::{wait_for, workspace_root, Dev, Proc, TRESOR};

fn shot(browser: &Browser, name: &str) {
    let root = workspace_root();
    browser.screenshot(&root.join(format!("target/screenshots/{name}.png")));
    if std::env::var_os("TRESOR_UPDATE_SCREENSHOTS").is_some() {
        browser.screenshot(&root.join(format!("docs/screenshots/{name}.png")));
    }
}

#[test]
fn an_operator_unlocks_a_vm_from_the_browser() {
    let dev = Dev::start(1);
    let dir = dev.dir.path();
    for (user, role) in [("alice", "Administrator"), ("bob", "NoCryptoAdmin")] {
        let pw = dir.join(format!("{user}.pw"));
        std::fs::write(&pw, format!("{user}-long-password\n")).unwrap();
        dev.ok(&[
            "user",
            "add",
            user,
            "--password-file",
            &pw.display().to_string(),
            "--role",
            role,
        ]);
    }
    dev.ok(&["settings", "set", "unlock.policy", "manual"]);
    dev.create_vm("web01", true);
    dev.create_vm("db01", true);
    dev.create_vm("plain01", false);
    dev.ok(&["vm", "power-on", "web01"]);
    let key = dev
        .ok(&["vm", "get", "web01", "config.keyId.keyId"])
        .trim()
        .to_owned();

    // The fault: the key provider goes away, and the host restarts.
    let kms_config = dev.kms_config();
    let pid = dev.kms_pid();
    common::stop(&pid);
    dev.ok(&["host", "reboot", "host-1"]);
    wait_for("web01 is locked", || {
        dev.vm("web01")["lockReason"] == "kmsClusterError"
    });

    let url = format!("{}/", dev.url());
    let browser = Browser::start();
    browser.go(&url);
    browser.type_into("#user", "alice");
    browser.type_into("#password", "alice-long-password");
    browser.click("#signin-button");
    browser.wait("#vm-table");
    let row = browser.wait_text("tr[data-vm=web01] .crypto", |t| t.contains("locked"));
    assert!(row.contains("invalid"), "{row}");
    shot(&browser, "vms");
    browser.click("#locked-only");
    browser.wait_text("#vm-table", |t| {
        t.contains("web01") && !t.contains("plain01")
    });

    // The VM's page: the cause in plain words, the key id, the diagnosis and its next step.
    browser.click("tr[data-vm=web01] a");
    browser.wait("#locked-banner");
    assert!(browser.text("#lock-cause").contains("could not be reached"));
    assert_eq!(browser.text("#key-id"), key);
    assert!(browser.text("#diagnosis-summary").len() > 10);
    assert!(browser.text("#next-steps").contains("unlock"));
    // Power on is disabled, and why is written on the page; only what a locked VM allows is
    // offered.
    let why = browser.text("#power-on-why");
    assert!(
        why.contains("locked"),
        "power-on is disabled while locked: {why}"
    );
    assert_eq!(
        browser
            .attribute("#power-on-locked", "aria-describedby")
            .unwrap_or_default(),
        "power-on-why"
    );
    for op in ["decrypt", "rekey", "encrypt", "power-off"] {
        assert!(
            browser.find(&format!("button[data-op=\"{op}\"]")).is_none(),
            "{op} is offered on a locked, powered-off VM"
        );
    }
    assert!(browser.find("button[data-op=\"unregister\"]").is_some());
    assert!(browser.find("button[data-op=\"reload\"]").is_some());
    // The serial console's log is on the page (the development VM boots nothing, so it is
    // empty since the host restarted).
    assert!(
        browser.text("#serial-log").contains("serial console"),
        "{}",
        browser.text("#serial-log")
    );
    shot(&browser, "vm-locked");

    // Unlock while the provider is still away: a visible error, announced, and nothing pending.
    browser.click("#unlock");
    browser.wait_text("#op-result", |t| t.contains("Cannot unlock VM"));
    assert_eq!(
        browser.attribute("#op-result", "role").unwrap_or_default(),
        "alert"
    );
    // In German, the failure is said in German.
    let choose = |lang: &str| {
        browser.script(&format!("const s = document.getElementById('lang'); s.value = '{lang}'; s.dispatchEvent(new Event('change'));"));
    };
    choose("de");
    browser.wait_text("#unlock", |t| t == "Entsperren");
    browser.click("#unlock");
    browser.wait_text("#op-result", |t| {
        t.contains("VM web01 kann nicht entsperrt werden") && t.contains("nicht erreichbar")
    });
    choose("en");
    browser.wait_text("#unlock", |t| t == "Unlock");

    // The provider returns; the operator presses Unlock and sees the VM unlocked without a reload.
    let _kms = Proc(
        Command::new(TRESOR)
            .args(["kms", "serve", "--config", &kms_config])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // (Pressed once the provider answers again: an unlock before that fails, and under the
    // manual policy nothing else would unlock the VM.)
    wait_for("the key server answers again", || {
        let (_, out, _) = dev.cli(&["provider", "status", "tresor-kms", "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|st| st["health"] == "ok")
    });
    browser.script("window.__marker = 'same page';");
    browser.click("#unlock");
    browser.wait_text("#vm-state", |t| t.contains("unlocked"));
    assert!(browser.find("#locked-banner").is_none());
    assert_eq!(
        browser.script("return window.__marker;"),
        "same page",
        "no reload"
    );
    shot(&browser, "vm-unlocked");

    // Events arrive as they happen: another host restart locks the VMs again, live.
    browser.click("#nav-events");
    browser.wait_text("#event-table", |t| t.contains("vm.unlocked"));
    dev.ok(&["host", "reboot", "host-1"]);
    browser.wait_text("#event-table", |t| {
        t.contains("keys are missing on the host")
    });
    // The column is named for what it holds; a VM is a link to its page.
    assert!(browser
        .text("#event-table thead")
        .contains("VM, host or provider"));
    assert!(browser
        .find("#event-table a[href=\"#/vms/web01\"]")
        .is_some());
    assert_eq!(
        browser.script("return window.__marker;"),
        "same page",
        "no reload"
    );
    shot(&browser, "events");

    // Bulk unlock of the host, with progress.
    wait_for("both encrypted VMs are locked", || {
        dev.vm("web01")["cryptoState"] == "locked" && dev.vm("db01")["cryptoState"] == "locked"
    });
    browser.click("#nav-vms");
    browser.click("#unlock-host");
    browser.wait_text("#progress", |t| t.contains("2 of 2 unlocked"));
    // The "locked only" filter is still on: the list empties as the VMs unlock.
    browser.wait_text("#vm-table", |t| t.contains("No VM is locked."));
    browser.click("#locked-only");
    browser.wait_text("tr[data-vm=db01] .crypto", |t| t.contains("unlocked"));

    // Unregister (confirmed in a dialog) and register again, every VM found on the host.
    browser.click("tr[data-vm=plain01] a");
    browser.click("button[data-op=unregister]");
    browser.accept_alert();
    browser.wait_text("#vm-table", |t| {
        t.contains("web01") && !t.contains("plain01")
    });
    browser.click("#register-all");
    browser.wait_text("#register-result", |t| t.contains("plain01"));
    browser.wait_text("#vm-table", |t| t.contains("plain01"));

    // The other pages.
    browser.click("#nav-providers");
    browser.wait_text("tr[data-provider=tresor-kms]", |t| t.contains("tresor-kms"));
    browser.click("button[data-check=tresor-kms]");
    browser.wait_text("tr[data-provider=tresor-kms]", |t| t.contains("ok"));
    shot(&browser, "providers");
    browser.click("#nav-hosts");
    browser.wait_text("main", |t| t.contains("host-1"));
    shot(&browser, "hosts");
    browser.click("#nav-alarms");
    browser.wait("#alarm-table");
    shot(&browser, "alarms");

    // German, remembered for the user.
    browser.script("const s = document.getElementById('lang'); s.value = 'de'; s.dispatchEvent(new Event('change'));");
    browser.wait_text("#nav-vms", |t| t == "Virtuelle Maschinen");
    browser.go(&url);
    browser.wait_text("#nav-vms", |t| t == "Virtuelle Maschinen");
    // The state words too, and the page says its language.
    browser.wait_text("tr[data-vm=web01] .crypto", |t| t.contains("entsperrt"));
    assert_eq!(
        browser.script("return document.documentElement.lang;"),
        "de"
    );
    browser.click("#signout");
    // The sign-in page offers the language; English chosen there, English it is.
    browser.wait("#signin-lang");
    browser.script("const s = document.getElementById('signin-lang'); s.value = 'en'; s.dispatchEvent(new Event('change'));");
    browser.wait_text("#signin-button", |t| t == "Sign in");
    assert_eq!(
        browser.script("return document.documentElement.lang;"),
        "en"
    );

    // A user without Cryptographer.RegisterVM sees Unlock disabled, and why.
    dev.ok(&["host", "reboot", "host-1"]);
    wait_for("web01 is locked again", || {
        dev.vm("web01")["cryptoState"] == "locked"
    });
    browser.type_into("#user", "bob");
    browser.type_into("#password", "bob-long-password");
    browser.click("#signin-button");
    browser.wait("#vm-table");
    browser.go(&format!("{url}#/vms/web01"));
    browser.wait("#locked-banner");
    assert_eq!(
        browser.attribute("#unlock", "disabled").as_deref(),
        Some("true")
    );
    let why = browser.attribute("#unlock", "title").unwrap_or_default();
    assert!(why.contains("Cryptographer.RegisterVM"), "{why}");
    // The locked VM's alarm links to the VM.
    browser.click("#nav-alarms");
    browser.wait_text("#alarm-table", |t| t.contains("web01"));
    browser.click("#alarm-table a.alarm-vm[href=\"#/vms/web01\"]");
    browser.wait("#locked-banner");
    // A wrong password is refused on the sign-in page.
    browser.click("#signout");
    browser.type_into("#user", "bob");
    browser.type_into("#password", "wrong");
    browser.click("#signin-button");
    browser.wait_text("#signin-error", |t| {
        t.contains("Wrong user name or password")
    });
    // And in German when German is chosen.
    browser.script("const s = document.getElementById('signin-lang'); s.value = 'de'; s.dispatchEvent(new Event('change'));");
    browser.wait_text("#signin-button", |t| t == "Anmelden");
    browser.type_into("#user", "bob");
    browser.type_into("#password", "wrong again");
    browser.click("#signin-button");
    browser.wait_text("#signin-error", |t| {
        t.contains("Falscher Benutzername oder falsches Passwort")
    });
}

/// Every page at desktop and phone width (390 px): no serious or critical accessibility
/// violation by axe-core, nothing wider than the phone, a skip link, focus on the main content
/// after navigation. Phone screenshots go beside the desktop ones.
#[test]
fn every_page_reads_on_a_phone_and_passes_axe() {
    let dev = Dev::start(1);
    let pw = dev.dir.path().join("alice.pw");
    std::fs::write(&pw, "alice-long-password\n").unwrap();
    dev.ok(&[
        "user",
        "add",
        "alice",
        "--password-file",
        &pw.display().to_string(),
        "--role",
        "Administrator",
    ]);
    dev.ok(&["settings", "set", "unlock.policy", "manual"]);
    dev.create_vm("web01", true);
    dev.create_vm("plain01", false);
    // A task that ended, for the Tasks page.
    dev.create_vm("enc02", false);
    dev.ok(&["vm", "encrypt", "enc02"]);
    dev.ok(&["vm", "power-on", "plain01"]);
    dev.ok(&["host", "reboot", "host-1"]);
    wait_for("web01 is locked", || {
        dev.vm("web01")["lockReason"] == "keyMissingOnHost"
    });

    let url = format!("{}/", dev.url());
    let browser = Browser::start();
    // Everything found, reported together at the end.
    let problems = std::cell::RefCell::new(Vec::<String>::new());
    let check = |what: &str, phone: bool| {
        let width = if phone { "phone" } else { "desktop" };
        for v in browser.axe_violations() {
            problems.borrow_mut().push(format!("{what} ({width}): {v}"));
        }
        if phone {
            let px = browser.page_width();
            if px > 390 {
                problems
                    .borrow_mut()
                    .push(format!("{what} is {px} px wide on a 390 px phone"));
            }
        }
    };
    browser.go(&url);
    browser.wait("#signin-button");
    check("the sign-in page", false);
    browser.emulate_phone(Some((390, 844)));
    check("the sign-in page", true);
    browser.emulate_phone(None);
    browser.type_into("#user", "alice");
    browser.type_into("#password", "alice-long-password");
    browser.click("#signin-button");
    browser.wait("#vm-table");

    // A skip link is the first thing the keyboard reaches, and it leads to the main content.
    browser.go(&url);
    browser.wait("#vm-table");
    browser.press(&["\u{E004}"]);
    assert_eq!(
        browser.script("return document.activeElement.id;"),
        "skip-link"
    );
    browser.press(&["\u{E007}"]);
    assert_eq!(browser.script("return document.activeElement.id;"), "main");

    let pages = [
        ("vms", "#nav-vms", "tr[data-vm=web01]"),
        ("vm-locked", "tr[data-vm=web01] a", "#locked-banner"),
        ("hosts", "#nav-hosts", "main table"),
        (
            "providers",
            "#nav-providers",
            "tr[data-provider=tresor-kms]",
        ),
        ("alarms", "#nav-alarms", "#alarm-table"),
        ("events", "#nav-events", "#event-table"),
        ("tasks", "#nav-tasks", "#task-table"),
    ];
    for phone in [false, true] {
        browser.emulate_phone(phone.then_some((390, 844)));
        for (page, link, shown) in pages {
            if page == "vm-locked" {
                browser.click("#nav-vms");
                browser.wait("tr[data-vm=web01] a");
            }
            browser.click(link);
            browser.wait(shown);
            // After navigation, focus is on the main content (a screen reader reads the page).
            wait_for(&format!("focus on the main content of {page}"), || {
                browser.script("return document.activeElement.id;") == "main"
            });
            check(page, phone);
            if phone {
                shot(&browser, &format!("phone-{page}"));
            }
        }
    }
    let problems = problems.into_inner();
    assert!(problems.is_empty(), "{problems:#?}");
}
