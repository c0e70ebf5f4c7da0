//! The administration commands: `tresor provider …`, `tresor settings …`, `tresor alarm …`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::client::Conn;
use crate::output;
use crate::CliError;

#[derive(Debug, Args)]
pub struct ProviderCommand {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: ProviderSub,
}

#[derive(Debug, Subcommand)]
enum ProviderSub {
    /// Add a key provider: its KMIP endpoints (same keys, tried in order), the CA it is trusted
    /// by, and how the server proves itself to it.
    Add {
        name: String,
        /// An endpoint, HOST:PORT; repeat for more.
        #[arg(long = "kmip", required = true)]
        endpoints: Vec<String>,
        /// The CA certificate (PEM) that signed the provider's server certificate.
        #[arg(long)]
        ca: PathBuf,
        /// A client certificate the provider issued to the server (PEM), with --client-key.
        #[arg(long, requires = "client_key", conflicts_with_all = ["self_signed", "csr"])]
        client_cert: Option<PathBuf>,
        /// The client certificate's private key (PEM).
        #[arg(long, requires = "client_cert")]
        client_key: Option<PathBuf>,
        /// Make a self-signed client certificate; the provider's administrator must trust it.
        #[arg(long, conflicts_with = "csr")]
        self_signed: bool,
        /// Make a key and write a certificate signing request to this file for the provider to
        /// sign; give the signed certificate back with `tresor provider certificate`.
        #[arg(long, value_name = "OUT")]
        csr: Option<PathBuf>,
        /// Make it the default provider (the first one always is).
        #[arg(long)]
        default: bool,
    },
    /// Every provider.
    List,
    /// One provider: endpoints, trust, certificates, last status.
    Show { name: String },
    /// Probe every endpoint of a provider now.
    Status { name: String },
    /// Make a provider the default for new keys.
    Default { name: String },
    /// Remove a provider that holds no VM's or host's key.
    Remove { name: String },
    /// Give the certificate the provider signed from the server's CSR.
    Certificate {
        name: String,
        #[arg(long)]
        client_cert: PathBuf,
    },
}

fn read(path: &Path, what: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::msg(format!("Cannot read the {what} {}: {e}", path.display())))
}

fn cert_line(c: &Value) -> String {
    if c.is_null() {
        return "-".into();
    }
    let mut s = format!(
        "{} until {} ({} days)",
        c["subject"].as_str().unwrap_or("?"),
        output::time(c["notAfter"].as_i64().unwrap_or(0)),
        c["daysLeft"]
    );
    if c["expired"] == true {
        s.push_str(", EXPIRED");
    } else if c["expiring"] == true {
        s.push_str(", expiring soon");
    }
    s
}

fn provider_text(p: &Value) -> String {
    let mut out = format!(
        "name:        {}{}\nendpoints:   {}\nprovider CA: {}\nclient cert: {}\n",
        p["name"].as_str().unwrap_or("?"),
        if p["isDefault"] == true {
            " (default)"
        } else {
            ""
        },
        p["endpoints"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
        cert_line(&p["trust"]["ca"]),
        if p["trust"]["awaitingSignedCertificate"] == true {
            "awaiting the certificate signed from the CSR".to_owned()
        } else {
            cert_line(&p["trust"]["client"])
        },
    );
    if !p["status"].is_null() {
        out.push_str(&status_text(&p["status"]));
    }
    out
}

fn status_text(st: &Value) -> String {
    let mut out = format!(
        "health:      {} (checked {})\nactive:      {}\n",
        st["health"].as_str().unwrap_or("?"),
        output::time(st["checkedAt"].as_i64().unwrap_or(0)),
        st["activeEndpoint"].as_str().unwrap_or("-"),
    );
    let rows: Vec<Vec<String>> = st["endpoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    vec![
                        e["address"].as_str().unwrap_or("?").into(),
                        if e["reachable"] == true { "yes" } else { "no" }.into(),
                        e["latencyMs"]
                            .as_f64()
                            .map(|l| format!("{l:.1} ms"))
                            .unwrap_or_else(|| "-".into()),
                        e["versions"]
                            .as_array()
                            .and_then(|v| v.first())
                            .and_then(Value::as_str)
                            .map(|v| format!("KMIP {v}"))
                            .unwrap_or_else(|| "-".into()),
                        e["error"]
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| cert_line(&e["serverCertificate"])),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&output::table(
            &[
                "ENDPOINT",
                "REACHABLE",
                "LATENCY",
                "VERSION",
                "SERVER CERTIFICATE / ERROR",
            ],
            &rows,
        ));
        out.push('\n');
    }
    out.push_str(st["message"].as_str().unwrap_or(""));
    out.push('\n');
    out
}

pub fn run_provider(cmd: ProviderCommand) -> Result<(), CliError> {
    let c = &cmd.conn;
    match cmd.command {
        ProviderSub::Add {
            name,
            endpoints,
            ca,
            client_cert,
            client_key,
            self_signed,
            csr,
            default,
        } => {
            let mut body = json!({
                "name": name,
                "endpoints": endpoints,
                "caPem": read(&ca, "CA certificate")?,
                "default": default,
            });
            match (&client_cert, &client_key) {
                (Some(cert), Some(key)) => {
                    body["clientCertPem"] = json!(read(cert, "client certificate")?);
                    let key = Zeroizing::new(read(key, "client key")?);
                    body["clientKeyPem"] = json!(key.as_str());
                }
                _ if self_signed => body["selfSigned"] = json!(true),
                _ if csr.is_some() => body["csr"] = json!(true),
                _ => {
                    return Err(CliError::msg(
                        "Say how the server proves itself to the provider: --client-cert FILE --client-key FILE, --self-signed, or --csr OUT",
                    ))
                }
            }
            let text = Zeroizing::new(body.to_string());
            drop(body);
            let v = c.call("POST", "/api/v1/providers", &text)?;
            if let (Some(out), Some(request)) = (&csr, v["added"]["csr"].as_str()) {
                std::fs::write(out, request).map_err(|e| {
                    CliError::msg(format!(
                        "Provider {name} was added, but the CSR could not be written to {}: {e}; remove the provider and add it again",
                        out.display()
                    ))
                })?;
            }
            c.print(&v, |v| {
                let mut s = provider_text(v);
                if let Some(out) = &csr {
                    s.push_str(&format!(
                        "\nThe certificate signing request is in {}. Have the provider's administrator sign it, then:\n  tresor provider certificate {name} --client-cert SIGNED.pem\n",
                        out.display()
                    ));
                }
                if let Some(cert) = v["added"]["clientCertificate"].as_str() {
                    s.push_str(&format!(
                        "\nThe provider must trust this self-signed client certificate (give it to its administrator):\n{cert}"
                    ));
                }
                s
            });
        }
        ProviderSub::List => {
            let v = c.call("GET", "/api/v1/providers", "")?;
            c.print(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|p| {
                                vec![
                                    p["name"].as_str().unwrap_or("?").into(),
                                    if p["isDefault"] == true { "yes" } else { "" }.into(),
                                    p["endpoints"]
                                        .as_array()
                                        .map(|e| {
                                            e.iter()
                                                .filter_map(Value::as_str)
                                                .collect::<Vec<_>>()
                                                .join(",")
                                        })
                                        .unwrap_or_default(),
                                    p["status"]["health"]
                                        .as_str()
                                        .unwrap_or("not checked yet")
                                        .into(),
                                    p["status"]["activeEndpoint"].as_str().unwrap_or("-").into(),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                output::table(&["NAME", "DEFAULT", "ENDPOINTS", "HEALTH", "ACTIVE"], &rows)
            });
        }
        ProviderSub::Show { name } => {
            let v = c.call("GET", &format!("/api/v1/providers/{name}"), "")?;
            c.print(&v, provider_text);
        }
        ProviderSub::Status { name } => {
            let v = c.call("GET", &format!("/api/v1/providers/{name}/status"), "")?;
            c.print(&v, status_text);
        }
        ProviderSub::Default { name } => {
            let v = c.call("POST", &format!("/api/v1/providers/{name}/default"), "")?;
            c.done(&v, || format!("{name}: the default key provider"));
        }
        ProviderSub::Remove { name } => {
            let v = c.call("DELETE", &format!("/api/v1/providers/{name}"), "")?;
            c.done(&v, || format!("{name}: removed"));
        }
        ProviderSub::Certificate { name, client_cert } => {
            let body = json!({"clientCertPem": read(&client_cert, "client certificate")?});
            let v = c.call(
                "POST",
                &format!("/api/v1/providers/{name}/certificate"),
                &body.to_string(),
            )?;
            c.print(&v, provider_text);
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct SettingsCommand {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: SettingsSub,
}

#[derive(Debug, Subcommand)]
enum SettingsSub {
    /// Print a setting (or all of them).
    Get { key: Option<String> },
    /// Change a setting: unlock.policy automatic|manual.
    Set { key: String, value: String },
}

pub fn run_settings(cmd: SettingsCommand) -> Result<(), CliError> {
    let c = &cmd.conn;
    match cmd.command {
        SettingsSub::Get { key: Some(key) } => {
            let v = c.call("GET", &format!("/api/v1/settings/{key}"), "")?;
            c.print(&v, |v| format!("{}\n", v["value"].as_str().unwrap_or("")));
        }
        SettingsSub::Get { key: None } => {
            let v = c.call("GET", "/api/v1/settings", "")?;
            c.print(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, val)| vec![k.clone(), val.as_str().unwrap_or("").into()])
                            .collect()
                    })
                    .unwrap_or_default();
                output::table(&["SETTING", "VALUE"], &rows)
            });
        }
        SettingsSub::Set { key, value } => {
            let v = c.call(
                "PUT",
                &format!("/api/v1/settings/{key}"),
                &json!({"value": value}).to_string(),
            )?;
            c.print(&v, |v| {
                format!("{} = {}\n", key, v["value"].as_str().unwrap_or(""))
            });
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct AlarmCommand {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: AlarmSub,
}

#[derive(Debug, Subcommand)]
enum AlarmSub {
    /// The active alarms, with what to do next.
    List,
    /// Acknowledge an alarm (it stays until its condition ends).
    Ack { id: i64 },
}

pub fn run_alarm(cmd: AlarmCommand) -> Result<(), CliError> {
    let c = &cmd.conn;
    match cmd.command {
        AlarmSub::List => {
            let v = c.call("GET", "/api/v1/alarms", "")?;
            c.print(&v, |v| {
                let alarms: Vec<tresor_api::views::Alarm> = match crate::client::typed(v, "alarms")
                {
                    Ok(a) => a,
                    Err(line) => return line,
                };
                let rows: Vec<Vec<String>> = alarms
                    .into_iter()
                    .map(|x| {
                        vec![
                            x.id.to_string(),
                            output::time(x.raised),
                            x.kind,
                            x.acknowledged_by.unwrap_or_default(),
                            format!("{}. {}", x.message, x.next_step),
                        ]
                    })
                    .collect();
                output::table(
                    &["ID", "RAISED", "KIND", "ACK BY", "WHAT / NEXT STEP"],
                    &rows,
                )
            });
        }
        AlarmSub::Ack { id } => {
            let v = c.call("POST", &format!("/api/v1/alarms/{id}/ack"), "")?;
            c.done(&v, || format!("alarm {id}: acknowledged"));
        }
    }
    Ok(())
}
