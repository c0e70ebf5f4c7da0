//! Encrypted disks through QEMU's own tools: qcow2 with LUKS encryption (or raw LUKS), created and
//! converted with `qemu-img`, checked by reading through `qemu-io` (`qemu-img info` accepts a wrong
//! key). Secrets reach the tools only through a pipe on file descriptor 3, never on a command line
//! or in a file.
//!
//! A disk's secret is 32 random bytes. Key stretching buys nothing for a random secret, so disks
//! are made with a small LUKS `iter-time`: opening one costs milliseconds, not two seconds. The
//! passphrase QEMU sees is the secret in hex (a LUKS passphrase must be valid UTF-8).

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use command_fds::{CommandFdExt, FdMapping};
use zeroize::Zeroizing;

/// The LUKS PBKDF time in milliseconds.
pub const ITER_TIME_MS: u32 = 10;

/// How an encrypted disk is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskFormat {
    /// qcow2 with LUKS encryption inside (the default).
    Qcow2Luks,
    /// A plain LUKS volume, readable by `cryptsetup`.
    RawLuks,
    /// qcow2 without encryption.
    Qcow2,
}

impl DiskFormat {
    /// The format of a new encrypted disk of a VM whose disks are stored as `layout`.
    pub fn encrypted(layout: tresor_core::protocol::DiskLayout) -> DiskFormat {
        match layout {
            tresor_core::protocol::DiskLayout::Qcow2 => DiskFormat::Qcow2Luks,
            tresor_core::protocol::DiskLayout::Luks => DiskFormat::RawLuks,
        }
    }

    /// How a VM stores disks of this format.
    pub fn layout(&self) -> tresor_core::protocol::DiskLayout {
        match self {
            DiskFormat::RawLuks => tresor_core::protocol::DiskLayout::Luks,
            DiskFormat::Qcow2Luks | DiskFormat::Qcow2 => tresor_core::protocol::DiskLayout::Qcow2,
        }
    }

    /// The extension of its files' names.
    pub fn extension(&self) -> &'static str {
        match self {
            DiskFormat::Qcow2Luks | DiskFormat::Qcow2 => "qcow2",
            DiskFormat::RawLuks => "luks",
        }
    }
}

/// Why a disk operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("Cannot run {tool}: {source}; install QEMU's tools (scripts/setup-test-deps installs qemu-utils)")]
    Spawn {
        tool: String,
        source: std::io::Error,
    },
    #[error("The key does not open disk {path}")]
    WrongKey { path: String },
    #[error("Disk {path} does not exist")]
    Missing { path: String },
    #[error("{tool} failed on {path}: {message}")]
    Tool {
        tool: String,
        path: String,
        message: String,
    },
    #[error("Cannot pass the disk secret to {tool}: {source}")]
    Pipe {
        tool: String,
        source: std::io::Error,
    },
}

/// The format of an image to import.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

/// What [`QemuTools::probe_image`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: ImageFormat,
    pub virtual_size: u64,
}

/// The random secret of one disk; its passphrase form is hex.
pub struct DiskSecret(Zeroizing<Vec<u8>>);

impl DiskSecret {
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> DiskSecret {
        DiskSecret(bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The passphrase form, as QEMU and libvirt are given it.
    pub(crate) fn passphrase(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(self.0.len() * 2));
        for b in self.0.iter() {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

impl std::fmt::Debug for DiskSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskSecret(<hidden>)")
    }
}

/// Where QEMU's tools are.
#[derive(Clone, Debug)]
pub struct QemuTools {
    pub qemu_img: PathBuf,
    pub qemu_io: PathBuf,
}

impl Default for QemuTools {
    fn default() -> Self {
        QemuTools {
            qemu_img: "qemu-img".into(),
            qemu_io: "qemu-io".into(),
        }
    }
}

/// Escapes a value for QEMU's comma-separated option syntax.
fn opt(value: &str) -> String {
    value.replace(',', ",,")
}

/// A pipe whose read end carries `data` to a child as a file descriptor.
fn secret_pipe(tool: &str, data: &[&[u8]]) -> Result<OwnedFd, DiskError> {
    let (reader, mut writer) = std::io::pipe().map_err(|source| DiskError::Pipe {
        tool: tool.into(),
        source,
    })?;
    for d in data {
        // Secrets are far smaller than a pipe's buffer, so this does not block.
        writer.write_all(d).map_err(|source| DiskError::Pipe {
            tool: tool.into(),
            source,
        })?;
    }
    drop(writer);
    Ok(reader.into())
}

impl QemuTools {
    /// Runs a tool; retries a few times when QEMU's LUKS key-stretching benchmark fails to time
    /// itself ("Unable to get accurate CPU usage", seen with QEMU 7.2 on a busy machine).
    fn run(
        &self,
        tool: &Path,
        args: &[String],
        secrets: &[&DiskSecret],
        path: &Path,
    ) -> Result<String, DiskError> {
        self.run_reporting(tool, args, secrets, path, false)
    }

    /// Runs a tool; with `progress`, its output is read as it comes and the progress
    /// `qemu-img -p` prints goes to [`crate::progress`].
    fn run_reporting(
        &self,
        tool: &Path,
        args: &[String],
        secrets: &[&DiskSecret],
        path: &Path,
        progress: bool,
    ) -> Result<String, DiskError> {
        let mut attempt = 0;
        loop {
            match self.run_once(tool, args, secrets, path, progress) {
                Err(DiskError::Tool { message, .. })
                    if message.contains("Unable to get accurate CPU usage") && attempt < 6 =>
                {
                    attempt += 1;
                    tracing::debug!(
                        attempt,
                        "QEMU could not time its key stretching; trying again"
                    );
                    // The measurement fails when the machine is busy: wait for it to calm.
                    std::thread::sleep(std::time::Duration::from_millis(50 << attempt));
                }
                other => return other,
            }
        }
    }

    fn run_once(
        &self,
        tool: &Path,
        args: &[String],
        secrets: &[&DiskSecret],
        path: &Path,
        progress: bool,
    ) -> Result<String, DiskError> {
        let name = tool.display().to_string();
        let mut cmd = Command::new(tool);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut passphrases = Vec::new();
        let mut mappings = Vec::new();
        for (i, s) in secrets.iter().enumerate() {
            let p = s.passphrase();
            mappings.push(FdMapping {
                parent_fd: secret_pipe(&name, &[p.as_bytes()])?,
                child_fd: 3 + i as i32,
            });
            passphrases.push(p);
        }
        cmd.fd_mappings(mappings).map_err(|e| DiskError::Pipe {
            tool: name.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let spawn_err = |source| DiskError::Spawn {
            tool: name.clone(),
            source,
        };
        let out = match progress {
            false => cmd.output().map_err(spawn_err)?,
            true => output_reporting_progress(&mut cmd).map_err(spawn_err)?,
        };
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        // qemu-io reports some failures on standard output and still exits 0.
        let failed =
            !out.status.success() || stderr.contains("can't open") || stdout.contains("can't open");
        if failed {
            let message = if stderr.is_empty() {
                stdout.trim().to_owned()
            } else {
                stderr
            };
            if message.contains("Invalid password") || message.contains("cannot unlock any keyslot")
            {
                return Err(DiskError::WrongKey {
                    path: path.display().to_string(),
                });
            }
            return Err(DiskError::Tool {
                tool: name,
                path: path.display().to_string(),
                message,
            });
        }
        Ok(stdout)
    }

    /// The `--image-opts` of an existing disk, the secret being object `sec0`.
    fn image_opts(path: &Path, format: DiskFormat, secret: &str) -> String {
        let file = opt(&path.display().to_string());
        match format {
            DiskFormat::Qcow2Luks => {
                format!("driver=qcow2,file.filename={file},encrypt.key-secret={secret}")
            }
            DiskFormat::RawLuks => format!("driver=luks,file.filename={file},key-secret={secret}"),
            DiskFormat::Qcow2 => format!("driver=qcow2,file.filename={file}"),
        }
    }

    /// Creates a disk of `size` bytes; encrypted formats need the secret.
    pub fn create(
        &self,
        path: &Path,
        format: DiskFormat,
        size: u64,
        secret: Option<&DiskSecret>,
    ) -> Result<(), DiskError> {
        if let (DiskFormat::RawLuks, Some(secret)) = (format, secret) {
            // A header Tresor writes: no key-stretching benchmark, and the same LUKS1 that
            // cryptsetup and QEMU read.
            return crate::rawluks::create(path, size, secret);
        }
        let mut args: Vec<String> = Vec::new();
        let target = path.display().to_string();
        match (format, secret) {
            (DiskFormat::Qcow2, _) => {
                args.extend(["create".into(), "-q".into(), "-f".into(), "qcow2".into()])
            }
            (DiskFormat::Qcow2Luks, Some(_)) => args.extend([
                "create".into(),
                "-q".into(),
                "--object".into(),
                "secret,id=sec0,file=/dev/fd/3".into(),
                "-f".into(),
                "qcow2".into(),
                "-o".into(),
                format!(
                    "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time={ITER_TIME_MS}"
                ),
            ]),
            (DiskFormat::RawLuks, Some(_)) => args.extend([
                "create".into(),
                "-q".into(),
                "--object".into(),
                "secret,id=sec0,file=/dev/fd/3".into(),
                "-f".into(),
                "luks".into(),
                "-o".into(),
                format!("key-secret=sec0,iter-time={ITER_TIME_MS}"),
            ]),
            (_, None) => {
                return Err(DiskError::Tool {
                    tool: "qemu-img".into(),
                    path: target,
                    message: "an encrypted disk needs a secret".into(),
                })
            }
        }
        args.push(target);
        args.push(size.to_string());
        let secrets: Vec<&DiskSecret> = secret.into_iter().collect();
        self.run(&self.qemu_img, &args, &secrets, path).map(|_| ())
    }

    /// Runs qemu-io commands (`-c …`) on a disk opened with its secret.
    pub fn io(
        &self,
        path: &Path,
        format: DiskFormat,
        secret: Option<&DiskSecret>,
        commands: &[&str],
    ) -> Result<String, DiskError> {
        if !path.exists() {
            return Err(DiskError::Missing {
                path: path.display().to_string(),
            });
        }
        let mut args: Vec<String> = Vec::new();
        if secret.is_some() {
            args.extend(["--object".into(), "secret,id=sec0,file=/dev/fd/3".into()]);
        }
        args.extend([
            "--image-opts".into(),
            Self::image_opts(path, format, "sec0"),
        ]);
        for c in commands {
            args.extend(["-c".into(), (*c).to_owned()]);
        }
        let secrets: Vec<&DiskSecret> = secret.into_iter().collect();
        self.run(&self.qemu_io, &args, &secrets, path)
    }

    /// Checks that `secret` opens the disk by reading its first sector (a raw LUKS disk: by
    /// unsealing its volume key, which its header's digest confirms).
    pub fn verify(
        &self,
        path: &Path,
        format: DiskFormat,
        secret: &DiskSecret,
    ) -> Result<(), DiskError> {
        if format == DiskFormat::RawLuks {
            return crate::rawluks::Volume::open(path, secret).map(|_| ());
        }
        self.io(path, format, Some(secret), &["read 0 512"])
            .map(|_| ())
    }

    /// The `qemu-img convert` arguments that write a copy of a disk of `size` bytes (asked only
    /// when needed) to `to` in `to_format`. A raw LUKS target is made here first, with the
    /// header Tresor writes (no key-stretching benchmark), and QEMU's driver writes into it.
    fn target(
        size: impl FnOnce() -> Result<u64, DiskError>,
        to: &Path,
        to_format: DiskFormat,
        to_secret: Option<&DiskSecret>,
    ) -> Result<Vec<String>, DiskError> {
        let (DiskFormat::RawLuks, Some(secret)) = (to_format, to_secret) else {
            return Self::target_args(to, to_format, to_secret.is_some());
        };
        crate::rawluks::create(to, size()?, secret)?;
        Ok(vec![
            "-n".into(),
            "--target-image-opts".into(),
            Self::image_opts(to, DiskFormat::RawLuks, "dst"),
        ])
    }

    /// The `qemu-img convert` arguments that make `to` in `to_format`, its secret (when it has
    /// one) being object `dst`.
    fn target_args(
        to: &Path,
        to_format: DiskFormat,
        secret: bool,
    ) -> Result<Vec<String>, DiskError> {
        let mut args: Vec<String> = match (to_format, secret) {
            (DiskFormat::Qcow2, _) => vec!["-O".into(), "qcow2".into()],
            (DiskFormat::Qcow2Luks, true) => vec![
                "-O".into(),
                "qcow2".into(),
                "-o".into(),
                format!(
                    "encrypt.format=luks,encrypt.key-secret=dst,encrypt.iter-time={ITER_TIME_MS}"
                ),
            ],
            (DiskFormat::RawLuks, true) => vec![
                "-O".into(),
                "luks".into(),
                "-o".into(),
                format!("key-secret=dst,iter-time={ITER_TIME_MS}"),
            ],
            (_, false) => {
                return Err(DiskError::Tool {
                    tool: "qemu-img".into(),
                    path: to.display().to_string(),
                    message: "an encrypted disk needs a secret".into(),
                })
            }
        };
        args.push(to.display().to_string());
        Ok(args)
    }

    /// What `qemu-img info` says of the image at `path`, run under limits of memory and CPU
    /// time, as a crafted image can make it use much of both.
    fn image_info(&self, path: &Path) -> Result<serde_json::Value, DiskError> {
        let tool = self.qemu_img.display().to_string();
        let refuse = |message: String| DiskError::Tool {
            tool: "qemu-img".into(),
            path: path.display().to_string(),
            message,
        };
        let out = Command::new("prlimit")
            .args(["--as=1073741824", "--cpu=30", "--"])
            .arg(&self.qemu_img)
            .args(["info", "--output=json"])
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| DiskError::Spawn {
                tool: format!("prlimit {tool}"),
                source,
            })?;
        if !out.status.success() {
            return Err(refuse(format!(
                "not a disk image it can read: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| refuse(format!("unreadable image information: {e}")))
    }

    /// The size of the disk image at `path` as its guest sees it (no secret needed for it).
    fn virtual_size(&self, path: &Path) -> Result<u64, DiskError> {
        size_in(&self.image_info(path)?, path)
    }

    /// What the image at `path` (an upload, untrusted) is: a raw or qcow2 image standing alone
    /// (no backing file, no external data file, not encrypted).
    pub fn probe_image(&self, path: &Path) -> Result<ImageInfo, DiskError> {
        let refuse = |message: String| DiskError::Tool {
            tool: "qemu-img".into(),
            path: path.display().to_string(),
            message,
        };
        let info = self.image_info(path)?;
        let format = match info.get("format").and_then(|f| f.as_str()) {
            Some("raw") => ImageFormat::Raw,
            Some("qcow2") => ImageFormat::Qcow2,
            other => {
                return Err(refuse(format!(
                    "an image of format {} cannot be imported; convert it to qcow2 or raw first (qemu-img convert -O qcow2)",
                    other.unwrap_or("unknown")
                )))
            }
        };
        if info.get("backing-filename").is_some() || info.get("full-backing-filename").is_some() {
            return Err(refuse(
                "the image has a backing file; import one that stands alone (qemu-img convert -O qcow2 makes one)".into(),
            ));
        }
        if info.pointer("/format-specific/data/data-file").is_some() {
            return Err(refuse(
                "the image keeps its data in an external file; import one that stands alone (qemu-img convert -O qcow2 makes one)".into(),
            ));
        }
        if info.get("encrypted").and_then(|e| e.as_bool()) == Some(true) {
            return Err(refuse(
                "the image is encrypted; import it unencrypted, and Tresor encrypts it with the VM's keys".into(),
            ));
        }
        Ok(ImageInfo {
            format,
            virtual_size: size_in(&info, path)?,
        })
    }

    /// Copies an image (`image`, what [`QemuTools::probe_image`] found) into a new disk,
    /// encrypted when `to_secret` is given.
    pub fn import(
        &self,
        from: &Path,
        image: &ImageInfo,
        to: &Path,
        to_format: DiskFormat,
        to_secret: Option<&DiskSecret>,
    ) -> Result<(), DiskError> {
        let mut args: Vec<String> = vec!["convert".into()];
        if to_secret.is_some() {
            args.extend(["--object".into(), "secret,id=dst,file=/dev/fd/3".into()]);
        }
        let source = match image.format {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        };
        args.extend(["-f".into(), source.into(), from.display().to_string()]);
        args.extend(Self::target(
            || Ok(image.virtual_size),
            to,
            to_format,
            to_secret,
        )?);
        // Its progress tells the server how far the copy has come.
        args.insert(1, "-p".into());
        crate::progress::copied(0);
        let secrets: Vec<&DiskSecret> = to_secret.into_iter().collect();
        self.run_reporting(&self.qemu_img, &args, &secrets, from, true)
            .map(|_| ())
    }

    /// Copies a disk into a new one of another format or key (encrypt, decrypt, deep rekey).
    pub fn convert(
        &self,
        from: &Path,
        from_format: DiskFormat,
        from_secret: Option<&DiskSecret>,
        to: &Path,
        to_format: DiskFormat,
        to_secret: Option<&DiskSecret>,
    ) -> Result<(), DiskError> {
        if !from.exists() {
            return Err(DiskError::Missing {
                path: from.display().to_string(),
            });
        }
        if let (DiskFormat::RawLuks, Some(f), DiskFormat::RawLuks, Some(t)) =
            (from_format, from_secret, to_format, to_secret)
        {
            // Deep rekey of a raw LUKS disk: on every core, with the CPU's AES instructions.
            return crate::rawluks::rekey(from, f, to, t, crate::rawluks::threads());
        }
        let mut args: Vec<String> = vec!["convert".into()];
        let mut secrets: Vec<&DiskSecret> = Vec::new();
        let mut fd = 3;
        let mut source_secret = "none".to_owned();
        if let Some(s) = from_secret {
            args.extend([
                "--object".into(),
                format!("secret,id=src,file=/dev/fd/{fd}"),
            ]);
            secrets.push(s);
            fd += 1;
            source_secret = "src".into();
        }
        if let Some(s) = to_secret {
            args.extend([
                "--object".into(),
                format!("secret,id=dst,file=/dev/fd/{fd}"),
            ]);
            secrets.push(s);
        }
        args.extend([
            "--image-opts".into(),
            Self::image_opts(from, from_format, &source_secret),
        ]);
        args.extend(Self::target(
            || self.virtual_size(from),
            to,
            to_format,
            to_secret,
        )?);
        // Its progress tells the server the copy goes on, however long it takes.
        args.insert(1, "-p".into());
        crate::progress::copied(0);
        self.run_reporting(&self.qemu_img, &args, &secrets, from, true)
            .map(|_| ())
    }
}

/// The virtual size in `qemu-img info`'s answer `info` about the image at `path`.
fn size_in(info: &serde_json::Value, path: &Path) -> Result<u64, DiskError> {
    info.get("virtual-size")
        .and_then(|v| v.as_u64())
        .filter(|&v| v > 0)
        .ok_or_else(|| DiskError::Tool {
            tool: "qemu-img".into(),
            path: path.display().to_string(),
            message: "the image has no size".into(),
        })
}

/// Runs `cmd` to its end like `Command::output`, reading its standard output as it comes and
/// passing the progress `qemu-img -p` prints (`(12.50/100%)`, each ended by a carriage return)
/// to [`crate::progress`]. When the server cancels the request, the tool is killed (its output
/// is a new image that the caller removes) and the error says so.
fn output_reporting_progress(cmd: &mut Command) -> std::io::Result<std::process::Output> {
    use std::io::Read;
    let mut child = cmd.spawn()?;
    let mut stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut e = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut e);
        }
        e
    });
    let mut stdout = child.stdout.take();
    let output = std::thread::spawn(move || {
        let mut all = Vec::new();
        let Some(out) = stdout.as_mut() else {
            return all;
        };
        let mut buf = [0u8; 512];
        let mut line = Vec::new();
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            for &b in &buf[..n] {
                if b == b'\r' || b == b'\n' {
                    if let Some(done) = std::str::from_utf8(&line)
                        .ok()
                        .and_then(crate::progress::parse_qemu_img)
                    {
                        crate::progress::copied(done);
                    }
                    line.clear();
                } else if line.len() < 64 {
                    line.push(b);
                }
            }
        }
        all
    });
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if crate::progress::cancelled() && !killed {
            killed = true;
            let _ = child.kill();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let stdout = output.join().unwrap_or_default();
    let stderr = errors.join().unwrap_or_default();
    if killed {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            "cancelled by the server",
        ));
    }
    Ok(std::process::Output {
        status,
        stdout,
        stderr,
    })
}
