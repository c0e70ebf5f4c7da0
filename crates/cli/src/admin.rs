//! The administration commands: `tresor provider …`, `tresor settings …`, `tresor alarm …`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::Value;
use tresor_api::requests::{AddProvider, SetValue, SignedCertificate};
use tresor_api::views::{CertStatus, Provider, ProviderAdded, ProviderStatus, Setting, Settings};
use zeroize::Zeroizing;

use crate::client::{health_name, json_text, typed, Conn};
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
        /// The provider's name in Tresor.
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
    Show {
        /// The provider's name.
        name: String,
    },
    /// Probe every endpoint of a provider now.
    Status {
        /// The provider's name.
        name: String,
    },
    /// Make a provider the default for new keys.
    Default {
        /// The provider's name.
        name: String,
    },
    /// Remove a provider that holds no VM's or host's key.
    Remove {
        /// The provider's name.
        name: String,
    },
    /// Give the certificate the provider signed from the server's CSR.
    Certificate {
        /// The provider's name.
        name: String,
        /// The signed certificate (PEM).
        #[arg(long)]
        client_cert: PathBuf,
    },
}

fn read(path: &Path, what: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::msg(format!("Cannot read the {what} {}: {e}", path.display())))
}

fn cert_line(c: Option<&CertStatus>) -> String {
    let Some(c) = c else {
        return "-".into();
    };
    let mut s = format!(
        "{} until {} ({} days)",
        c.subject,
        output::time(c.not_after),
        c.days_left
    );
    if c.expired {
        s.push_str(", EXPIRED");
    } else if c.expiring {
        s.push_str(", expiring soon");
    }
    s
}

fn provider_text(v: &Value) -> String {
    match typed::<Provider>(v, "a key provider") {
        Ok(p) => provider_lines(&p),
        Err(line) => line,
    }
}

fn provider_lines(p: &Provider) -> String {
    let mut out = format!(
        "name:        {}{}\nendpoints:   {}\nprovider CA: {}\nclient cert: {}\n",
        p.name,
        if p.is_default { " (default)" } else { "" },
        p.endpoints.join(", "),
        cert_line(p.trust.ca.as_ref()),
        if p.trust.awaiting_signed_certificate {
            "awaiting the certificate signed from the CSR".to_owned()
        } else {
            cert_line(p.trust.client.as_ref())
        },
    );
    if let Some(st) = &p.status {
        out.push_str(&status_lines(st));
    }
    out
}

fn status_text(v: &Value) -> String {
    match typed::<ProviderStatus>(v, "a provider's status") {
        Ok(st) => status_lines(&st),
        Err(line) => line,
    }
}

fn status_lines(st: &ProviderStatus) -> String {
    let mut out = format!(
        "health:      {} (checked {})\nactive:      {}\n",
        health_name(st.health),
        output::time(st.checked_at),
        st.active_endpoint.as_deref().unwrap_or("-"),
    );
    let rows: Vec<Vec<String>> = st
        .endpoints
        .iter()
        .map(|e| {
            vec![
                e.address.clone(),
                if e.reachable { "yes" } else { "no" }.into(),
                e.latency_ms
                    .map(|l| format!("{l:.1} ms"))
                    .unwrap_or_else(|| "-".into()),
                e.versions
                    .first()
                    .map(|v| format!("KMIP {v}"))
                    .unwrap_or_else(|| "-".into()),
                e.error
                    .clone()
                    .unwrap_or_else(|| cert_line(e.server_certificate.as_ref())),
            ]
        })
        .collect();
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
    out.push_str(&st.message);
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
            let mut body = AddProvider {
                name: name.clone(),
                endpoints,
                ca_pem: read(&ca, "CA certificate")?,
                client_cert_pem: None,
                client_key_pem: None,
                self_signed: false,
                csr: false,
                default,
            };
            match (&client_cert, &client_key) {
                (Some(cert), Some(key)) => {
                    body.client_cert_pem = Some(read(cert, "client certificate")?);
                    body.client_key_pem = Some(Zeroizing::new(read(key, "client key")?));
                }
                _ if self_signed => body.self_signed = true,
                _ if csr.is_some() => body.csr = true,
                _ => {
                    return Err(CliError::msg(
                        "Say how the server proves itself to the provider: --client-cert FILE --client-key FILE, --self-signed, or --csr OUT",
                    ))
                }
            }
            let text = Zeroizing::new(json_text(&body));
            drop(body);
            let v = c.call("POST", "/api/v1/providers", &text)?;
            let added: ProviderAdded = typed(&v, "the added provider").map_err(CliError::msg)?;
            if let (Some(out), Some(request)) = (&csr, &added.added.csr) {
                std::fs::write(out, request).map_err(|e| {
                    CliError::msg(format!(
                        "Provider {name} was added, but the CSR could not be written to {}: {e}; remove the provider and add it again",
                        out.display()
                    ))
                })?;
            }
            c.print(&v, |_| {
                let mut s = provider_lines(&added.provider);
                if let Some(out) = &csr {
                    s.push_str(&format!(
                        "\nThe certificate signing request is in {}. Have the provider's administrator sign it, then:\n  tresor provider certificate {name} --client-cert SIGNED.pem\n",
                        out.display()
                    ));
                }
                if let Some(cert) = &added.added.client_certificate {
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
                let providers: Vec<Provider> = match typed(v, "key providers") {
                    Ok(p) => p,
                    Err(line) => return line,
                };
                let rows: Vec<Vec<String>> = providers
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            if p.is_default { "yes" } else { "" }.into(),
                            p.endpoints.join(","),
                            p.status
                                .as_ref()
                                .map_or("not checked yet".into(), |st| health_name(st.health)),
                            p.status
                                .as_ref()
                                .and_then(|st| st.active_endpoint.clone())
                                .unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
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
            let body = SignedCertificate {
                client_cert_pem: read(&client_cert, "client certificate")?,
            };
            let v = c.call(
                "POST",
                &format!("/api/v1/providers/{name}/certificate"),
                &json_text(&body),
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
    Get {
        /// The setting, such as unlock.policy (default: every setting).
        key: Option<String>,
    },
    /// Change a setting: unlock.policy automatic|manual.
    Set {
        /// The setting, such as unlock.policy.
        key: String,
        /// Its new value.
        value: String,
    },
}

pub fn run_settings(cmd: SettingsCommand) -> Result<(), CliError> {
    let c = &cmd.conn;
    match cmd.command {
        SettingsSub::Get { key: Some(key) } => {
            let v = c.call("GET", &format!("/api/v1/settings/{key}"), "")?;
            c.print(&v, |v| match typed::<Setting>(v, "a setting") {
                Ok(st) => format!("{}\n", st.value),
                Err(line) => line,
            });
        }
        SettingsSub::Get { key: None } => {
            let v = c.call("GET", "/api/v1/settings", "")?;
            c.print(&v, |v| {
                let all: Settings = match typed(v, "the settings") {
                    Ok(all) => all,
                    Err(line) => return line,
                };
                let rows = vec![vec!["unlock.policy".to_owned(), all.unlock_policy]];
                output::table(&["SETTING", "VALUE"], &rows)
            });
        }
        SettingsSub::Set { key, value } => {
            let v = c.call(
                "PUT",
                &format!("/api/v1/settings/{key}"),
                &json_text(&SetValue { value }),
            )?;
            c.print(&v, |v| match typed::<Setting>(v, "a setting") {
                Ok(st) => format!("{} = {}\n", st.key, st.value),
                Err(line) => line,
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
    Ack {
        /// The alarm's id, as `tresor alarm list` shows it.
        id: i64,
    },
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
