//! Handshakes between the configurations this crate builds, in memory.

use rustls::{ClientConnection, ServerConnection};
use tresor_tls::{
    client_config, parse_certs, parse_key, peer_identity, server_config, CertKind,
    CertificateAuthority, ClientAuth, ServerName,
};

fn handshake(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
) -> Result<(), rustls::Error> {
    let mut buf = Vec::new();
    for _ in 0..20 {
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
        }
        server.process_new_packets()?;
        buf.clear();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        client.process_new_packets()?;
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    Err(rustls::Error::General("handshake did not finish".into()))
}

struct Setup {
    ca: CertificateAuthority,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            ca: CertificateAuthority::generate("Test CA", 30).unwrap(),
        }
    }

    fn pair(
        &self,
        client_kind: CertKind,
        auth: ClientAuth,
        client_ca: &CertificateAuthority,
    ) -> (ClientConnection, ServerConnection) {
        let server = self
            .ca
            .issue(
                CertKind::Server,
                "kms.test",
                &["localhost", "127.0.0.1"],
                30,
            )
            .unwrap();
        let client = client_ca
            .issue(client_kind, "vcenter.test", &[], 30)
            .unwrap();
        let ca_der = parse_certs(self.ca.cert_pem().as_bytes(), "ca").unwrap();
        let sc = server_config(
            parse_certs(server.cert_pem.as_bytes(), "server").unwrap(),
            parse_key(server.key_pem.as_bytes(), "server key").unwrap(),
            &ca_der,
            auth,
        )
        .unwrap();
        let cc = client_config(
            &ca_der,
            parse_certs(client.cert_pem.as_bytes(), "client").unwrap(),
            parse_key(client.key_pem.as_bytes(), "client key").unwrap(),
        )
        .unwrap();
        (
            ClientConnection::new(cc, ServerName::try_from("localhost").unwrap()).unwrap(),
            ServerConnection::new(sc).unwrap(),
        )
    }
}

#[test]
fn client_with_client_usage_connects_and_is_identified() {
    let s = Setup::new();
    let (mut c, mut srv) = s.pair(CertKind::Client, ClientAuth::RequireClientAuthUsage, &s.ca);
    handshake(&mut c, &mut srv).unwrap();
    let peer = &srv.peer_certificates().unwrap()[0];
    assert_eq!(peer_identity(peer).unwrap(), "CN=vcenter.test");
}

#[test]
fn server_usage_only_client_is_accepted_by_default_and_refused_when_strict() {
    let s = Setup::new();
    let (mut c, mut srv) = s.pair(
        CertKind::ServerUsageOnly,
        ClientAuth::AnyExtendedKeyUsage,
        &s.ca,
    );
    handshake(&mut c, &mut srv).unwrap();

    let (mut c, mut srv) = s.pair(
        CertKind::ServerUsageOnly,
        ClientAuth::RequireClientAuthUsage,
        &s.ca,
    );
    let err = handshake(&mut c, &mut srv).unwrap_err();
    assert!(err.to_string().contains("InvalidPurpose"), "{err}");
}

#[test]
fn client_from_another_ca_is_refused() {
    let s = Setup::new();
    let other = CertificateAuthority::generate("Other CA", 30).unwrap();
    let (mut c, mut srv) = s.pair(CertKind::Client, ClientAuth::AnyExtendedKeyUsage, &other);
    let err = handshake(&mut c, &mut srv).unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}
