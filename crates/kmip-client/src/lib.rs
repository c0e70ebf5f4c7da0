//! A KMIP 1.x client over mutual TLS.
//!
//! One client talks to one key provider: a list of endpoints that serve the same keys. It keeps
//! connections open and reuses them, negotiates the protocol version once (Discover Versions),
//! sends batches, and fails over to the next endpoint when one cannot be reached.
//!
//! Every error says which endpoint failed and whether the failure is a **connection** problem
//! (the provider could not be reached or did not answer: try another endpoint, or later) or an
//! **answer** from the provider (key not found, wrong state, permission denied). The Tresor server
//! builds its lock causes on that difference.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tresor_kmip::message::{
    key_material, Attribute, ProtocolVersion, RequestBatchItem, RequestMessage, RequestPayload,
    ResponseMessage, ResponsePayload, RevocationReason, TemplateAttribute,
};
use tresor_kmip::spec::{
    tag, CryptographicAlgorithm, ObjectType, ResultReason, ResultStatus, State,
};
use tresor_kmip::ttlv::{self, Bytes, Item, Limits, HEADER_LEN};
use tresor_kmip::Value;
use tresor_tls::io::Poller;
use tresor_tls::ServerName;
use zeroize::Zeroizing;

/// Versions the client speaks, most preferred first.
pub const VERSIONS: [ProtocolVersion; 5] = [
    ProtocolVersion::V1_4,
    ProtocolVersion::V1_3,
    ProtocolVersion::V1_2,
    ProtocolVersion::V1_1,
    ProtocolVersion::V1_0,
];

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The endpoint could not be reached, the TLS handshake failed, or it did not answer in time.
    #[error("Cannot reach key provider endpoint {endpoint}: {message}")]
    Connection { endpoint: String, message: String },
    /// The provider answered and refused the operation.
    #[error("Key provider endpoint {endpoint} refused {operation}: {reason} ({message})")]
    Server {
        endpoint: String,
        operation: String,
        reason: ResultReason,
        message: String,
    },
    /// The provider's answer is not valid KMIP.
    #[error("Key provider endpoint {endpoint} sent an invalid answer: {message}")]
    Protocol { endpoint: String, message: String },
    /// Every endpoint failed; the errors are in endpoint order.
    #[error("No endpoint of the key provider could be reached: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    AllEndpoints(Vec<ClientError>),
}

impl ClientError {
    /// Whether the failure is one of reaching the provider (rather than an answer from it).
    pub fn is_connection(&self) -> bool {
        match self {
            ClientError::Connection { .. } | ClientError::Protocol { .. } => true,
            ClientError::AllEndpoints(errors) => errors.iter().all(ClientError::is_connection),
            ClientError::Server { .. } => false,
        }
    }

    /// The provider's reason, when it answered.
    pub fn reason(&self) -> Option<ResultReason> {
        match self {
            ClientError::Server { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// The endpoint the error concerns (the last one tried).
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            ClientError::Connection { endpoint, .. }
            | ClientError::Server { endpoint, .. }
            | ClientError::Protocol { endpoint, .. } => Some(endpoint),
            ClientError::AllEndpoints(e) => e.last().and_then(|e| e.endpoint()),
        }
    }
}

/// How to reach a provider.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `host:port` of each endpoint, in order of preference.
    pub endpoints: Vec<String>,
    /// Mutual TLS: the provider's CA and this client's certificate.
    pub tls: Arc<tresor_tls::rustls::ClientConfig>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// A fixed version; `None` negotiates with Discover Versions.
    pub version: Option<ProtocolVersion>,
    /// How many idle connections to keep per client.
    pub max_idle: usize,
    pub max_response_bytes: usize,
    /// How long to keep asking for an answer before the task sleeps until it comes: answers
    /// that come within it are taken without the thread being put to sleep and woken. For
    /// clients that send requests back to back; zero (the default) waits at once.
    pub poll_for_answer: Duration,
    /// Whether a connection whose answer carried key material is kept for the next request.
    /// No by default: the TLS library leaves a record's plaintext in its receive buffer until
    /// the next answer overwrites it, so such a connection is closed (and its buffer freed).
    /// Yes saves a TLS handshake per answer with a key, for clients that hold no secrets worth
    /// it (the key server's benchmark).
    pub keep_after_key_material: bool,
}

impl ClientConfig {
    pub fn new(endpoints: Vec<String>, tls: Arc<tresor_tls::rustls::ClientConfig>) -> ClientConfig {
        ClientConfig {
            endpoints,
            tls,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            version: None,
            max_idle: 8,
            max_response_bytes: 4 * 1024 * 1024,
            poll_for_answer: Duration::ZERO,
            keep_after_key_material: false,
        }
    }
}

struct Conn {
    endpoint: usize,
    stream: TlsStream<TcpStream>,
    poller: Poller,
}

/// A KMIP client for one provider.
pub struct KmipClient {
    config: ClientConfig,
    connector: TlsConnector,
    idle: Mutex<Vec<Conn>>,
    /// The endpoint that answered last; tried first.
    preferred: AtomicUsize,
    version: Mutex<Option<ProtocolVersion>>,
}

impl std::fmt::Debug for KmipClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmipClient")
            .field("endpoints", &self.config.endpoints)
            .finish_non_exhaustive()
    }
}

/// What a probe of one endpoint found.
#[derive(Clone, Debug)]
pub struct Probe {
    pub endpoint: String,
    /// Connection, handshake and one round trip.
    pub latency: Duration,
    /// The versions the endpoint offers, newest first.
    pub versions: Vec<ProtocolVersion>,
    /// The certificate the endpoint presented.
    pub server_certificate: Option<tresor_tls::CertificateDer<'static>>,
}

/// The Unique Batch Item ID of the `i`th operation of a batch: its number, big-endian.
fn batch_item_id(i: usize) -> [u8; 4] {
    (i as u32 + 1).to_be_bytes()
}

/// The result of one operation of a batch.
pub type ItemResult = Result<ResponsePayload, ClientError>;

impl KmipClient {
    pub fn new(config: ClientConfig) -> KmipClient {
        let connector = TlsConnector::from(config.tls.clone());
        let version = config.version;
        KmipClient {
            config,
            connector,
            idle: Mutex::new(Vec::new()),
            preferred: AtomicUsize::new(0),
            version: Mutex::new(version),
        }
    }

    /// The endpoint that answered last.
    pub fn current_endpoint(&self) -> &str {
        let i = self.preferred.load(Ordering::Relaxed);
        self.config
            .endpoints
            .get(i)
            .map(String::as_str)
            .unwrap_or("")
    }

    /// The negotiated protocol version, negotiating it first if needed.
    pub async fn version(&self) -> Result<ProtocolVersion, ClientError> {
        if let Some(v) = *self.version.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(v);
        }
        let request = RequestMessage::new(
            ProtocolVersion::V1_1,
            vec![RequestBatchItem::new(RequestPayload::DiscoverVersions {
                versions: VERSIONS.to_vec(),
            })],
        );
        let (endpoint, response) = self.exchange(&request).await?;
        let chosen = match response.items.first() {
            Some(item) if item.status() == Some(ResultStatus::Success) => match &item.payload {
                Some(ResponsePayload::DiscoverVersions { versions }) => versions
                    .iter()
                    .find(|v| VERSIONS.contains(v))
                    .copied()
                    .ok_or_else(|| ClientError::Protocol {
                        endpoint: endpoint.clone(),
                        message: format!(
                            "the provider speaks none of KMIP 1.0 to 1.4 (it offered {versions:?})"
                        ),
                    })?,
                _ => ProtocolVersion::V1_0,
            },
            // A KMIP 1.0 server does not know Discover Versions.
            _ => ProtocolVersion::V1_0,
        };
        *self.version.lock().unwrap_or_else(|p| p.into_inner()) = Some(chosen);
        Ok(chosen)
    }

    /// Sends a batch; returns each operation's result in order. Operations the provider did not
    /// reach (it stops at the first failure) are missing from the end.
    pub async fn batch(
        &self,
        payloads: Vec<RequestPayload>,
    ) -> Result<Vec<ItemResult>, ClientError> {
        self.send_batch(payloads, false).await
    }

    /// Sends several operations in one message and asks the server to go on after a failed one
    /// (Batch Error Continuation Option: Continue), for operations that do not depend on each
    /// other. A server that stops anyway answers fewer items; the caller sees fewer results.
    pub async fn batch_continuing(
        &self,
        payloads: Vec<RequestPayload>,
    ) -> Result<Vec<ItemResult>, ClientError> {
        self.send_batch(payloads, true).await
    }

    async fn send_batch(
        &self,
        payloads: Vec<RequestPayload>,
        continuing: bool,
    ) -> Result<Vec<ItemResult>, ClientError> {
        let version = self.version().await?;
        let several = payloads.len() > 1;
        let items: Vec<RequestBatchItem> = payloads
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let mut item = RequestBatchItem::new(p);
                // The spec requires a Unique Batch Item ID on every item of a batch of several
                // (and servers such as PyKMIP refuse the batch without them).
                if several {
                    item.unique_batch_item_id = Some(Bytes::new(batch_item_id(i).to_vec()));
                }
                item
            })
            .collect();
        let names: Vec<String> = items.iter().map(op_name).collect();
        let mut request = RequestMessage::new(version, items);
        if continuing {
            request.header.batch_error_continuation_option =
                Some(tresor_kmip::spec::BatchErrorContinuationOption::Continue as u32);
        }
        let (endpoint, response) = self.exchange(&request).await?;
        if several {
            for (i, item) in response.items.iter().enumerate() {
                let expected = batch_item_id(i);
                if item.unique_batch_item_id.as_ref().map(|b| b.as_slice()) != Some(&expected[..]) {
                    return Err(ClientError::Protocol {
                        endpoint,
                        message: format!(
                            "answer {} of the batch does not carry the batch item id of operation {}",
                            i + 1,
                            i + 1
                        ),
                    });
                }
            }
        }
        Ok(response
            .items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let operation = names.get(i).cloned().unwrap_or_default();
                if item.status() == Some(ResultStatus::Success) {
                    item.payload.ok_or_else(|| ClientError::Protocol {
                        endpoint: endpoint.clone(),
                        message: format!("{operation} succeeded without a payload"),
                    })
                } else {
                    Err(ClientError::Server {
                        endpoint: endpoint.clone(),
                        operation,
                        reason: item.reason().unwrap_or(ResultReason::GeneralFailure),
                        message: item.result_message.unwrap_or_default(),
                    })
                }
            })
            .collect())
    }

    /// Sends one operation.
    pub async fn call(&self, payload: RequestPayload) -> Result<ResponsePayload, ClientError> {
        let name = op_name(&RequestBatchItem::new(payload.clone()));
        let mut results = self.batch(vec![payload]).await?;
        if results.is_empty() {
            return Err(ClientError::Protocol {
                endpoint: self.current_endpoint().to_owned(),
                message: format!("no result for {name}"),
            });
        }
        results.remove(0)
    }

    /// The endpoints, in the order they are tried.
    pub fn endpoints(&self) -> &[String] {
        &self.config.endpoints
    }

    /// Checks one endpoint on a new connection: TLS handshake and Discover Versions. Says how
    /// long it took, which versions the endpoint offers and which certificate it presented.
    pub async fn probe(&self, endpoint: usize) -> Result<Probe, ClientError> {
        let address = self
            .config
            .endpoints
            .get(endpoint)
            .cloned()
            .ok_or_else(|| ClientError::Connection {
                endpoint: format!("#{endpoint}"),
                message: "the provider has no such endpoint".into(),
            })?;
        let started = std::time::Instant::now();
        let conn = self.connect(endpoint).await?;
        let server_certificate = conn
            .stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned());
        let request = RequestMessage::new(
            ProtocolVersion::V1_1,
            vec![RequestBatchItem::new(RequestPayload::DiscoverVersions {
                versions: VERSIONS.to_vec(),
            })],
        );
        let bytes = request.encode().map_err(|e| ClientError::Protocol {
            endpoint: address.clone(),
            message: e.to_string(),
        })?;
        let response = self.roundtrip(conn, &bytes).await.map_err(|(_, e)| e)?;
        let versions = match response.items.first().and_then(|i| i.payload.as_ref()) {
            Some(ResponsePayload::DiscoverVersions { versions }) => versions.clone(),
            _ => vec![ProtocolVersion::V1_0],
        };
        Ok(Probe {
            endpoint: address,
            latency: started.elapsed(),
            versions,
            server_certificate,
        })
    }

    /// Sends a request to the preferred endpoint, failing over to the others in order.
    async fn exchange(
        &self,
        request: &RequestMessage,
    ) -> Result<(String, ResponseMessage), ClientError> {
        let bytes = Zeroizing::new(request.encode().map_err(|e| ClientError::Protocol {
            endpoint: String::new(),
            message: e.to_string(),
        })?);
        let n = self.config.endpoints.len();
        if n == 0 {
            return Err(ClientError::Connection {
                endpoint: "(none)".into(),
                message: "the provider has no endpoints configured".into(),
            });
        }
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut errors = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            match self.exchange_with(i, &bytes).await {
                Ok(response) => {
                    if i != start {
                        tracing::warn!(endpoint = %self.config.endpoints[i], "failed over to another provider endpoint");
                    }
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok((self.config.endpoints[i].clone(), response));
                }
                Err(e) if e.is_connection() => {
                    tracing::info!(error = %e, "provider endpoint failed");
                    errors.push(e);
                }
                Err(e) => return Err(e),
            }
        }
        if errors.len() == 1 {
            return Err(errors.remove(0));
        }
        Err(ClientError::AllEndpoints(errors))
    }

    async fn exchange_with(
        &self,
        endpoint: usize,
        bytes: &[u8],
    ) -> Result<ResponseMessage, ClientError> {
        // A pooled connection may have been closed by the server while idle: retry once on a
        // new one if the old one fails before any answer arrives.
        if let Some(conn) = self.take_idle(endpoint) {
            match self.roundtrip(conn, bytes).await {
                Ok(r) => return Ok(r),
                Err((false, _)) => {}
                Err((true, e)) => return Err(e),
            }
        }
        let conn = self.connect(endpoint).await?;
        self.roundtrip(conn, bytes).await.map_err(|(_, e)| e)
    }

    fn take_idle(&self, endpoint: usize) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let pos = idle.iter().position(|c| c.endpoint == endpoint)?;
        Some(idle.swap_remove(pos))
    }

    fn put_idle(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.config.max_idle {
            idle.push(conn);
        }
    }

    async fn connect(&self, endpoint: usize) -> Result<Conn, ClientError> {
        let address = &self.config.endpoints[endpoint];
        let err = |message: String| ClientError::Connection {
            endpoint: address.clone(),
            message,
        };
        let host = host_of(address);
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| err(format!("\"{host}\" is not a valid host name")))?;
        let tcp = tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| {
                err(format!(
                    "no TCP connection within {:?}",
                    self.config.connect_timeout
                ))
            })?
            .map_err(|e| err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let stream = tokio::time::timeout(
            self.config.connect_timeout,
            self.connector.connect(name, tcp),
        )
        .await
        .map_err(|_| err("TLS handshake timed out".into()))?
        .map_err(|e| err(format!("TLS handshake failed: {e}")))?;
        Ok(Conn {
            endpoint,
            stream,
            poller: Poller::new(self.config.poll_for_answer),
        })
    }

    /// One request and its response on a connection. On failure, says whether any of the
    /// answer had arrived (then a retry is not safe).
    async fn roundtrip(
        &self,
        mut conn: Conn,
        bytes: &[u8],
    ) -> Result<ResponseMessage, (bool, ClientError)> {
        let address = self.config.endpoints[conn.endpoint].clone();
        let cerr = |m: String| ClientError::Connection {
            endpoint: address.clone(),
            message: m,
        };
        let perr = |m: String| ClientError::Protocol {
            endpoint: address.clone(),
            message: m,
        };
        let timeout = self.config.request_timeout;
        let work = async {
            conn.stream
                .write_all(bytes)
                .await
                .map_err(|e| (false, cerr(format!("send failed: {e}"))))?;
            conn.stream
                .flush()
                .await
                .map_err(|e| (false, cerr(format!("send failed: {e}"))))?;
            let mut header = [0u8; HEADER_LEN];
            conn.poller
                .read_exact(&mut conn.stream, &mut header)
                .await
                .map_err(|e| {
                    (
                        false,
                        cerr(format!("connection closed before an answer: {e}")),
                    )
                })?;
            let limits = Limits {
                max_message_len: self.config.max_response_bytes,
                ..Limits::default()
            };
            let len =
                ttlv::message_len(&header, &limits).map_err(|e| (true, perr(e.to_string())))?;
            let mut body = Zeroizing::new(vec![0u8; len]);
            body[..HEADER_LEN].copy_from_slice(&header);
            conn.stream
                .read_exact(&mut body[HEADER_LEN..])
                .await
                .map_err(|e| (true, cerr(format!("answer cut off: {e}"))))?;
            ResponseMessage::decode(&body, &limits).map_err(|e| (true, perr(e.to_string())))
        };
        let response = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| (true, cerr(format!("no answer within {timeout:?}"))))??;
        // A connection whose answer carried key material is not kept: the TLS library decrypts
        // records in its own receive buffer, where the plaintext would stay until the next answer
        // overwrites it. Dropped, the buffer is freed (and wiped by an allocator that wipes).
        if !self.config.keep_after_key_material && carries_key_material(&response) {
            drop(conn);
        } else {
            self.put_idle(conn);
        }
        Ok(response)
    }

    // Convenience operations.

    /// Creates an AES key; returns its unique identifier.
    pub async fn create_aes_key(
        &self,
        bits: i32,
        attributes: Vec<Attribute>,
    ) -> Result<String, ClientError> {
        let mut attrs = vec![
            Attribute::new(
                "Cryptographic Algorithm",
                Value::Enumeration(CryptographicAlgorithm::Aes as u32),
            ),
            Attribute::new("Cryptographic Length", Value::Integer(bits)),
            Attribute::new(
                "Cryptographic Usage Mask",
                Value::Integer(
                    (tresor_kmip::spec::usage_mask::ENCRYPT
                        | tresor_kmip::spec::usage_mask::DECRYPT) as i32,
                ),
            ),
        ];
        attrs.extend(attributes);
        let template = TemplateAttribute {
            names: Vec::new(),
            attributes: attrs,
        };
        match self
            .call(RequestPayload::Create {
                object_type: ObjectType::SymmetricKey as u32,
                template,
            })
            .await?
        {
            ResponsePayload::Create { uid, .. } => Ok(uid),
            other => Err(self.unexpected("Create", &other)),
        }
    }

    /// Creates an AES key and activates it in one batch; returns its unique identifier.
    pub async fn create_active_aes_key(
        &self,
        bits: i32,
        attributes: Vec<Attribute>,
    ) -> Result<String, ClientError> {
        let uid = self.create_aes_key(bits, attributes).await?;
        self.activate(&uid).await?;
        Ok(uid)
    }

    /// The raw key material of a symmetric key (or secret data).
    pub async fn get_key(&self, uid: &str) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        match self
            .call(RequestPayload::Get {
                uid: Some(uid.into()),
                key_format_type: None,
                key_compression_type: None,
                key_wrapping_specification: None,
            })
            .await?
        {
            ResponsePayload::Get { object, .. } => key_material(&object.item)
                .map(|b| Zeroizing::new(b.to_vec()))
                .ok_or_else(|| ClientError::Protocol {
                    endpoint: self.current_endpoint().to_owned(),
                    message: format!("object {uid} has no plain key material"),
                }),
            other => Err(self.unexpected("Get", &other)),
        }
    }

    /// Who made the server, as it answers Query with Query Server Information (`Tresor` for
    /// `tresor kms`; `None` when it does not say).
    pub async fn vendor(&self) -> Result<Option<String>, ClientError> {
        let query = tresor_kmip::message::query_functions(&[
            tresor_kmip::spec::QueryFunction::QueryServerInformation,
        ]);
        match self.call(query).await? {
            ResponsePayload::Query {
                vendor_identification,
                ..
            } => Ok(vendor_identification),
            other => Err(self.unexpected("Query", &other)),
        }
    }

    /// The named attributes of an object (all of them when `names` is empty).
    pub async fn get_attributes(
        &self,
        uid: &str,
        names: &[&str],
    ) -> Result<Vec<Attribute>, ClientError> {
        match self
            .call(RequestPayload::GetAttributes {
                uid: Some(uid.into()),
                names: names.iter().map(|n| n.to_string()).collect(),
            })
            .await?
        {
            ResponsePayload::GetAttributes { attributes, .. } => Ok(attributes),
            other => Err(self.unexpected("Get Attributes", &other)),
        }
    }

    /// The state of an object.
    pub async fn state(&self, uid: &str) -> Result<State, ClientError> {
        let attrs = self.get_attributes(uid, &["State"]).await?;
        match attrs.first().map(|a| &a.value) {
            Some(Value::Enumeration(s)) => {
                State::from_u32(*s).ok_or_else(|| self.protocol(format!("unknown state {s}")))
            }
            _ => Err(self.protocol(format!("object {uid} has no State"))),
        }
    }

    pub async fn activate(&self, uid: &str) -> Result<(), ClientError> {
        self.call(RequestPayload::Activate {
            uid: Some(uid.into()),
        })
        .await
        .map(|_| ())
    }

    pub async fn revoke(&self, uid: &str, reason: RevocationReason) -> Result<(), ClientError> {
        self.call(RequestPayload::Revoke {
            uid: Some(uid.into()),
            reason,
            compromise_occurrence_date: None,
        })
        .await
        .map(|_| ())
    }

    pub async fn destroy(&self, uid: &str) -> Result<(), ClientError> {
        self.call(RequestPayload::Destroy {
            uid: Some(uid.into()),
        })
        .await
        .map(|_| ())
    }

    pub async fn add_attribute(&self, uid: &str, attribute: Attribute) -> Result<(), ClientError> {
        self.call(RequestPayload::AddAttribute {
            uid: Some(uid.into()),
            attribute,
        })
        .await
        .map(|_| ())
    }

    /// Unique identifiers of the objects that match every attribute.
    pub async fn locate(&self, attributes: Vec<Attribute>) -> Result<Vec<String>, ClientError> {
        match self
            .call(RequestPayload::Locate {
                maximum_items: None,
                offset_items: None,
                storage_status_mask: None,
                object_group_member: None,
                attributes,
            })
            .await?
        {
            ResponsePayload::Locate { uids, .. } => Ok(uids),
            other => Err(self.unexpected("Locate", &other)),
        }
    }

    /// The unique identifiers of objects with this name.
    pub async fn locate_by_name(&self, name: &str) -> Result<Vec<String>, ClientError> {
        self.locate(vec![name_attribute(name)]).await
    }

    fn protocol(&self, message: String) -> ClientError {
        ClientError::Protocol {
            endpoint: self.current_endpoint().to_owned(),
            message,
        }
    }

    fn unexpected(&self, op: &str, got: &ResponsePayload) -> ClientError {
        self.protocol(format!(
            "{op} answered with an unexpected payload {:?}",
            std::mem::discriminant(got)
        ))
    }
}

/// A Name attribute (uninterpreted text).
pub fn name_attribute(name: &str) -> Attribute {
    Attribute::new(
        "Name",
        Value::Structure(vec![
            Item::text(tag::NAME_VALUE, name),
            Item::enumeration(
                tag::NAME_TYPE,
                tresor_kmip::spec::NameType::UninterpretedTextString as u32,
            ),
        ]),
    )
}

fn op_name(item: &RequestBatchItem) -> String {
    tresor_kmip::spec::Operation::from_u32(item.operation)
        .map(|o| o.spec_name().to_owned())
        .unwrap_or_else(|| format!("operation 0x{:08X}", item.operation))
}

fn host_of(address: &str) -> &str {
    // [v6]:port, host:port
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address)
}

/// Whether an answer holds a managed object's material (a Get's answer).
fn carries_key_material(response: &ResponseMessage) -> bool {
    response
        .items
        .iter()
        .any(|i| matches!(i.payload, Some(ResponsePayload::Get { .. })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_taken_from_the_endpoint() {
        assert_eq!(host_of("kms.example.com:5696"), "kms.example.com");
        assert_eq!(host_of("127.0.0.1:5696"), "127.0.0.1");
        assert_eq!(host_of("[::1]:5696"), "::1");
    }

    #[test]
    fn connection_and_answer_errors_are_told_apart() {
        let c = ClientError::Connection {
            endpoint: "a:1".into(),
            message: "refused".into(),
        };
        let s = ClientError::Server {
            endpoint: "a:1".into(),
            operation: "Get".into(),
            reason: ResultReason::ItemNotFound,
            message: "no such key".into(),
        };
        assert!(c.is_connection());
        assert!(!s.is_connection());
        assert_eq!(s.reason(), Some(ResultReason::ItemNotFound));
        assert!(ClientError::AllEndpoints(vec![c.clone(), c.clone()]).is_connection());
        assert_eq!(
            s.to_string(),
            "Key provider endpoint a:1 refused Get: Item Not Found (no such key)"
        );
    }
}
