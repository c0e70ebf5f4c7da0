// Tresor's web console: one page, no build step, talking to the REST API under /api/v1 with the
// signed-in user's token. Every action is checked by the server; the console also greys out what
// the user's privileges would refuse, with the reason on hover.
"use strict";

const PRIVILEGE_LABELS = {
  "Cryptographer.RegisterVM": "Cryptographic operations › Register VM",
  "Cryptographer.Encrypt": "Cryptographic operations › Encrypt",
  "Cryptographer.Decrypt": "Cryptographic operations › Decrypt",
  "Cryptographer.Recrypt": "Cryptographic operations › Recrypt",
  "Cryptographer.ReadKeyServersInfo": "Cryptographic operations › Read key server info",
  "VirtualMachine.PowerOn": "Virtual machine › Power on",
  "VirtualMachine.PowerOff": "Virtual machine › Power off",
  "VirtualMachine.Unregister": "Virtual machine › Unregister",
  "VirtualMachine.Config": "Virtual machine › Change configuration",
  "VirtualMachine.Console": "Virtual machine › Console interaction",
  "VirtualMachine.Register": "Virtual machine › Register",
  "Alarm.Acknowledge": "Alarms › Acknowledge",
};

const TEXT = {
  en: {
    signIn: "Sign in", user: "User", password: "Password", orToken: "or an API token",
    signOut: "Sign out", vms: "Virtual machines", hosts: "Hosts", providers: "Key providers",
    alarms: "Alarms", events: "Events", name: "Name", host: "Host", power: "Power",
    crypto: "Encryption", reason: "Lock reason", provider: "Provider", lockedOnly: "Locked only",
    unlockSelected: "Unlock selected", unlockAll: "Unlock all locked", unlockHost: "Unlock host…",
    unlockProvider: "Unlock provider…", unlock: "Unlock", powerOn: "Power on", powerOff: "Power off",
    unregister: "Unregister", reload: "Reload", encrypt: "Encrypt", decrypt: "Decrypt", rekey: "Rekey",
    copy: "Copy", copied: "Copied", keyId: "Key id", diagnosis: "Diagnosis", evidence: "Evidence",
    nextSteps: "Next steps", connected: "Connected", encryptionMode: "Encryption mode",
    vmCount: "VMs", keysHeld: "Keys held", endpoints: "Endpoints", active: "Answers",
    health: "Health", certificates: "Certificates", isDefault: "Default", checkNow: "Check now",
    acknowledge: "Acknowledge", raised: "Raised", kind: "Kind", what: "What / next step",
    time: "Time", type: "Type", message: "Message", vm: "VM", noneLocked: "No VM is locked.",
    about: "VM, host or provider",
    lockedBanner: "This virtual machine is locked", confirm: "Really {op} {vm}?",
    needs: "Needs the privilege {label} ({id}), which you do not have",
    unlocking: "Unlocking {n} VM(s)…", unlocked: "{done} of {n} unlocked",
    stillLocked: "still locked: {names}", days: "days", expired: "expired",
    causes: {
      kmsClusterError: "The key provider could not be reached or failed, and the host does not hold the VM's keys.",
      keyMissingOnKms: "The key provider does not have the VM's key, or the key is not active there.",
      keyMissingOnHost: "The key provider has the keys, but they have not been sent to the host yet.",
    },
    live: "live", ackBy: "Acknowledged by", disks: "Disks", path: "Path", keyAvailable: "Key on host",
    state: "State", noEvents: "No events yet.", noAlarms: "No active alarms.",
    badges: {},
    reasons: {
      kmsClusterError: "key provider error", keyMissingOnKms: "keys missing on the key provider",
      keyMissingOnHost: "keys missing on the host",
    },
    language: "Language",
    lockedNoPowerOn: "The VM is locked: unlock it first (or unregister it)",
    register: "Register", registerAll: "Register all on host", registerPath: "folder of the VM on the host",
    registered: "registered: {names}",
    skip: "Skip to the content", select: "Select {vm}", selectColumn: "Select",
    unlockHostPick: "Host to unlock", unlockProviderPick: "Provider whose VMs to unlock",
    registerHost: "Host to register on", actions: "Actions", filter: "Filter",
    signedInAs: "Signed in as", navigation: "Pages",
    tasks: "Tasks", noTasks: "No tasks yet.", progress: "Progress", cancelTask: "Cancel",
    startedBy: "Started by", taskStarted: "Task {id} started ({kind}); see Tasks", on: "On",
    cancelConfirm: "Really cancel task {id} ({kind})? {does}", error: "Error",
    serial: "Serial console", serialEmpty: "The VM has printed nothing on its serial console since it was powered on.",
  },
  de: {
    signIn: "Anmelden", user: "Benutzer", password: "Passwort", orToken: "oder ein API-Token",
    signOut: "Abmelden", vms: "Virtuelle Maschinen", hosts: "Hosts", providers: "Schlüsselanbieter",
    alarms: "Alarme", events: "Ereignisse", name: "Name", host: "Host", power: "Betrieb",
    crypto: "Verschlüsselung", reason: "Sperrgrund", provider: "Anbieter", lockedOnly: "Nur gesperrte",
    unlockSelected: "Auswahl entsperren", unlockAll: "Alle gesperrten entsperren", unlockHost: "Host entsperren…",
    unlockProvider: "Anbieter entsperren…", unlock: "Entsperren", powerOn: "Einschalten", powerOff: "Ausschalten",
    unregister: "Registrierung aufheben", reload: "Neu laden", encrypt: "Verschlüsseln", decrypt: "Entschlüsseln", rekey: "Neu verschlüsseln",
    copy: "Kopieren", copied: "Kopiert", keyId: "Schlüssel-ID", diagnosis: "Diagnose", evidence: "Befund",
    nextSteps: "Nächste Schritte", connected: "Verbunden", encryptionMode: "Verschlüsselungsmodus",
    vmCount: "VMs", keysHeld: "Schlüssel", endpoints: "Endpunkte", active: "Antwortet",
    health: "Zustand", certificates: "Zertifikate", isDefault: "Standard", checkNow: "Jetzt prüfen",
    acknowledge: "Bestätigen", raised: "Ausgelöst", kind: "Art", what: "Was / nächster Schritt",
    time: "Zeit", type: "Typ", message: "Meldung", vm: "VM", noneLocked: "Keine VM ist gesperrt.",
    about: "VM, Host oder Anbieter",
    lockedBanner: "Diese virtuelle Maschine ist gesperrt", confirm: "{vm} wirklich: {op}?",
    needs: "Dafür fehlt Ihnen das Recht {label} ({id})",
    unlocking: "{n} VM(s) werden entsperrt…", unlocked: "{done} von {n} entsperrt",
    stillLocked: "noch gesperrt: {names}", days: "Tage", expired: "abgelaufen",
    causes: {
      kmsClusterError: "Der Schlüsselanbieter war nicht erreichbar oder fehlerhaft, und der Host hat die Schlüssel der VM nicht.",
      keyMissingOnKms: "Der Schlüsselanbieter hat den Schlüssel der VM nicht, oder der Schlüssel ist dort nicht aktiv.",
      keyMissingOnHost: "Der Schlüsselanbieter hat die Schlüssel, sie wurden aber noch nicht an den Host gesendet.",
    },
    live: "live", ackBy: "Bestätigt von", disks: "Festplatten", path: "Pfad", keyAvailable: "Schlüssel auf dem Host",
    state: "Zustand", noEvents: "Noch keine Ereignisse.", noAlarms: "Keine aktiven Alarme.",
    // The state words of the badges (the code stays the badge's class).
    badges: {
      locked: "gesperrt", unlocked: "entsperrt", unencrypted: "unverschlüsselt", invalid: "ungültig",
      disconnected: "getrennt", connected: "verbunden", on: "an", off: "aus", missing: "fehlt",
      yes: "ja", no: "nein", unknown: "unbekannt", ok: "ok", unreachable: "nicht erreichbar",
    },
    reasons: {
      kmsClusterError: "KMS-Clusterfehler", keyMissingOnKms: "Schlüssel fehlen auf dem KMS-Cluster",
      keyMissingOnHost: "Schlüssel fehlen auf dem Host",
    },
    language: "Sprache",
    lockedNoPowerOn: "Die VM ist gesperrt: zuerst entsperren (oder die Registrierung aufheben)",
    register: "Registrieren", registerAll: "Alle auf dem Host registrieren", registerPath: "Ordner der VM auf dem Host",
    registered: "registriert: {names}",
    skip: "Zum Inhalt springen", select: "{vm} auswählen", selectColumn: "Auswahl",
    unlockHostPick: "Zu entsperrender Host", unlockProviderPick: "Anbieter, dessen VMs entsperrt werden",
    registerHost: "Host, auf dem registriert wird", actions: "Aktionen", filter: "Filter",
    signedInAs: "Angemeldet als", navigation: "Seiten",
    tasks: "Aufgaben", noTasks: "Noch keine Aufgaben.", progress: "Fortschritt", cancelTask: "Abbrechen",
    startedBy: "Gestartet von", taskStarted: "Aufgabe {id} gestartet ({kind}); siehe Aufgaben", on: "Betrifft",
    cancelConfirm: "Aufgabe {id} ({kind}) wirklich abbrechen? {does}", error: "Fehler",
    serial: "Serielle Konsole", serialEmpty: "Die VM hat seit dem Einschalten nichts auf ihrer seriellen Konsole ausgegeben.",
  },
};

const state = {
  token: sessionStorage.getItem("tresor.token"),
  me: null,
  lang: "en",
  events: [],
  stream: null,
  refreshTimer: null,
  progress: "",
  registerResult: "",
  // The last action's failure on each VM's page, by VM.
  opResult: {},
  // Set by navigation: the next render moves focus to the main content.
  focusMain: false,
};

function t(key, args) {
  let s = (TEXT[state.lang] || TEXT.en)[key];
  if (s === undefined) s = TEXT.en[key] || key;
  for (const [k, v] of Object.entries(args || {})) s = s.split("{" + k + "}").join(String(v));
  return s;
}

function esc(v) {
  return String(v === null || v === undefined ? "" : v)
    .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}

function time(secs) {
  if (!secs) return "–";
  return new Date(secs * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + (state.token || "") };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  // The server's message in the chosen language where it has one.
  const message = (fallback) => {
    const e = data && data.error;
    if (!e) return fallback;
    return (e.messages && e.messages[state.lang]) || e.message || fallback;
  };
  if (r.status === 401 && path !== "/api/v1/login") {
    signOut();
    throw new Error(message("Signed out"));
  }
  if (!r.ok) throw new Error(message("HTTP " + r.status));
  return data;
}

function may(privilege) {
  return !!(state.me && state.me.privileges.includes(privilege));
}

// A button that is disabled, with the reason on hover, when the user lacks its privilege.
function button(label, privilege, attrs, primary) {
  const allowed = !privilege || may(privilege);
  const reason = allowed ? "" : t("needs", { label: PRIVILEGE_LABELS[privilege] || privilege, id: privilege });
  return `<button class="action${primary ? " primary" : ""}" ${attrs}${allowed ? "" : " disabled"}` +
    ` title="${esc(reason)}" data-privilege="${esc(privilege || "")}">${esc(label)}</button>`;
}

function badge(value, cls) {
  const words = (TEXT[state.lang] || TEXT.en).badges || {};
  return `<span class="badge ${esc(cls || value)}">${esc(words[value] || value)}</span>`;
}

// A lock reason: its code, and beside it its words in the chosen language.
function reasonText(code) {
  if (!code) return "";
  const words = ((TEXT[state.lang] || TEXT.en).reasons || {})[code];
  return words ? `${code} – ${words}` : code;
}

function cryptoBadge(vm) {
  let b = badge(vm.cryptoState);
  if (vm.connectionState === "invalid") b += " " + badge("invalid");
  if (vm.connectionState === "disconnected") b += " " + badge("disconnected", "grey");
  return b;
}

function signOut() {
  if (state.token) {
    // The token stops working on the server too.
    fetch("/api/v1/logout", { method: "POST", headers: { Authorization: "Bearer " + state.token } }).catch(() => {});
  }
  sessionStorage.removeItem("tresor.token");
  state.token = null;
  state.me = null;
  if (state.stream) state.stream.abort();
  state.stream = null;
  render();
}

// Sign-in.
function renderSignIn(error) {
  document.getElementById("app").innerHTML = `<main id="main" tabindex="-1">
    <form class="signin panel" id="signin">
      <h1>Tresor</h1>
      <label for="signin-lang">${t("language")}</label>
      <select id="signin-lang"><option value="en"${state.lang === "en" ? " selected" : ""}>English</option>
        <option value="de"${state.lang === "de" ? " selected" : ""}>Deutsch</option></select>
      <label for="user">${t("user")}</label><input id="user" autocomplete="username">
      <label for="password">${t("password")}</label><input id="password" type="password" autocomplete="current-password">
      <label for="token">${t("orToken")}</label><input id="token" type="password" autocomplete="off">
      <p><button class="action primary" id="signin-button" type="submit">${t("signIn")}</button></p>
      <p class="error" id="signin-error" role="alert">${esc(error || "")}</p>
    </form></main>`;
  document.documentElement.lang = state.lang;
  document.getElementById("signin-lang").onchange = (ev) => {
    state.lang = ev.target.value;
    sessionStorage.setItem("tresor.lang", state.lang);
    renderSignIn(error);
  };
  document.getElementById("signin").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const user = document.getElementById("user").value.trim();
    const password = document.getElementById("password").value;
    const token = document.getElementById("token").value.trim();
    try {
      if (token) {
        state.token = token;
      } else {
        const r = await api("POST", "/api/v1/login", { user, password });
        state.token = r.token;
      }
      sessionStorage.setItem("tresor.token", state.token);
      await start();
    } catch (e) {
      state.token = null;
      renderSignIn(e.message);
    }
  });
}

async function start() {
  state.me = await api("GET", "/api/v1/me");
  // A language chosen on the sign-in page is kept for the user; else the user's own.
  const chosen = sessionStorage.getItem("tresor.lang");
  sessionStorage.removeItem("tresor.lang");
  if (chosen && chosen !== state.me.lang) {
    try { await api("PUT", "/api/v1/me/lang", { value: chosen }); } catch (_) { /* the user's own stays */ }
    state.me.lang = chosen;
  }
  state.lang = state.me.lang === "de" ? "de" : "en";
  document.documentElement.lang = state.lang;
  follow();
  // The first page is not a navigation: focus stays at the start, where the skip link is.
  if (!location.hash) history.replaceState(null, "", "#/vms");
  render();
}

function shell(active, body) {
  const nav = [["vms", t("vms")], ["hosts", t("hosts")], ["providers", t("providers")],
    ["alarms", t("alarms")], ["events", t("events")], ["tasks", t("tasks")]]
    .map(([r, label]) => `<a href="#/${r}" id="nav-${r}" class="${active === r ? "active" : ""}">${esc(label)}</a>`)
    .join("");
  return `<a href="#main" id="skip-link" class="skip-link">${esc(t("skip"))}</a>
    <header><span class="brand">TRESOR</span><nav aria-label="${esc(t("navigation"))}">${nav}</nav>
    <span class="tools"><label for="lang" class="visually-hidden">${t("language")}</label>
    <select id="lang" title="Language / Sprache"><option value="en"${state.lang === "en" ? " selected" : ""}>EN</option>
    <option value="de"${state.lang === "de" ? " selected" : ""}>DE</option></select>
    <span class="user"><span class="visually-hidden">${esc(t("signedInAs"))} </span>${esc(state.me.user)}</span>
    <button id="signout">${t("signOut")}</button></span></header>
    <main id="main" tabindex="-1">${body}</main>`;
}

function bindShell() {
  document.getElementById("signout").onclick = signOut;
  // The skip link moves focus (the address's fragment is the page's route, not an anchor).
  document.getElementById("skip-link").onclick = (ev) => {
    ev.preventDefault();
    document.getElementById("main").focus();
  };
  // A link to the page shown still counts as navigation: focus goes to the content.
  for (const a of document.querySelectorAll("header nav a")) {
    a.addEventListener("click", (ev) => {
      if (location.hash === a.getAttribute("href")) {
        ev.preventDefault();
        state.focusMain = true;
        render();
      }
    });
  }
  document.getElementById("lang").onchange = async (ev) => {
    state.lang = ev.target.value;
    try { await api("PUT", "/api/v1/me/lang", { value: state.lang }); } catch (_) { /* shown on next load */ }
    state.events = [];
    follow();
    render();
  };
}

// The VM list.
async function renderVms() {
  const lockedOnly = sessionStorage.getItem("tresor.lockedOnly") === "1";
  const [vms, hosts, providers] = await Promise.all([
    api("GET", lockedOnly ? "/api/v1/vms?locked=true" : "/api/v1/vms"),
    api("GET", "/api/v1/hosts"),
    may("Cryptographer.ReadKeyServersInfo") ? api("GET", "/api/v1/providers") : Promise.resolve([]),
  ]);
  const rows = vms.map((vm) => `<tr data-vm="${esc(vm.name)}">
      <td><input type="checkbox" class="pick" value="${esc(vm.name)}" aria-label="${esc(t("select", { vm: vm.name }))}"></td>
      <td><a href="#/vms/${encodeURIComponent(vm.name)}">${esc(vm.name)}</a></td>
      <td>${esc(vm.host)}</td>
      <td>${badge(vm.powerState === "poweredOn" ? "on" : "off")}</td>
      <td class="crypto">${cryptoBadge(vm)}</td>
      <td class="reason">${esc(reasonText(vm.lockReason))}</td>
      <td>${esc(vm.config && vm.config.keyId ? vm.config.keyId.providerId.id : "")}</td></tr>`).join("");
  const hostOptions = hosts.map((h) => `<option>${esc(h.name)}</option>`).join("");
  const providerOptions = providers.map((p) => `<option>${esc(p.name)}</option>`).join("");
  const body = `<h1>${t("vms")}</h1>
    <div class="toolbar">
      <label><input type="checkbox" id="locked-only"${lockedOnly ? " checked" : ""}> ${t("lockedOnly")}</label>
      ${button(t("unlockSelected"), "Cryptographer.RegisterVM", 'id="unlock-selected"')}
      ${button(t("unlockAll"), "Cryptographer.RegisterVM", 'id="unlock-all"')}
      <select id="unlock-host-pick" aria-label="${esc(t("unlockHostPick"))}">${hostOptions}</select>${button(t("unlockHost"), "Cryptographer.RegisterVM", 'id="unlock-host"')}
      ${providerOptions ? `<select id="unlock-provider-pick" aria-label="${esc(t("unlockProviderPick"))}">${providerOptions}</select>${button(t("unlockProvider"), "Cryptographer.RegisterVM", 'id="unlock-provider"')}` : ""}
      <span class="progress" id="progress" role="status" aria-live="polite">${esc(state.progress)}</span>
    </div>
    <div class="toolbar">
      <select id="register-host" aria-label="${esc(t("registerHost"))}">${hostOptions}</select>
      <label for="register-path" class="visually-hidden">${esc(t("registerPath"))}</label>
      <input id="register-path" placeholder="${esc(t("registerPath"))}" size="40">
      ${button(t("register"), "VirtualMachine.Register", 'id="register"')}
      ${button(t("registerAll"), "VirtualMachine.Register", 'id="register-all"')}
      <span class="progress" id="register-result">${esc(state.registerResult || "")}</span>
    </div>
    <div class="scroll" tabindex="0" role="region" aria-label="${esc(t("vms"))}"><table id="vm-table"><thead><tr><th><span class="visually-hidden">${t("selectColumn")}</span></th><th>${t("name")}</th><th>${t("host")}</th><th>${t("power")}</th>
      <th>${t("crypto")}</th><th>${t("reason")}</th><th>${t("provider")}</th></tr></thead>
      <tbody>${rows || `<tr><td colspan="7" class="muted">${lockedOnly ? t("noneLocked") : "–"}</td></tr>`}</tbody></table></div>`;
  return [body, () => {
    document.getElementById("locked-only").onchange = (ev) => {
      sessionStorage.setItem("tresor.lockedOnly", ev.target.checked ? "1" : "0");
      render();
    };
    document.getElementById("unlock-selected").onclick = () => {
      const names = [...document.querySelectorAll(".pick:checked")].map((c) => c.value);
      if (names.length) unlockMany({ names });
    };
    document.getElementById("unlock-all").onclick = () => unlockMany({ all: true });
    document.getElementById("unlock-host").onclick = () =>
      unlockMany({ host: document.getElementById("unlock-host-pick").value });
    const register = async (body) => {
      const out = document.getElementById("register-result");
      out.textContent = "…";
      try {
        let r = await api("POST", "/api/v1/vms/register", body);
        // Every folder of a host is a task, followed here to its end; one folder is answered
        // when done.
        if (!r.registered) {
          out.textContent = t("taskStarted", { id: r.id, kind: r.kind });
          const task = await followTask(r.id);
          if (task.state !== "succeeded") throw new Error(task.error ? task.error.message : task.state);
          r = task.result || { registered: [] };
        }
        state.registerResult = t("registered", { names: r.registered.join(", ") || "–" });
        out.textContent = state.registerResult;
        refresh();
      } catch (e) {
        out.textContent = e.message;
      }
    };
    document.getElementById("register").onclick = () => register({
      host: document.getElementById("register-host").value,
      path: document.getElementById("register-path").value.trim(),
    });
    document.getElementById("register-all").onclick = () => register({
      host: document.getElementById("register-host").value, all: true,
    });
    const up = document.getElementById("unlock-provider");
    if (up) up.onclick = () => unlockMany({ provider: document.getElementById("unlock-provider-pick").value });
  }];
}

// Asks for VMs to be unlocked and follows them until each is unlocked (or two minutes pass).
async function unlockMany(selection) {
  const show = (text) => {
    state.progress = text;
    const p = document.getElementById("progress");
    if (p) p.textContent = text;
  };
  try {
    const r = await api("POST", "/api/v1/vms/unlock", selection);
    const names = r.requested;
    if (!names.length) { show(t("noneLocked")); return; }
    show(t("unlocking", { n: names.length }));
    const deadline = Date.now() + 120000;
    let pending = names.slice();
    while (pending.length && Date.now() < deadline) {
      await new Promise((ok) => setTimeout(ok, 700));
      const still = [];
      for (const n of pending) {
        const vm = await api("GET", "/api/v1/vms/" + encodeURIComponent(n));
        if (vm.cryptoState === "locked") still.push(n);
      }
      pending = still;
      show(t("unlocked", { done: names.length - pending.length, n: names.length }));
    }
    if (pending.length) show(t("unlocked", { done: names.length - pending.length, n: names.length }) +
      "; " + t("stillLocked", { names: pending.join(", ") }));
    refresh();
  } catch (e) {
    show(e.message);
  }
}

// One VM.
// The last 64 KiB of a VM's serial console log, as text; "" when it said nothing, null when the
// host cannot be asked.
async function serialLog(name) {
  const bytes = [];
  let offset = 0;
  try {
    for (let i = 0; i < 64; i++) {
      const out = await api("GET", `/api/v1/vms/${encodeURIComponent(name)}/console?offset=${offset}`);
      const chunk = atob(out.data);
      if (!chunk.length) break;
      for (let j = 0; j < chunk.length; j++) bytes.push(chunk.charCodeAt(j));
      offset = out.next;
    }
  } catch (_) {
    return null;
  }
  const tail = bytes.slice(-65536);
  return new TextDecoder().decode(new Uint8Array(tail)).replace(/\r/g, "");
}

async function renderVm(name) {
  const vm = await api("GET", "/api/v1/vms/" + encodeURIComponent(name));
  const diagnosis = await api("GET", `/api/v1/vms/${encodeURIComponent(name)}/diagnose?lang=${state.lang}`);
  const key = vm.config && vm.config.keyId ? vm.config.keyId : null;
  // The serial console's log, for those who may read it (an encrypted VM's needs direct access).
  const serial = may("VirtualMachine.Console") && (vm.cryptoState === "unencrypted" || may("Cryptographer.Access"))
    ? await serialLog(name) : null;
  const keyBox = key ? `<code class="keyid" id="key-id">${esc(key.keyId)}</code>
      <button class="action" id="copy-key">${t("copy")}</button>
      <span class="muted">${esc(t("provider"))}: ${esc(key.providerId.id)}</span>` : "–";
  const list = (items) => `<ol>${(items || []).map((i) => `<li>${esc(i)}</li>`).join("")}</ol>`;
  const diag = `<h2>${t("diagnosis")}${diagnosis.case ? " – case " + esc(diagnosis.case) : ""}</h2>
      <p id="diagnosis-summary">${esc(diagnosis.summary)}</p>
      ${diagnosis.evidence && diagnosis.evidence.length ? `<h2>${t("evidence")}</h2>${list(diagnosis.evidence)}` : ""}
      ${diagnosis.nextSteps && diagnosis.nextSteps.length ? `<h2>${t("nextSteps")}</h2><div id="next-steps">${list(diagnosis.nextSteps)}</div>` : ""}`;
  const banner = vm.cryptoState === "locked"
    ? `<div class="banner" id="locked-banner"><h2>${t("lockedBanner")} (${esc(reasonText(vm.lockReason))})</h2>
        <p id="lock-cause">${esc((TEXT[state.lang].causes || {})[vm.lockReason] || "")}</p>
        <p>${t("keyId")}: ${keyBox}</p>
        ${diag}
        <p>${button(t("unlock"), "Cryptographer.RegisterVM", 'id="unlock"', true)}</p></div>`
    : `<div class="banner ok" id="state-banner"><h2>${badge(vm.cryptoState)} ${esc(diagnosis.summary)}</h2></div>`;
  const op = (label, privilege, opName) =>
    button(label, privilege, `data-op="${opName}" data-label="${esc(label)}"`);
  const locked = vm.cryptoState === "locked";
  const on = vm.powerState === "poweredOn";
  // Only what can be done now: a locked VM allows unregister and reload (and unlock, above);
  // power on only when off and unlocked, power off only when on.
  const actions = [
    locked ? `<button class="action" disabled id="power-on-locked" aria-describedby="power-on-why">${esc(t("powerOn"))}</button>`
      : on ? "" : op(t("powerOn"), "VirtualMachine.PowerOn", "power-on"),
    on ? op(t("powerOff"), "VirtualMachine.PowerOff", "power-off") : "",
    op(t("unregister"), "VirtualMachine.Unregister", "unregister"),
    op(t("reload"), "VirtualMachine.Config", "reload"),
    locked ? "" : vm.cryptoState === "unencrypted" ? op(t("encrypt"), "Cryptographer.Encrypt", "encrypt")
      : op(t("decrypt"), "Cryptographer.Decrypt", "decrypt") + op(t("rekey"), "Cryptographer.Recrypt", "rekey"),
  ].join("") + (locked ? `<p class="why" id="power-on-why">${esc(t("lockedNoPowerOn"))}</p>` : "");
  const disks = (vm.disks || []).map((d) => `<tr><td class="mono">${esc(d.path)}</td>
      <td class="mono">${esc(d.keyId ? d.keyId.keyId : "")}</td>
      <td>${d.keyAvailable === false ? badge("missing", "bad") : badge("yes", "ok")}</td></tr>`).join("");
  const body = `<h1>${esc(vm.name)} <span id="vm-state">${cryptoBadge(vm)}</span></h1>
    ${banner}
    <div class="toolbar">${actions}<span class="progress" id="op-result" role="alert" aria-live="assertive">${esc(state.opResult[name] || "")}</span></div>
    <div class="grid2"><div class="panel"><dl class="facts">
      <dt>${t("host")}</dt><dd>${esc(vm.host)}</dd>
      <dt>${t("power")}</dt><dd>${badge(vm.powerState === "poweredOn" ? "on" : "off")}</dd>
      <dt>${t("crypto")}</dt><dd>${esc(vm.cryptoState)} / ${esc(vm.connectionState)}</dd>
      <dt>${t("reason")}</dt><dd>${esc(vm.lockReason || "–")}</dd>
      <dt>${t("path")}</dt><dd class="mono">${esc(vm.path)}</dd>
      <dt>${t("keyId")}</dt><dd class="mono">${esc(key ? key.keyId : "–")}</dd></dl></div>
    <div class="panel"><h2 class="first">${t("disks")}</h2><div class="scroll" tabindex="0" role="region" aria-label="${esc(t("disks"))}"><table><thead><tr><th>${t("path")}</th>
      <th>${t("keyId")}</th><th>${t("keyAvailable")}</th></tr></thead><tbody>${disks}</tbody></table></div></div></div>
    ${vm.cryptoState === "locked" ? "" : `<div class="panel">${diag}</div>`}
    ${serial === null ? "" : `<div class="panel"><h2 class="first">${t("serial")}</h2>
      <pre class="serial scroll" id="serial-log" tabindex="0" role="region" aria-label="${esc(t("serial"))}">${esc(serial || t("serialEmpty"))}</pre></div>`}`;
  return [body, () => {
    const log = document.getElementById("serial-log");
    if (log) log.scrollTop = log.scrollHeight;
    const copy = document.getElementById("copy-key");
    if (copy) copy.onclick = async () => {
      try { await navigator.clipboard.writeText(key.keyId); } catch (_) { /* no clipboard: the id is shown */ }
      copy.textContent = t("copied");
    };
    const unlock = document.getElementById("unlock");
    if (unlock) unlock.onclick = async () => {
      unlock.disabled = true;
      state.opResult[name] = "";
      try { await api("POST", `/api/v1/vms/${encodeURIComponent(name)}/unlock`); } catch (e) {
        // Failed and over: said where the operator looks (and to screen readers), and the
        // button is there again for the next try.
        // Kept across the page's live refreshes until the next action.
        state.opResult[name] = e.message;
        document.getElementById("op-result").textContent = e.message;
        unlock.disabled = false;
      }
    };
    for (const b of document.querySelectorAll("button[data-op]")) {
      b.onclick = async () => {
        const opName = b.dataset.op;
        if (!["power-on", "reload"].includes(opName) &&
          !confirm(t("confirm", { op: b.dataset.label, vm: name }))) return;
        const out = document.getElementById("op-result");
        out.textContent = "…";
        state.opResult[name] = "";
        try {
          const r = await api("POST", `/api/v1/vms/${encodeURIComponent(name)}/${opName}`, opName === "rekey" ? { deep: false } : undefined);
          // Encrypt, decrypt and rekey go on as tasks.
          out.textContent = r && r.kind && r.state ? t("taskStarted", { id: r.id, kind: r.kind }) : "✓ " + b.dataset.label;
          state.opResult[name] = out.textContent;
          if (opName === "unregister") { location.hash = "#/vms"; return; }
          refresh();
        } catch (e) {
          state.opResult[name] = e.message;
          out.textContent = e.message;
        }
      };
    }
  }];
}

async function renderHosts() {
  const hosts = await api("GET", "/api/v1/hosts");
  const rows = hosts.map((h) => `<tr><td>${esc(h.name)}</td><td>${badge(h.connected ? "yes" : "no", h.connected ? "ok" : "bad")}</td>
      <td>${esc(h.cryptoState)}</td><td>${esc(h.vmCount)}${h.lockedVmCount ? " " + badge(h.lockedVmCount + " locked", "locked") : ""}</td>
      <td>${esc(h.keysHeld)}</td><td>${time(h.lastSeen)}</td></tr>`).join("");
  return [`<h1>${t("hosts")}</h1><div class="scroll" tabindex="0" role="region" aria-label="${esc(t("hosts"))}"><table><thead><tr><th>${t("name")}</th><th>${t("connected")}</th>
    <th>${t("encryptionMode")}</th><th>${t("vmCount")}</th><th>${t("keysHeld")}</th><th>${t("time")}</th></tr></thead>
    <tbody>${rows}</tbody></table></div>`, () => {}];
}

// Asks for a task until it ends; its last state.
async function followTask(id) {
  for (;;) {
    const task = await api("GET", `/api/v1/tasks/${encodeURIComponent(id)}`);
    if (!["running", "cancelling"].includes(task.state)) return task;
    await new Promise((done) => setTimeout(done, 500));
  }
}

// The privilege that starting (and so cancelling) a task of each kind needs.
const TASK_PRIVILEGE = {
  encrypt: "Cryptographer.Encrypt", decrypt: "Cryptographer.Decrypt", rekey: "Cryptographer.Recrypt",
  deepRekey: "Cryptographer.Recrypt", unlock: "Cryptographer.RegisterVM", register: "VirtualMachine.Register",
};

function taskProgress(task) {
  const p = task.progress;
  if (!p.total) return "–";
  const text = p.unit === "vms" ? `${p.done}/${p.total} VMs` : `${p.percent}% (${(p.total / 1048576).toFixed(0)} MiB)`;
  return `<progress max="${esc(p.total)}" value="${esc(Math.min(p.done, p.total))}" aria-label="${esc(t("progress"))} ${esc(task.id)}"></progress> ${esc(text)}`;
}

// Long work: the running tasks with their progress, then the ended ones.
async function renderTasks() {
  const tasks = await api("GET", "/api/v1/tasks?limit=100");
  const running = tasks.filter((x) => x.state === "running" || x.state === "cancelling");
  const rows = tasks.map((x) => {
    const on = x.vm ? `<a href="#/vms/${encodeURIComponent(x.vm)}">${esc(x.vm)}</a>` : esc(x.host || "–");
    const cls = x.state === "succeeded" ? "ok" : x.state === "failed" ? "bad" : x.state === "cancelled" ? "warn" : "locked";
    const cancel = x.cancellable ? button(t("cancelTask"), TASK_PRIVILEGE[x.kind] || "", `data-cancel="${esc(x.id)}" data-kind="${esc(x.kind)}" data-does="${esc(x.cancelDoes || "")}"`) : "";
    const error = x.error ? `<div class="muted">${esc(x.error.message)}</div>` : "";
    return `<tr data-task="${esc(x.id)}"><td>${esc(x.kind)}</td><td>${on}</td><td>${badge(x.state, cls)}${error}</td><td>${taskProgress(x)}</td>
      <td>${esc(x.user)}</td><td>${time(x.created)}</td><td>${cancel}</td></tr>`;
  }).join("");
  const body = tasks.length ? `<div class="scroll" tabindex="0" role="region" aria-label="${esc(t("tasks"))}"><table id="task-table"><thead><tr>
    <th>${t("kind")}</th><th>${t("on")}</th><th>${t("state")}</th><th>${t("progress")}</th><th>${t("startedBy")}</th>
    <th>${t("time")}</th><th>${t("actions")}</th></tr></thead><tbody>${rows}</tbody></table></div>` : `<p>${t("noTasks")}</p>`;
  return [`<h1>${t("tasks")}</h1><p id="task-result" role="status"></p>${body}`, () => {
    for (const b of document.querySelectorAll("button[data-cancel]")) {
      b.onclick = async () => {
        if (!confirm(t("cancelConfirm", { id: b.dataset.cancel, kind: b.dataset.kind, does: b.dataset.does }))) return;
        try { await api("POST", `/api/v1/tasks/${encodeURIComponent(b.dataset.cancel)}/cancel`); refresh(); } catch (e) {
          document.getElementById("task-result").textContent = e.message;
        }
      };
    }
    // Running tasks move: the page follows them each second.
    clearTimeout(state.taskTimer);
    if (running.length) state.taskTimer = setTimeout(() => { if (route()[0] === "tasks") refresh(); }, 1000);
  }];
}

function certText(c) {
  if (!c) return "–";
  const when = c.expired ? t("expired") : `${c.daysLeft} ${t("days")}`;
  return `${esc(c.which)}: ${esc(c.subject)} – ${badge(when, c.expiring ? "warn" : "ok")}`;
}

async function renderProviders() {
  if (!may("Cryptographer.ReadKeyServersInfo")) {
    return [`<h1>${t("providers")}</h1><p class="muted">${esc(t("needs", { label: PRIVILEGE_LABELS["Cryptographer.ReadKeyServersInfo"], id: "Cryptographer.ReadKeyServersInfo" }))}</p>`, () => {}];
  }
  const providers = await api("GET", "/api/v1/providers");
  const rows = providers.map((p) => {
    const st = p.status || {};
    const endpoints = (st.endpoints && st.endpoints.length ? st.endpoints : p.endpoints.map((a) => ({ address: a })))
      .map((e) => `<div class="mono">${esc(e.address)} ${e.reachable === undefined ? "" : badge(e.reachable ? "reachable" : "unreachable", e.reachable ? "ok" : "bad")}
        ${e.error ? `<span class="muted">${esc(e.error)}</span>` : ""}</div>`).join("");
    const certs = [p.trust.ca, p.trust.client].concat((st.certificates || []).filter((c) => c.which === "server"))
      .map((c) => `<div>${certText(c)}</div>`).join("");
    return `<tr data-provider="${esc(p.name)}"><td>${esc(p.name)}</td><td>${p.isDefault ? badge(t("isDefault"), "ok") : ""}</td>
      <td>${endpoints}</td><td>${esc(st.activeEndpoint || "–")}</td><td>${st.health ? badge(st.health) : "–"}</td>
      <td>${certs}</td><td>${button(t("checkNow"), "Cryptographer.ReadKeyServersInfo", `data-check="${esc(p.name)}"`)}</td></tr>`;
  }).join("");
  return [`<h1>${t("providers")}</h1><div class="scroll" tabindex="0" role="region" aria-label="${esc(t("providers"))}"><table><thead><tr><th>${t("name")}</th><th>${t("isDefault")}</th>
    <th>${t("endpoints")}</th><th>${t("active")}</th><th>${t("health")}</th><th>${t("certificates")}</th>
    <th><span class="visually-hidden">${t("actions")}</span></th></tr></thead>
    <tbody>${rows}</tbody></table></div>`, () => {
    for (const b of document.querySelectorAll("button[data-check]")) {
      b.onclick = async () => {
        b.disabled = true;
        try { await api("GET", `/api/v1/providers/${encodeURIComponent(b.dataset.check)}/status`); } catch (_) { /* shown in the table */ }
        refresh();
      };
    }
  }];
}

async function renderAlarms() {
  const alarms = await api("GET", "/api/v1/alarms");
  // An alarm about a VM links to it.
  const vmOf = (a) => (a.object || "").startsWith("vm:") ? a.object.slice(3) : null;
  const rows = alarms.map((a) => `<tr><td>${esc(a.id)}</td><td>${time(a.raised)}</td><td>${esc(a.kind)}</td>
      <td>${esc(a.message)}${vmOf(a) ? ` <a class="alarm-vm" href="#/vms/${encodeURIComponent(vmOf(a))}">${esc(vmOf(a))}</a>` : ""}<div class="muted">${esc(a.nextStep)}</div></td>
      <td>${a.acknowledgedBy ? esc(t("ackBy")) + " " + esc(a.acknowledgedBy) : button(t("acknowledge"), "Alarm.Acknowledge", `data-ack="${esc(a.id)}"`)}</td></tr>`).join("");
  return [`<h1>${t("alarms")}</h1><div class="scroll" tabindex="0" role="region" aria-label="${esc(t("alarms"))}"><table id="alarm-table"><thead><tr><th>#</th><th>${t("raised")}</th><th>${t("kind")}</th>
    <th>${t("what")}</th><th><span class="visually-hidden">${t("actions")}</span></th></tr></thead><tbody>${rows || `<tr><td colspan="5" class="muted">${t("noAlarms")}</td></tr>`}</tbody></table></div>`, () => {
    for (const b of document.querySelectorAll("button[data-ack]")) {
      b.onclick = async () => {
        try { await api("POST", `/api/v1/alarms/${b.dataset.ack}/ack`); } catch (_) { /* refused: the button says why */ }
        refresh();
      };
    }
  }];
}

function eventRows(events) {
  return events.map((e) => `<tr class="event" data-type="${esc(e.type)}"><td>${time(e.time)}</td>
    <td>${badge(e.type, e.severity === "error" ? "bad" : e.severity === "warning" ? "warn" : "grey")}</td>
    <td>${about(e)}</td><td class="message">${esc(e.message)}</td></tr>`).join("");
}

// What an event is about: a VM (a link to its page), else its host, else its provider.
function about(e) {
  if (e.vm) return `${esc(t("vm"))} <a href="#/vms/${encodeURIComponent(e.vm)}">${esc(e.vm)}</a>`;
  if (e.host) return `${esc(t("host"))} ${esc(e.host)}`;
  if (e.provider) return `${esc(t("provider"))} ${esc(e.provider)}`;
  return "";
}

async function renderEvents() {
  const filter = sessionStorage.getItem("tresor.eventFilter") || "";
  if (!state.events.length) {
    const list = await api("GET", `/api/v1/events?lang=${state.lang}&limit=200`);
    state.events = list.slice(-200).reverse();
  }
  const shown = state.events.filter((e) => !filter || [e.vm, e.host, e.provider, e.type].some((v) => v && v.includes(filter)));
  return [`<h1>${t("events")} <span class="badge ok">${t("live")}</span></h1>
    <div class="toolbar"><label for="event-filter">${t("filter")}</label>
      <input id="event-filter" placeholder="VM, host, provider, type" value="${esc(filter)}"></div>
    <div class="scroll" tabindex="0" role="region" aria-label="${esc(t("events"))}"><table id="event-table"><thead><tr><th>${t("time")}</th><th>${t("type")}</th><th>${t("about")}</th><th>${t("message")}</th></tr></thead>
    <tbody>${eventRows(shown) || `<tr><td colspan="4" class="muted">${t("noEvents")}</td></tr>`}</tbody></table></div>`, () => {
    const f = document.getElementById("event-filter");
    f.onchange = () => { sessionStorage.setItem("tresor.eventFilter", f.value); render(); };
  }];
}

// Live updates: the event stream, read with the token (EventSource cannot send one).
async function follow() {
  if (state.stream) state.stream.abort();
  const controller = new AbortController();
  state.stream = controller;
  let last = null;
  while (!controller.signal.aborted && state.token) {
    try {
      const headers = { Authorization: "Bearer " + state.token };
      if (last !== null) headers["Last-Event-ID"] = String(last);
      const r = await fetch(`/api/v1/events/stream?lang=${state.lang}`, { headers, signal: controller.signal });
      if (!r.ok || !r.body) throw new Error("stream " + r.status);
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
          if (!data) continue;
          const e = JSON.parse(data);
          last = e.id;
          onEvent(e);
        }
      }
    } catch (_) {
      if (controller.signal.aborted) return;
    }
    await new Promise((ok) => setTimeout(ok, 1500));
  }
}

function onEvent(e) {
  if (state.events.length) state.events.unshift(e);
  // The view follows what happened, without a reload.
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(refresh, 150);
}

function route() {
  const parts = (location.hash || "#/vms").slice(2).split("/").map(decodeURIComponent);
  return parts;
}

let rendering = 0;
async function render() {
  if (!state.token) { renderSignIn(); return; }
  if (!state.me) { try { await start(); } catch (e) { renderSignIn(e.message); } return; }
  const mine = ++rendering;
  const [page, arg] = route();
  try {
    let view;
    if (page === "vms" && arg) view = await renderVm(arg);
    else if (page === "hosts") view = await renderHosts();
    else if (page === "providers") view = await renderProviders();
    else if (page === "alarms") view = await renderAlarms();
    else if (page === "events") view = await renderEvents();
    else if (page === "tasks") view = await renderTasks();
    else view = await renderVms();
    if (mine !== rendering) return;
    const checked = [...document.querySelectorAll(".pick:checked")].map((c) => c.value);
    // A live refresh keeps the focus where it was; a navigation moves it to the content.
    const focused = document.activeElement && document.activeElement.id;
    const typed = focused && document.activeElement.value;
    document.getElementById("app").innerHTML = shell(page || "vms", view[0]);
    for (const c of document.querySelectorAll(".pick")) if (checked.includes(c.value)) c.checked = true;
    bindShell();
    view[1]();
    if (state.focusMain) {
      state.focusMain = false;
      // A new page starts at its top, header in view.
      document.getElementById("main").focus({ preventScroll: true });
      window.scrollTo(0, 0);
    } else if (focused && document.getElementById(focused)) {
      const again = document.getElementById(focused);
      if (typeof typed === "string" && "value" in again && again.type !== "checkbox") again.value = typed;
      again.focus({ preventScroll: true });
    }
  } catch (e) {
    if (mine !== rendering || !state.me) return;
    document.getElementById("app").innerHTML = shell(page, `<p class="error">${esc(e.message)}</p>`);
    bindShell();
  }
}

function refresh() { render(); }

window.addEventListener("hashchange", () => { state.focusMain = true; render(); });
render();
