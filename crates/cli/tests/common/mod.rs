//! What the process tests share: the binary, free ports, waiting, and a bare HTTP client.
#![allow(dead_code)] // each test uses a part

pub mod browser;

use std::io::Write;
use std::time::{Duration, Instant};

pub const TRESOR: &str = env!("CARGO_BIN_EXE_tresor");

/// Whether the tests run the server on PostgreSQL (`TRESOR_TEST_SERVER_DATABASE=postgres`,
/// which `./scripts/test` sets for a second run of the locked-VM cases) instead of SQLite.
pub fn server_on_postgres() -> bool {
    std::env::var("TRESOR_TEST_SERVER_DATABASE").as_deref() == Ok("postgres")
}

/// `tresor dev`'s arguments for a new PostgreSQL database of the test cluster. The database is
/// kept until the test process ends (a test may stop and start the same server again); the
/// cluster is the test run's own and goes with it.
pub fn postgres_database() -> Vec<String> {
    static KEPT: std::sync::Mutex<Vec<tresor_db::testing::ScratchPostgres>> =
        std::sync::Mutex::new(Vec::new());
    let db = tresor_db::testing::ScratchPostgres::new();
    let mut args = vec!["--database".to_string(), db.url().to_string()];
    if let Ok(f) = std::env::var(tresor_db::testing::PASSWORD_VAR) {
        args.extend(["--database-password-file".to_string(), f]);
    }
    KEPT.lock().unwrap_or_else(|p| p.into_inner()).push(db);
    args
}

/// A free local port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The first of three consecutive free local ports (what `tresor dev --port` uses).
pub fn free_ports() -> u16 {
    free_port_block(3)
}

/// The first of `n` consecutive free local ports.
pub fn free_port_block(n: u16) -> u16 {
    loop {
        let p = free_port();
        if p < 65000 && (1..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
}

/// Polls `f` until it holds; fails the test after a minute.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One API request over HTTPS to 127.0.0.1:`port`, trusting the CA in `ca`, with a bearer token
/// (none when empty); the status and the JSON body (null when none).
pub fn https(
    ca: &std::path::Path,
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let client = tresor_api::Client::new(
        &format!("https://127.0.0.1:{port}"),
        tresor_api::Trust::ca_file(ca).unwrap(),
    )
    .unwrap()
    .with_token(token);
    let body: Option<serde_json::Value> =
        (!body.is_empty()).then(|| serde_json::from_str(body).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let a = rt
        .block_on(client.send(method, path, body.as_ref()))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (a.status, a.body)
}

/// A process the test started; stopped with SIGINT (then killed) when dropped.
pub struct Proc(pub std::process::Child);

impl Drop for PyKmip {
    fn drop(&mut self) {
        self.proxy.cut();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return; // already gone, and waited for
        }
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tresor dev` in a temporary folder, and the client commands against it.
pub struct Dev {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub token: String,
    /// The agents' runtime: `qemu` or `libvirt`.
    pub runtime: String,
    /// The servers' API URLs (more than one with `--servers`); the client is given them all.
    pub servers: Vec<String>,
    /// Declared last: stopped before the folder goes.
    _proc: Proc,
}

impl Dev {
    /// Starts `tresor dev --hosts N` and waits until it says it is ready.
    pub fn start(hosts: u32) -> Dev {
        Dev::start_with(hosts, &[])
    }

    /// Starts `tresor dev --hosts N` with more arguments (`--runtime libvirt`, ...). With
    /// libvirt, its folder is searchable by others: libvirt's QEMU user reaches the disks.
    pub fn start_with(hosts: u32, more: &[&str]) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        if more.contains(&"libvirt") {
            std::fs::set_permissions(
                dir.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o711),
            )
            .unwrap();
        }
        let port = free_ports();
        Dev::start_in(dir, port, hosts, more)
    }

    /// Starts `tresor dev` in `dir` (a folder it made before, or a new one) on `port`.
    pub fn start_in(dir: tempfile::TempDir, port: u16, hosts: u32, more: &[&str]) -> Dev {
        use std::io::BufRead;
        let mut command = std::process::Command::new(TRESOR);
        command
            .args(["dev", "--hosts", &hosts.to_string(), "--data"])
            .arg(dir.path())
            .args(["--port", &port.to_string()]);
        if server_on_postgres()
            && !more.contains(&"--database")
            && !dir.path().join("server/server.toml").exists()
        {
            command.args(postgres_database());
        }
        let mut child = command
            .args(more)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("dev.stderr")).unwrap())
            .spawn()
            .unwrap();
        let mut token = String::new();
        let stdout = child.stdout.take().unwrap();
        let proc = Proc(child);
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.trim().strip_prefix("admin token") {
                token = rest.split_whitespace().next().unwrap().to_owned();
            }
            if line.starts_with("Stop with Ctrl-C") {
                break;
            }
        }
        if token.is_empty() {
            // Say why: what tresor dev and its parts wrote.
            let mut logs =
                std::fs::read_to_string(dir.path().join("dev.stderr")).unwrap_or_default();
            for e in std::fs::read_dir(dir.path().join("logs"))
                .into_iter()
                .flatten()
                .flatten()
            {
                logs.push_str(&format!(
                    "\n== {}\n{}",
                    e.path().display(),
                    std::fs::read_to_string(e.path()).unwrap_or_default()
                ));
            }
            panic!("tresor dev printed no admin token:\n{logs}");
        }
        let runtime = more
            .iter()
            .position(|a| *a == "--runtime")
            .and_then(|i| more.get(i + 1))
            .unwrap_or(&"qemu")
            .to_string();
        let count: u16 = more
            .iter()
            .position(|a| *a == "--servers")
            .and_then(|i| more.get(i + 1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let servers = (1..=count)
            .map(|i| match i {
                1 => format!("https://127.0.0.1:{port}"),
                i => format!("https://127.0.0.1:{}", port + 3 + 2 * (i - 2)),
            })
            .collect();
        Dev {
            dir,
            port,
            token,
            runtime,
            servers,
            _proc: proc,
        }
    }

    /// Starts `tresor dev` with `servers` servers on a PostgreSQL database of the test cluster,
    /// their leases lasting `lease_secs`.
    pub fn start_servers(hosts: u32, servers: u16, lease_secs: u64, more: &[&str]) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port_block(3 + 2 * (servers - 1));
        let database = postgres_database();
        let (count, lease) = (servers.to_string(), lease_secs.to_string());
        let mut args: Vec<&str> = database.iter().map(String::as_str).collect();
        args.extend(["--servers", &count, "--lease-secs", &lease]);
        args.extend(more);
        Dev::start_in(dir, port, hosts, &args)
    }

    /// The API's URL.
    /// Stops `tresor dev` (and with it everything it started) and keeps its folder: the folder,
    /// the port and the admin token.
    pub fn stop(self) -> (tempfile::TempDir, u16, String) {
        let Dev {
            dir,
            port,
            token,
            _proc,
            ..
        } = self;
        drop(_proc);
        (dir, port, token)
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The server's CA, which issued the API's certificate.
    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("server/ca.pem")
    }

    /// One API request with `token`; the status and the JSON body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: &str,
    ) -> (u16, serde_json::Value) {
        https(&self.ca(), self.port, method, path, token, body)
    }

    /// Runs a client command as admin: success, standard output, standard error.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        self.cli_as(&self.token, args)
    }

    /// Runs a client command as admin with `input` on its standard input; its standard output
    /// (and error, after it).
    pub fn cli_with_input(&self, input: &str, args: &[&str]) -> String {
        use std::io::Write;
        let mut child = self
            .command(&self.token, args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Adds user `operator` with role `role` and signs it in; the folder of its client
    /// configuration, for [`Dev::cli_logged_in`].
    pub fn operator(&self, role: &str) -> std::path::PathBuf {
        let password = self.dir.path().join("operator.password");
        std::fs::write(&password, "operators-long-password\n").unwrap();
        self.ok(&[
            "user",
            "add",
            "operator",
            "--password-file",
            &password.display().to_string(),
            "--role",
            role,
        ]);
        let config = self.dir.path().join("operator-config");
        let (ok, _, err) = self.cli_logged_in(
            &config,
            "operators-long-password\n",
            &["login", "--user", "operator"],
        );
        assert!(ok, "{err}");
        config
    }

    /// A client command against this server with `token`.
    fn command(&self, token: &str, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(TRESOR);
        c.args(args)
            .env("TRESOR_SERVER", self.servers.join(","))
            .env("TRESOR_CA", self.ca())
            .env("TRESOR_TOKEN", token);
        c
    }

    /// Runs a client command with another token.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> (bool, String, String) {
        let out = self.command(token, args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a client command with the token `tresor login` stored in `config_dir`, and standard
    /// input from `stdin`.
    pub fn cli_logged_in(
        &self,
        config_dir: &std::path::Path,
        stdin: &str,
        args: &[&str],
    ) -> (bool, String, String) {
        use std::io::Write as _;
        let mut child = std::process::Command::new(TRESOR)
            .args(args)
            .env("TRESOR_SERVER", self.servers.join(","))
            .env("TRESOR_CA", self.ca())
            .env_remove("TRESOR_TOKEN")
            .env("TRESOR_CONFIG_DIR", config_dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a client command that must succeed; its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.cli(args);
        assert!(ok, "tresor {}: {err}", args.join(" "));
        out
    }

    /// `tresor vm create NAME --host host-1 --disk 4M`, `--encrypt` when `encrypted`; it must
    /// succeed.
    pub fn create_vm(&self, name: &str, encrypted: bool) {
        let mut args = vec!["vm", "create", name, "--host", "host-1", "--disk", "4M"];
        if encrypted {
            args.push("--encrypt");
        }
        self.ok(&args);
    }

    /// `tresor vm show NAME -o json`.
    pub fn vm(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.cli(&["vm", "show", name, "-o", "json"]).1).unwrap_or_default()
    }

    /// The embedded key server's configuration file.
    pub fn kms_config(&self) -> String {
        self.dir.path().join("kms/kms.toml").display().to_string()
    }

    /// Runs a `tresor kms …` administration command on the embedded key server.
    pub fn kms_admin(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(TRESOR)
            .arg("kms")
            .args(args)
            .args(["--config", &self.kms_config()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tresor kms {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The id of the key server process `tresor dev` started.
    pub fn kms_pid(&self) -> String {
        pid_of(&["kms serve", &self.kms_config()])
    }

    /// Asks the VM's QEMU, over its operator monitor, to run a `qemu-io` command on a disk of
    /// the running VM through its virtual device (`vd0` is the first disk), as the guest writes;
    /// the command's output (QEMU prints it to its
    /// log).
    pub fn guest_io(&self, vm: &str, device: &str, command: &str) -> String {
        if self.runtime == "libvirt" {
            // libvirt names disk N's device virtio-diskN; its monitor is reached through virsh,
            // and what qemu-io prints goes to the domain's log.
            let n = device.trim_start_matches("vd");
            let log = std::path::PathBuf::from(format!("/var/log/libvirt/qemu/{vm}.log"));
            let before = std::fs::read(&log).map(|b| b.len()).unwrap_or(0);
            let out = std::process::Command::new("virsh")
                .args([
                    "-q",
                    "-c",
                    "qemu:///system",
                    "qemu-monitor-command",
                    vm,
                    "--hmp",
                ])
                .arg(format!(
                    "qemu-io -d /machine/peripheral/virtio-disk{n}/virtio-backend \"{command}\""
                ))
                .output()
                .expect("virsh");
            // QEMU writes the result to the log a moment after the monitor answered.
            let mut after = Vec::new();
            for _ in 0..200 {
                after = std::fs::read(&log).unwrap_or_default();
                let said = String::from_utf8_lossy(after.get(before..).unwrap_or_default());
                if ["bytes at offset", "fail", "rror"]
                    .iter()
                    .any(|w| said.contains(w))
                {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            return format!(
                "{}{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(after.get(before..).unwrap_or_default())
            );
        }
        let socket = find_file(self.dir.path(), &format!("run/{vm}/monitor.sock"))
            .unwrap_or_else(|| panic!("no monitor socket of {vm}"));
        let log = socket.with_file_name("qemu.log");
        let before = std::fs::read(&log).map(|b| b.len()).unwrap_or(0);
        let mut out = hmp(
            &socket,
            &format!("qemu-io -d /machine/peripheral/{device}/virtio-backend \"{command}\""),
        );
        let after = std::fs::read(&log).unwrap_or_default();
        out.push_str(&String::from_utf8_lossy(
            after.get(before..).unwrap_or_default(),
        ));
        out
    }
}

/// The first file under `dir` whose path ends with `suffix`.
pub fn find_file(dir: &std::path::Path, suffix: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.to_string_lossy().ends_with(suffix) {
            return Some(path);
        }
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            if let Some(p) = find_file(&path, suffix) {
                return Some(p);
            }
        }
    }
    None
}

/// One human monitor command over a QMP socket; its output.
pub fn hmp(socket: &std::path::Path, line: &str) -> String {
    use std::io::BufRead;
    let stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut read_return = || loop {
        let mut l = String::new();
        assert!(
            reader.read_line(&mut l).unwrap() > 0,
            "QEMU closed the monitor"
        );
        let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_default();
        if v.get("return").is_some() || v.get("error").is_some() {
            return v;
        }
    };
    // The greeting carries neither `return` nor `error`: read_return passes over it.
    writeln!(writer, "{{\"execute\":\"qmp_capabilities\"}}").unwrap();
    read_return();
    let cmd = serde_json::json!({"execute": "human-monitor-command", "arguments": {"command-line": line}});
    writeln!(writer, "{cmd}").unwrap();
    let v = read_return();
    assert!(v.get("error").is_none(), "{line}: {v}");
    v["return"].as_str().unwrap_or_default().to_owned()
}

/// A TCP proxy the test controls, between the server and a provider: `cut` drops every
/// connection and refuses new ones, as a broken network does; `restore` lets them through again.
pub struct Proxy {
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    pub fn start(target: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (o, c, target) = (open.clone(), conns.clone(), target.to_owned());
        std::thread::spawn(move || {
            for inbound in listener.incoming().flatten() {
                if !o.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let Ok(outbound) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let mut list = c.lock().unwrap();
                list.push(inbound.try_clone().unwrap());
                list.push(outbound.try_clone().unwrap());
                for (mut from, mut to) in [
                    (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                    (outbound, inbound),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, open, conns }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The id of the process whose command line contains every one of `parts`.
pub fn pid_of(parts: &[&str]) -> String {
    let ps = std::process::Command::new("ps")
        .args(["-eo", "pid,args"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| panic!("no process with {parts:?}"))
}

/// Stops a process with SIGINT and waits until it is gone.
pub fn stop(pid: &str) {
    std::process::Command::new("kill")
        .args(["-INT", pid])
        .status()
        .unwrap();
    wait_for("the process to stop", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
    });
}

/// The root of the source tree.
pub fn workspace_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The test guest's files (kernel, initramfs, root file system image): the ones
/// `scripts/setup-test-deps` built, or built now under `scratch`.
pub fn test_guest(scratch: &std::path::Path) -> std::path::PathBuf {
    let built = workspace_root().join(".cache/guest/out");
    if ["vmlinuz", "initrd.img", "rootfs.img"]
        .iter()
        .all(|f| built.join(f).is_file())
    {
        return built;
    }
    let out = scratch.join("guest");
    let status = std::process::Command::new(workspace_root().join("scripts/guest/build"))
        .arg(&out)
        .status()
        .expect("scripts/guest/build");
    assert!(status.success(), "scripts/guest/build failed");
    out
}

/// The PyKMIP virtual environment `scripts/setup-test-deps` makes.
pub fn pykmip_venv() -> std::path::PathBuf {
    let venv = std::env::var_os("TRESOR_PYKMIP_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/pykmip"));
    assert!(
        venv.join("bin/python").exists(),
        "PyKMIP is not installed at {}: run scripts/setup-test-deps (or set TRESOR_PYKMIP_VENV)",
        venv.display()
    );
    venv
}

/// A PyKMIP server as a key provider beside `tresor dev`: its ECDSA server certificate and the
/// client certificates it accepts come from the embedded key server's CA. The Tresor server
/// reaches it through a proxy the test can cut; its administrator speaks to it directly.
pub struct PyKmip {
    pub port: u16,
    pub dir: std::path::PathBuf,
    pub proxy: Proxy,
    proc: Option<Proc>,
}

impl PyKmip {
    pub fn start(dev: &Dev) -> PyKmip {
        let dir = dev.dir.path().join("pykmip");
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        dev.kms_admin(&[
            "issue-cert",
            "--server",
            "--name",
            "localhost",
            "--out",
            &dir.join("server").display().to_string(),
        ]);
        let port = free_port();
        let conf = format!(
            "[server]\nhostname=127.0.0.1\nport={port}\ncertificate_path={d}/server.pem\nkey_path={d}/server.key\n\
             ca_path={ca}\nauth_suite=TLS1.2\npolicy_path={d}/policies\nenable_tls_client_auth=True\n\
             logging_level=INFO\ndatabase_path={d}/pykmip.db\n",
            d = dir.display(),
            ca = dev.dir.path().join("kms/tls/ca.pem").display()
        );
        std::fs::write(dir.join("server.conf"), conf).unwrap();
        let mut p = PyKmip {
            port,
            dir,
            proxy: Proxy::start(&format!("127.0.0.1:{port}")),
            proc: None,
        };
        p.resume();
        p
    }

    /// Starts the server process (again) on its port and database.
    pub fn resume(&mut self) {
        let child = std::process::Command::new(pykmip_venv().join("bin/pykmip-server"))
            .arg("-f")
            .arg(self.dir.join("server.conf"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start pykmip-server");
        self.proc = Some(Proc(child));
        let port = self.port;
        wait_for("pykmip-server listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Stops the server process (SIGINT, as PyKMIP wants). The proxy drops the server's pooled
    /// connections first: PyKMIP waits for its open connections before it exits.
    pub fn halt(&mut self) {
        self.proxy.cut();
        self.proc = None;
        self.proxy.restore();
        let port = self.port;
        wait_for("pykmip-server stops", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        });
    }

    /// PyKMIP registered with `tresor dev` as its default provider, named `pykmip`.
    pub fn start_as_default(dev: &Dev) -> PyKmip {
        let pykmip = PyKmip::start(dev);
        pykmip.add_to(dev, true);
        pykmip
    }

    /// Registers this PyKMIP with `tresor dev` as provider `pykmip` (the default one, or not).
    pub fn add_to(&self, dev: &Dev, default: bool) {
        let kms = dev.dir.path().join("kms");
        let path = |p: &str| kms.join(p).display().to_string();
        let (endpoint, ca, cert, key) = (
            self.endpoint(),
            path("tls/ca.pem"),
            path("clients/tresor-server.pem"),
            path("clients/tresor-server.key"),
        );
        let mut args = vec![
            "provider",
            "add",
            "pykmip",
            "--kmip",
            &endpoint,
            "--ca",
            &ca,
            "--client-cert",
            &cert,
            "--client-key",
            &key,
        ];
        if default {
            args.push("--default");
        }
        dev.ok(&args);
    }

    /// Its administrator backs up its database (stopped, so that the copy is whole).
    pub fn backup(&mut self) {
        self.halt();
        std::fs::copy(
            self.dir.join("pykmip.db"),
            self.dir.join("pykmip.db.backup"),
        )
        .unwrap();
        self.resume();
    }

    /// Its administrator restores the database from the backup (PyKMIP cannot reactivate a
    /// key).
    pub fn restore_backup(&mut self) {
        self.halt();
        std::fs::copy(
            self.dir.join("pykmip.db.backup"),
            self.dir.join("pykmip.db"),
        )
        .unwrap();
        self.resume();
    }

    /// The address the Tresor server uses: the proxy's.
    pub fn endpoint(&self) -> String {
        self.proxy.address()
    }

    /// Runs PyKMIP's own client as the provider's administrator (`scripts/pykmip/admin.py`).
    pub fn admin(&self, dev: &Dev, command: &str, uid: &str) -> String {
        let kms = dev.dir.path().join("kms");
        let out = std::process::Command::new(pykmip_venv().join("bin/python"))
            .arg(workspace_root().join("scripts/pykmip/admin.py"))
            .args(["127.0.0.1", &self.port.to_string()])
            .arg(kms.join("tls/ca.pem"))
            .arg(kms.join("clients/tresor-server.pem"))
            .arg(kms.join("clients/tresor-server.key"))
            .args([command, uid])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "PyKMIP's client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// A new, empty `tresor server` (the procedure's case 4): `server init` in `dir`, started, with
/// the admin token `init` printed.
pub struct NewServer {
    pub api: u16,
    pub ca: std::path::PathBuf,
    pub agents: u16,
    pub token: String,
    _proc: Proc,
}

impl NewServer {
    pub fn start(dir: &std::path::Path) -> NewServer {
        use std::process::{Command, Stdio};
        let (api, agents) = (free_port(), free_port());
        let mut init = Command::new(TRESOR);
        init.args(["server", "init", "--data"])
            .arg(dir)
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .args(["--agent-listen", &format!("127.0.0.1:{agents}")]);
        if server_on_postgres() {
            init.args(postgres_database());
        }
        let out = init.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_owned();
        let proc = Proc(
            Command::new(TRESOR)
                .args(["server", "--config"])
                .arg(dir.join("server.toml"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for("the new server listens", || {
            std::net::TcpStream::connect(("127.0.0.1", api)).is_ok()
        });
        NewServer {
            api,
            ca: dir.join("ca.pem"),
            agents,
            token,
            _proc: proc,
        }
    }

    /// Runs a client command against it as admin; its standard output (it must succeed).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(TRESOR)
            .args(args)
            .env("TRESOR_SERVER", format!("https://127.0.0.1:{}", self.api))
            .env("TRESOR_CA", &self.ca)
            .env("TRESOR_TOKEN", &self.token)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "tresor {}: {err}", args.join(" "));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Enrols the host whose agent configuration is `agent_toml` with this server (a join token
    /// by file), starts its agent and waits until it is connected.
    pub fn rejoin(&self, host: &str, agent_toml: &std::path::Path) -> Proc {
        use std::process::{Command, Stdio};
        let join: serde_json::Value =
            serde_json::from_str(&self.cli(&["host", "token", "-o", "json"])).unwrap();
        let token_file = agent_toml.with_file_name("join-token");
        std::fs::write(&token_file, join["token"].as_str().unwrap()).unwrap();
        let out = Command::new(TRESOR)
            .args(["agent", "join", "--server"])
            .arg(format!("127.0.0.1:{}", self.agents))
            .args(["--name", host, "--token-file"])
            .arg(&token_file)
            .arg("--dir")
            .arg(agent_toml.parent().unwrap())
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&token_file);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let agent = Proc(
            Command::new(TRESOR)
                .args(["agent", "--config"])
                .arg(agent_toml)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for(&format!("{host} connects to the new server"), || {
            self.cli(&["host", "list", "-o", "json"])
                .contains("\"connected\": true")
        });
        agent
    }
}

/// The arguments of `tresor dev` for `runtime`, and libvirt running (with no domain left of
/// these names by an earlier run that failed) when it is libvirt.
pub fn runtime_args(runtime: &str, names: &[&str]) -> Vec<&'static str> {
    if runtime != "libvirt" {
        return vec![];
    }
    libvirt_up();
    for name in names {
        let virsh = |args: &[&str]| {
            let _ = std::process::Command::new("virsh")
                .args(["-q", "-c", "qemu:///system"])
                .args(args)
                .output();
        };
        let xml = std::process::Command::new("virsh")
            .args(["-q", "-c", "qemu:///system", "dumpxml", name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if xml.contains(tresor_agent::libvirt::METADATA_NS) {
            virsh(&["destroy", name]);
            virsh(&["undefine", name]);
        }
    }
    vec!["--runtime", "libvirt", "--accel", "tcg"]
}

/// libvirtd answering on qemu:///system: `scripts/libvirt/start` starts it when it does not.
pub fn libvirt_up() {
    let status = std::process::Command::new(workspace_root().join("scripts/libvirt/start"))
        .status()
        .expect("scripts/libvirt/start");
    assert!(
        status.success(),
        "libvirt is not running; run scripts/setup-test-deps"
    );
}

/// Waits (up to 3 minutes, a guest under TCG is slow) for a line of a guest's console log that
/// starts with `prefix`; that line.
pub fn console_line(log: &std::path::Path, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
        if let Some(line) = text.lines().find(|l| l.starts_with(prefix)) {
            return line.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the guest never said {prefix:?}; its console:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
