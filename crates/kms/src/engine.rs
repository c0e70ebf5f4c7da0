//! The KMIP operations of the key server, on decoded messages. No sockets here: the transport
//! hands in a request and the identity of the client's certificate, and gets a response back.

use std::sync::Arc;

use tresor_kmip::message::{
    key_material, symmetric_key, Attribute, ManagedObject, ProtocolVersion, RequestBatchItem,
    RequestMessage, RequestPayload, ResponseBatchItem, ResponseMessage, ResponsePayload,
    RevocationReason, TemplateAttribute,
};
use tresor_kmip::spec::{
    tag, BatchErrorContinuationOption, CryptographicAlgorithm, HashingAlgorithm, KeyFormatType,
    ObjectType, Operation, QueryFunction, ResultReason, RevocationReasonCode, State,
};
use tresor_kmip::ttlv::{self, Bytes, Item, Limits};
use tresor_kmip::Value;

use crate::attributes::{self, Access};
use crate::crypto::{random_bytes, CryptoError, MasterKey};
use crate::lifecycle::{self, Event};
use crate::store::{self, ObjectFilter, ObjectRow, Store, StoreError};

/// Protocol versions the server speaks, most preferred first.
pub const SUPPORTED_VERSIONS: [ProtocolVersion; 5] = [
    ProtocolVersion::V1_4,
    ProtocolVersion::V1_3,
    ProtocolVersion::V1_2,
    ProtocolVersion::V1_1,
    ProtocolVersion::V1_0,
];

/// Operations the server performs.
pub const OPERATIONS: [Operation; 15] = [
    Operation::Create,
    Operation::Register,
    Operation::ReKey,
    Operation::Locate,
    Operation::Get,
    Operation::GetAttributes,
    Operation::GetAttributeList,
    Operation::AddAttribute,
    Operation::ModifyAttribute,
    Operation::DeleteAttribute,
    Operation::Activate,
    Operation::Revoke,
    Operation::Destroy,
    Operation::Query,
    Operation::DiscoverVersions,
];

/// Object types the server stores.
pub const OBJECT_TYPES: [ObjectType; 6] = [
    ObjectType::SymmetricKey,
    ObjectType::SecretData,
    ObjectType::OpaqueObject,
    ObjectType::Certificate,
    ObjectType::PublicKey,
    ObjectType::PrivateKey,
];

/// A failed operation: the result reason and message the client receives.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct OpError {
    pub reason: ResultReason,
    pub message: String,
}

impl OpError {
    pub fn new(reason: ResultReason, message: impl Into<String>) -> OpError {
        OpError {
            reason,
            message: message.into(),
        }
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> OpError {
        tracing::error!(error = %e, "key server storage failed");
        OpError::new(
            ResultReason::GeneralFailure,
            "The key server cannot reach its storage; try again later",
        )
    }
}

impl From<CryptoError> for OpError {
    fn from(e: CryptoError) -> OpError {
        tracing::error!(error = %e, "key server cryptography failed");
        OpError::new(
            ResultReason::CryptographicFailure,
            "The key server cannot open or seal key material",
        )
    }
}

impl From<lifecycle::Refused> for OpError {
    fn from(e: lifecycle::Refused) -> OpError {
        OpError::new(ResultReason::PermissionDenied, e.to_string())
    }
}

/// How the engine behaves.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Client identities that may read and change every object.
    pub administrators: Vec<String>,
    pub vendor: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            administrators: Vec::new(),
            vendor: tresor_kmip::TRESOR_VENDOR.into(),
        }
    }
}

/// The key server's operations.
pub struct Engine {
    store: Arc<Store>,
    master: Arc<MasterKey>,
    config: EngineConfig,
    clock: fn() -> i64,
    limits: Limits,
    /// Objects whose first Get has been answered and whose `Fresh = false` is not committed yet
    /// (the Get does not wait for that write): every read sees them no longer fresh.
    got: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The current time in seconds since the epoch.
pub fn system_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The context of one request.
struct Ctx<'a> {
    identity: &'a str,
    version: ProtocolVersion,
    now: i64,
    /// The ID placeholder: the unique identifier the previous operation of the batch produced.
    last_uid: Option<String>,
}

impl Engine {
    pub fn new(store: Arc<Store>, master: Arc<MasterKey>, config: EngineConfig) -> Engine {
        Engine {
            store,
            master,
            config,
            clock: system_now,
            limits: Limits::default(),
            got: Default::default(),
        }
    }

    /// Whether the first Get of `uid` is answered but its change not committed yet. Asked before
    /// the object is read: its entry goes only after the commit, so that a read that misses the
    /// entry sees the committed change.
    fn got_pending(&self, uid: &str) -> bool {
        self.got.lock().is_ok_and(|g| g.contains(uid))
    }

    /// Replaces the clock (for tests).
    pub fn with_clock(mut self, clock: fn() -> i64) -> Engine {
        self.clock = clock;
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Answers one framed message. A message that is not valid TTLV, or not a valid request, gets
    /// an error response (Invalid Message) in the version it asked for, or 1.0 when that cannot
    /// be read.
    pub fn handle_bytes(
        &self,
        identity: &str,
        bytes: &[u8],
    ) -> Result<Vec<u8>, tresor_kmip::fields::MessageError> {
        let response = match self.parse(identity, bytes) {
            Ok(request) => self.handle(identity, request),
            Err(error_response) => *error_response,
        };
        response.encode()
    }

    /// Decodes a request, or returns the error response it deserves.
    pub fn parse(
        &self,
        identity: &str,
        bytes: &[u8],
    ) -> Result<RequestMessage, Box<ResponseMessage>> {
        match ttlv::decode_message(bytes, &self.limits) {
            Ok(item) => RequestMessage::from_item(&item).map_err(|e| {
                tracing::warn!(client = identity, error = %e, "invalid KMIP request");
                let version = negotiate(request_version(&item).unwrap_or(ProtocolVersion::V1_0));
                Box::new(self.error_response(version, e.result_reason(), e.to_string()))
            }),
            Err(e) => {
                tracing::warn!(client = identity, error = %e, "undecodable KMIP message");
                Err(Box::new(self.error_response(
                    ProtocolVersion::V1_0,
                    ResultReason::InvalidMessage,
                    e.to_string(),
                )))
            }
        }
    }

    /// Whether a request only reads single objects (and so never waits for the disk or scans):
    /// such requests may be answered on the network thread.
    pub fn is_read_only(request: &RequestMessage) -> bool {
        request.items.iter().all(|i| {
            matches!(
                Operation::from_u32(i.operation),
                Some(
                    Operation::Get
                        | Operation::GetAttributes
                        | Operation::GetAttributeList
                        | Operation::Query
                        | Operation::DiscoverVersions
                )
            )
        })
    }

    /// Whether a request changes objects and reads only single objects: such requests run on
    /// the database writer's thread ([`Store::submit`]), and are answered once committed.
    pub fn runs_on_writer(request: &RequestMessage) -> bool {
        request.items.iter().all(|i| {
            !matches!(
                Operation::from_u32(i.operation),
                Some(Operation::Locate | Operation::Query) | None
            )
        })
    }

    /// The answer to a request whose changes could not be committed.
    pub fn not_committed(&self, version: ProtocolVersion, error: &StoreError) -> ResponseMessage {
        self.error_response(
            negotiate(version),
            ResultReason::GeneralFailure,
            error.to_string(),
        )
    }

    fn error_response(
        &self,
        version: ProtocolVersion,
        reason: ResultReason,
        message: String,
    ) -> ResponseMessage {
        ResponseMessage::new(
            version,
            (self.clock)(),
            vec![ResponseBatchItem::failure(None, None, reason, message)],
        )
    }

    /// Answers a request from the client `identity`.
    pub fn handle(&self, identity: &str, request: RequestMessage) -> ResponseMessage {
        let requested = request.header.protocol_version;
        let version = negotiate(requested);
        let mut ctx = Ctx {
            identity,
            version,
            now: (self.clock)(),
            last_uid: None,
        };
        let stop_on_error = request.header.continuation() != BatchErrorContinuationOption::Continue;
        let mut results = Vec::with_capacity(request.items.len());
        for item in &request.items {
            let result = if requested.major != 1
                && item.operation != Operation::DiscoverVersions as u32
            {
                Err(OpError::new(
                    ResultReason::InvalidMessage,
                    format!("Protocol version {requested} is not supported; this server speaks KMIP 1.0 to 1.4"),
                ))
            } else {
                let started = std::time::Instant::now();
                let result = self.operation(&mut ctx, item);
                crate::metrics::METRICS.operation(
                    item.operation,
                    result.as_ref().err().map(|e| e.reason),
                    started.elapsed(),
                );
                result
            };
            let failed = result.is_err();
            results.push(match result {
                Ok(payload) => ResponseBatchItem::success(item.operation, item.unique_batch_item_id.clone(), payload),
                Err(e) => {
                    tracing::info!(client = identity, operation = item.operation, reason = %e.reason, message = %e.message, "operation failed");
                    ResponseBatchItem::failure(Some(item.operation), item.unique_batch_item_id.clone(), e.reason, e.message)
                }
            });
            if failed && stop_on_error {
                break;
            }
        }
        let mut response = ResponseMessage::new(version, ctx.now, results);
        if let Some(max) = request.header.maximum_response_size {
            let size = response.encode().map(|b| b.len()).unwrap_or(usize::MAX);
            if max >= 0 && size > max as usize {
                for item in &mut response.items {
                    *item = ResponseBatchItem::failure(
                        item.operation,
                        item.unique_batch_item_id.clone(),
                        ResultReason::ResponseTooLarge,
                        format!("The response has {size} bytes, more than the Maximum Response Size of {max}"),
                    );
                }
            }
        }
        response
    }

    fn operation(
        &self,
        ctx: &mut Ctx<'_>,
        item: &RequestBatchItem,
    ) -> Result<ResponsePayload, OpError> {
        let uid_of = |ctx: &Ctx<'_>, uid: &Option<String>| -> Result<String, OpError> {
            uid.clone().or_else(|| ctx.last_uid.clone()).ok_or_else(|| {
                OpError::new(
                    ResultReason::InvalidField,
                    "No Unique Identifier given and no earlier operation in the batch produced one",
                )
            })
        };
        let payload = match &item.payload {
            RequestPayload::DiscoverVersions { versions } => ResponsePayload::DiscoverVersions {
                versions: if versions.is_empty() {
                    SUPPORTED_VERSIONS.to_vec()
                } else {
                    versions
                        .iter()
                        .filter(|v| SUPPORTED_VERSIONS.contains(v))
                        .copied()
                        .collect()
                },
            },
            RequestPayload::Query { functions } => self.query(ctx, functions),
            RequestPayload::Create {
                object_type,
                template,
            } => self.create(ctx, *object_type, template)?,
            RequestPayload::Register {
                object_type,
                template,
                object,
            } => self.register(ctx, *object_type, template, object)?,
            RequestPayload::Get {
                uid,
                key_format_type,
                key_compression_type,
                key_wrapping_specification,
            } => {
                let uid = uid_of(ctx, uid)?;
                if key_wrapping_specification.is_some() {
                    return Err(OpError::new(
                        ResultReason::FeatureNotSupported,
                        "Key wrapping on Get is not supported",
                    ));
                }
                if key_compression_type.is_some() {
                    return Err(OpError::new(
                        ResultReason::KeyCompressionTypeNotSupported,
                        "Key compression is not supported",
                    ));
                }
                self.get(ctx, &uid, *key_format_type)?
            }
            RequestPayload::GetAttributes { uid, names } => {
                let uid = uid_of(ctx, uid)?;
                self.get_attributes(ctx, &uid, names)?
            }
            RequestPayload::GetAttributeList { uid } => {
                let uid = uid_of(ctx, uid)?;
                self.get_attribute_list(ctx, &uid)?
            }
            RequestPayload::AddAttribute { uid, attribute } => {
                let uid = uid_of(ctx, uid)?;
                self.add_attribute(ctx, &uid, attribute)?
            }
            RequestPayload::ModifyAttribute { uid, attribute } => {
                let uid = uid_of(ctx, uid)?;
                self.modify_attribute(ctx, &uid, attribute)?
            }
            RequestPayload::DeleteAttribute { uid, name, index } => {
                let uid = uid_of(ctx, uid)?;
                self.delete_attribute(ctx, &uid, name, *index)?
            }
            RequestPayload::Locate {
                maximum_items,
                offset_items,
                attributes,
                ..
            } => self.locate(ctx, *maximum_items, *offset_items, attributes)?,
            RequestPayload::Activate { uid } => {
                let uid = uid_of(ctx, uid)?;
                self.transition(ctx, &uid, Event::Activate, None, None)?;
                ResponsePayload::Activate { uid }
            }
            RequestPayload::Revoke {
                uid,
                reason,
                compromise_occurrence_date,
            } => {
                let uid = uid_of(ctx, uid)?;
                let compromise = matches!(
                    reason.code(),
                    Some(RevocationReasonCode::KeyCompromise)
                        | Some(RevocationReasonCode::CaCompromise)
                );
                let event = if compromise {
                    Event::Compromise
                } else {
                    Event::Deactivate
                };
                self.transition(
                    ctx,
                    &uid,
                    event,
                    Some(reason.clone()),
                    *compromise_occurrence_date,
                )?;
                ResponsePayload::Revoke { uid }
            }
            RequestPayload::Destroy { uid } => {
                let uid = uid_of(ctx, uid)?;
                self.transition(ctx, &uid, Event::Destroy, None, None)?;
                ResponsePayload::Destroy { uid }
            }
            RequestPayload::ReKey {
                uid,
                offset,
                template,
            } => {
                let uid = uid_of(ctx, uid)?;
                self.rekey(ctx, &uid, *offset, template.as_ref())?
            }
            RequestPayload::Raw(_) => {
                let name = Operation::from_u32(item.operation)
                    .map(|o| o.spec_name().to_owned())
                    .unwrap_or_else(|| format!("0x{:08X}", item.operation));
                return Err(OpError::new(
                    ResultReason::OperationNotSupported,
                    format!("Operation {name} is not supported by this key server"),
                ));
            }
        };
        if let Some(uid) = produced_uid(&payload) {
            ctx.last_uid = Some(uid);
        }
        Ok(payload)
    }

    fn query(&self, ctx: &Ctx<'_>, functions: &[u32]) -> ResponsePayload {
        let has = |f: QueryFunction| functions.contains(&(f as u32));
        let mut server_information = None;
        let mut vendor = None;
        if has(QueryFunction::QueryServerInformation) {
            vendor = Some(self.config.vendor.clone());
            server_information = Some(Item::structure(tag::SERVER_INFORMATION, Vec::new()));
        }
        ResponsePayload::Query {
            operations: if has(QueryFunction::QueryOperations) {
                OPERATIONS.iter().map(|o| *o as u32).collect()
            } else {
                Vec::new()
            },
            object_types: if has(QueryFunction::QueryObjects) {
                OBJECT_TYPES.iter().map(|o| *o as u32).collect()
            } else {
                Vec::new()
            },
            vendor_identification: vendor,
            server_information: server_information.filter(|_| ctx.version >= ProtocolVersion::V1_0),
            other: Vec::new(),
        }
    }

    /// Checks and collects the attributes a client gives with Create or Register.
    fn client_attributes(&self, template: &TemplateAttribute) -> Result<Vec<Attribute>, OpError> {
        if !template.names.is_empty() {
            return Err(OpError::new(
                ResultReason::FeatureNotSupported,
                "Templates are not supported; give the attributes directly",
            ));
        }
        let mut out: Vec<Attribute> = Vec::new();
        for a in &template.attributes {
            attributes::check_type(a).map_err(|m| OpError::new(ResultReason::InvalidField, m))?;
            match attributes::lookup(&a.name) {
                Some(def) if def.access == Access::Server => {
                    return Err(OpError::new(
                        ResultReason::PermissionDenied,
                        format!(
                            "Attribute \"{}\" is set by the server, not by clients",
                            a.name
                        ),
                    ));
                }
                Some(def) if !def.multi && out.iter().any(|o| o.name == a.name) => {
                    return Err(OpError::new(
                        ResultReason::InvalidField,
                        format!("Attribute \"{}\" is given twice", a.name),
                    ));
                }
                None if attributes::is_server_custom(&a.name) => {
                    return Err(OpError::new(
                        ResultReason::PermissionDenied,
                        format!(
                            "Custom attribute \"{}\" (y-) is set by the server, not by clients",
                            a.name
                        ),
                    ));
                }
                _ => {}
            }
            out.push(Attribute {
                index: None,
                ..a.clone()
            });
        }
        Ok(out)
    }

    fn standard_attributes(
        &self,
        ctx: &Ctx<'_>,
        uid: &str,
        object_type: ObjectType,
        attrs: &mut Vec<Attribute>,
        material: Option<&[u8]>,
    ) {
        attributes::set(attrs, "Unique Identifier", Value::TextString(uid.into()));
        attributes::set(attrs, "Object Type", Value::Enumeration(object_type as u32));
        attributes::set(attrs, "Initial Date", Value::DateTime(ctx.now));
        attributes::set(attrs, "Last Change Date", Value::DateTime(ctx.now));
        if attributes::first(attrs, "Original Creation Date").is_none() {
            attributes::set(attrs, "Original Creation Date", Value::DateTime(ctx.now));
        }
        if attributes::first(attrs, "Fresh").is_none() {
            attributes::set(attrs, "Fresh", Value::Boolean(true));
        }
        if let Some(material) = material {
            let digest = ring::digest::digest(&ring::digest::SHA256, material);
            attrs.push(Attribute::new(
                "Digest",
                Value::Structure(vec![
                    Item::enumeration(tag::HASHING_ALGORITHM, HashingAlgorithm::Sha256 as u32),
                    Item::bytes(tag::DIGEST_VALUE, digest.as_ref()),
                    Item::enumeration(tag::KEY_FORMAT_TYPE, KeyFormatType::Raw as u32),
                ]),
            ));
        }
        let sensitive = matches!(
            attributes::first(attrs, "Sensitive"),
            Some(Value::Boolean(true))
        );
        let extractable = !matches!(
            attributes::first(attrs, "Extractable"),
            Some(Value::Boolean(false))
        );
        attributes::set(attrs, "Always Sensitive", Value::Boolean(sensitive));
        attributes::set(attrs, "Never Extractable", Value::Boolean(!extractable));
        if attributes::first(attrs, "Sensitive").is_none() {
            attributes::set(attrs, "Sensitive", Value::Boolean(false));
        }
        if attributes::first(attrs, "Extractable").is_none() {
            attributes::set(attrs, "Extractable", Value::Boolean(true));
        }
    }

    /// The state a new object starts in: Active when its Activation Date has come.
    fn initial_state(ctx: &Ctx<'_>, attrs: &[Attribute]) -> State {
        match attributes::first(attrs, "Activation Date") {
            Some(Value::DateTime(t)) if *t <= ctx.now => State::Active,
            _ => State::PreActive,
        }
    }

    fn create(
        &self,
        ctx: &Ctx<'_>,
        object_type: u32,
        template: &TemplateAttribute,
    ) -> Result<ResponsePayload, OpError> {
        if object_type != ObjectType::SymmetricKey as u32 {
            return Err(OpError::new(
                ResultReason::OperationNotSupported,
                "Create makes symmetric keys only; register other objects with Register",
            ));
        }
        let mut attrs = self.client_attributes(template)?;
        let algorithm = match attributes::first(&attrs, "Cryptographic Algorithm") {
            Some(Value::Enumeration(a)) => *a,
            _ => {
                return Err(OpError::new(
                    ResultReason::InvalidField,
                    "Create needs the attribute Cryptographic Algorithm",
                ));
            }
        };
        let length = match attributes::first(&attrs, "Cryptographic Length") {
            Some(Value::Integer(l)) => *l,
            _ => {
                return Err(OpError::new(
                    ResultReason::InvalidField,
                    "Create needs the attribute Cryptographic Length",
                ))
            }
        };
        let material_len = key_length(algorithm, length)?;
        if attributes::first(&attrs, "Cryptographic Usage Mask").is_none() {
            return Err(OpError::new(
                ResultReason::InvalidField,
                "Create needs the attribute Cryptographic Usage Mask",
            ));
        }
        let mut material = random_bytes(material_len)?;
        if algorithm == CryptographicAlgorithm::TripleDes as u32 {
            set_des_parity(&mut material);
        }
        let uid = new_uid()?;
        self.standard_attributes(
            ctx,
            &uid,
            ObjectType::SymmetricKey,
            &mut attrs,
            Some(&material),
        );
        let object = symmetric_key(algorithm, length, Bytes::new(material.to_vec()));
        self.store_new(
            ctx,
            &uid,
            ObjectType::SymmetricKey,
            attrs,
            &object.item,
            "create",
        )?;
        Ok(ResponsePayload::Create {
            object_type,
            uid,
            template: None,
        })
    }

    fn register(
        &self,
        ctx: &Ctx<'_>,
        object_type: u32,
        template: &TemplateAttribute,
        object: &ManagedObject,
    ) -> Result<ResponsePayload, OpError> {
        let Some(ty) = ObjectType::from_u32(object_type).filter(|t| OBJECT_TYPES.contains(t))
        else {
            return Err(OpError::new(
                ResultReason::OperationNotSupported,
                format!("Objects of type 0x{object_type:08X} cannot be registered"),
            ));
        };
        let mut attrs = self.client_attributes(template)?;
        // Key blocks say what they are; take algorithm and length from them when not given.
        let material = key_material(&object.item).map(|b| b.to_vec());
        if let Some(block) = object.item.child(tag::KEY_BLOCK) {
            for (t, name) in [
                (tag::CRYPTOGRAPHIC_ALGORITHM, "Cryptographic Algorithm"),
                (tag::CRYPTOGRAPHIC_LENGTH, "Cryptographic Length"),
            ] {
                if let (Some(v), None) = (block.child(t), attributes::first(&attrs, name)) {
                    attrs.push(Attribute::new(name, v.value.clone()));
                }
            }
        }
        let uid = new_uid()?;
        self.standard_attributes(ctx, &uid, ty, &mut attrs, material.as_deref());
        self.store_new(ctx, &uid, ty, attrs, &object.item, "register")?;
        Ok(ResponsePayload::Register {
            uid,
            template: None,
        })
    }

    fn store_new(
        &self,
        ctx: &Ctx<'_>,
        uid: &str,
        ty: ObjectType,
        mut attrs: Vec<Attribute>,
        object: &Item,
        action: &str,
    ) -> Result<(), OpError> {
        let state = Self::initial_state(ctx, &attrs);
        attributes::set(&mut attrs, "State", Value::Enumeration(state as u32));
        let plain = zeroize::Zeroizing::new(
            ttlv::to_bytes(object)
                .map_err(|e| OpError::new(ResultReason::InvalidField, e.to_string()))?,
        );
        let row = ObjectRow {
            uid: uid.to_owned(),
            object_type: ty as u32,
            state: state as u32,
            owner: ctx.identity.to_owned(),
            attributes: attrs,
            sealed: Some(self.master.seal(uid, &plain)?),
            created: ctx.now,
            updated: ctx.now,
        };
        let actor = ctx.identity.to_owned();
        let audited = action.to_owned();
        let now = ctx.now;
        self.store.write(move |conn| -> Result<(), OpError> {
            store::insert_object(conn, &row)?;
            store::audit(conn, now, &actor, &audited, Some(&row.uid), "")?;
            Ok(())
        })?;
        tracing::info!(
            client = ctx.identity,
            uid,
            object_type = ty.spec_name(),
            action,
            "object stored"
        );
        Ok(())
    }

    /// Loads an object the client may use.
    fn load(&self, ctx: &Ctx<'_>, uid: &str) -> Result<ObjectRow, OpError> {
        let got = self.got_pending(uid);
        let mut row = self.load_unseen(ctx, uid)?;
        if got {
            attributes::set(&mut row.attributes, "Fresh", Value::Boolean(false));
        }
        Ok(row)
    }

    fn load_unseen(&self, ctx: &Ctx<'_>, uid: &str) -> Result<ObjectRow, OpError> {
        let identity = ctx.identity.to_owned();
        let admins = &self.config.administrators;
        self.store.read(|conn| -> Result<ObjectRow, OpError> {
            let row = store::get_object(conn, uid)?.ok_or_else(|| not_found(uid))?;
            if row.owner != identity
                && !admins.contains(&identity)
                && !store::is_granted(conn, uid, &identity)?
            {
                return Err(denied(uid));
            }
            Ok(row)
        })
    }

    /// What Get needs of an object the client may use.
    fn load_access(&self, ctx: &Ctx<'_>, uid: &str) -> Result<store::ObjectAccess, OpError> {
        let identity = ctx.identity;
        let admins = &self.config.administrators;
        self.store
            .read(|conn| -> Result<store::ObjectAccess, OpError> {
                let row = store::get_access(conn, uid)?.ok_or_else(|| not_found(uid))?;
                if row.owner != identity
                    && !admins.iter().any(|a| a == identity)
                    && !store::is_granted(conn, uid, identity)?
                {
                    return Err(denied(uid));
                }
                Ok(row)
            })
    }

    /// Loads, changes and saves an object in one write transaction.
    fn update<T: Send + 'static>(
        &self,
        ctx: &Ctx<'_>,
        uid: &str,
        action: &'static str,
        change: impl FnOnce(&mut ObjectRow) -> Result<T, OpError> + Send + 'static,
    ) -> Result<T, OpError> {
        // Check access on a reader first, so that refusals cost no write.
        self.load(ctx, uid)?;
        let uid = uid.to_owned();
        let actor = ctx.identity.to_owned();
        let now = ctx.now;
        self.store.write(move |conn| -> Result<T, OpError> {
            let mut row = store::get_object(conn, &uid)?.ok_or_else(|| not_found(&uid))?;
            let out = change(&mut row)?;
            row.updated = now;
            attributes::set(
                &mut row.attributes,
                "Last Change Date",
                Value::DateTime(now),
            );
            store::update_object(conn, &row)?;
            store::audit(conn, now, &actor, action, Some(&uid), "")?;
            Ok(out)
        })
    }

    fn get(
        &self,
        ctx: &Ctx<'_>,
        uid: &str,
        format: Option<u32>,
    ) -> Result<ResponsePayload, OpError> {
        let got = self.got_pending(uid);
        let row = self.load_access(ctx, uid)?;
        let state = State::from_u32(row.state).unwrap_or(State::Destroyed);
        let sealed = match (&row.sealed, lifecycle::has_material(state)) {
            (Some(s), true) => s,
            _ => {
                return Err(OpError::new(
                    ResultReason::ItemNotFound,
                    format!("Object {uid} is destroyed; its key material is gone"),
                ))
            }
        };
        let plain = self.master.open(uid, sealed)?;
        let limits = Limits {
            max_message_len: usize::MAX,
            max_depth: 32,
        };
        let mut object =
            ttlv::decode_item(&plain, &limits).map_err(|_| CryptoError::Open(uid.to_owned()))?;
        if let Some(format) = format {
            object = convert_format(object, format)?;
        }
        let first =
            row.fresh && !got && self.got.lock().is_ok_and(|mut g| g.insert(uid.to_owned()));
        if first {
            // The first Get makes an object no longer fresh. Nobody waits for that change; until
            // it is committed, `got` answers for it.
            let (uid, actor, now) = (uid.to_owned(), ctx.identity.to_owned(), ctx.now);
            let (got, done) = (self.got.clone(), uid.clone());
            self.store.write_detached_then(
                move |conn| -> Result<(), StoreError> {
                    // Several Gets may have seen the object fresh; the first change wins.
                    let still_fresh = store::get_access(conn, &uid)?.is_some_and(|a| a.fresh);
                    if let Some(mut row) = store::get_object(conn, &uid)?.filter(|_| still_fresh) {
                        attributes::set(&mut row.attributes, "Fresh", Value::Boolean(false));
                        store::update_object(conn, &row)?;
                        store::audit(conn, now, &actor, "first get", Some(&uid), "")?;
                    }
                    Ok(())
                },
                move || {
                    if let Ok(mut g) = got.lock() {
                        g.remove(&done);
                    }
                },
            );
        }
        Ok(ResponsePayload::Get {
            object_type: row.object_type,
            uid: uid.to_owned(),
            object: ManagedObject {
                object_type: row.object_type,
                item: object,
            },
        })
    }

    /// The attributes a client at this version sees, in listing order, with indexes.
    fn visible(&self, ctx: &Ctx<'_>, attrs: &[Attribute]) -> Vec<Attribute> {
        let mut out: Vec<Attribute> = attrs
            .iter()
            .filter(|a| attributes::visible_at(&a.name, ctx.version))
            .cloned()
            .map(|a| attributes::for_version(a, ctx.version))
            .collect();
        attributes::sort_for_listing(&mut out);
        with_indexes(&mut out);
        out
    }

    fn get_attributes(
        &self,
        ctx: &Ctx<'_>,
        uid: &str,
        names: &[String],
    ) -> Result<ResponsePayload, OpError> {
        let row = self.load(ctx, uid)?;
        let visible = self.visible(ctx, &row.attributes);
        let attributes = if names.is_empty() {
            visible
        } else {
            let mut out = Vec::new();
            for name in names {
                out.extend(visible.iter().filter(|a| a.name == *name).cloned());
            }
            out
        };
        Ok(ResponsePayload::GetAttributes {
            uid: uid.to_owned(),
            attributes,
        })
    }

    fn get_attribute_list(&self, ctx: &Ctx<'_>, uid: &str) -> Result<ResponsePayload, OpError> {
        let row = self.load(ctx, uid)?;
        let mut names: Vec<String> = Vec::new();
        for a in self.visible(ctx, &row.attributes) {
            if !names.contains(&a.name) {
                names.push(a.name);
            }
        }
        Ok(ResponsePayload::GetAttributeList {
            uid: uid.to_owned(),
            names,
        })
    }

    /// Whether a client may add, modify or delete this attribute after creation.
    fn check_client_change(name: &str) -> Result<(), OpError> {
        let allowed = match attributes::lookup(name) {
            Some(def) => def.access == Access::Client,
            None => attributes::is_client_custom(name),
        };
        if allowed {
            Ok(())
        } else {
            Err(OpError::new(
                ResultReason::PermissionDenied,
                format!("Attribute \"{name}\" cannot be changed by a client"),
            ))
        }
    }

    fn add_attribute(
        &self,
        ctx: &Ctx<'_>,
        uid: &str,
        attribute: &Attribute,
    ) -> Result<ResponsePayload, OpError> {
        attributes::check_type(attribute)
            .map_err(|m| OpError::new(ResultReason::InvalidField, m))?;
        Self::check_client_change(&attribute.name)?;
        let mut added = attribute.clone();
        added.index = None;
        let stored = added.clone();
        let index = self.update(ctx, uid, "add attribute", move |row| {
            let multi = attributes::lookup(&stored.name).map(|d| d.multi).unwrap_or(true);
            let count = attributes::all(&row.attributes, &stored.name).count();
            if !multi && count > 0 {
                return Err(OpError::new(
                    ResultReason::IllegalOperation,
                    format!("Object already has the attribute \"{}\", which takes one value; use Modify Attribute", stored.name),
                ));
            }
            row.attributes.push(stored);
            Ok(count)
        })?;
        added.index = (index > 0).then_some(index as i32);
        Ok(ResponsePayload::AddAttribute {
            uid: uid.to_owned(),
            attribute: added,
        })
    }

    fn modify_attribute(
        &self,
        ctx: &Ctx<'_>,
        uid: &str,
        attribute: &Attribute,
    ) -> Result<ResponsePayload, OpError> {
        attributes::check_type(attribute)
            .map_err(|m| OpError::new(ResultReason::InvalidField, m))?;
        Self::check_client_change(&attribute.name)?;
        let wanted = attribute.clone();
        let out = attribute.clone();
        self.update(ctx, uid, "modify attribute", move |row| {
            let state = State::from_u32(row.state);
            if wanted.name == "Activation Date" && state != Some(State::PreActive) {
                return Err(OpError::new(
                    ResultReason::PermissionDenied,
                    "The Activation Date can change only before the object is active",
                ));
            }
            let index = wanted.index.unwrap_or(0).max(0) as usize;
            let slot = row
                .attributes
                .iter_mut()
                .filter(|a| a.name == wanted.name)
                .nth(index)
                .ok_or_else(|| {
                    OpError::new(
                        ResultReason::ItemNotFound,
                        format!(
                            "Object has no attribute \"{}\" at index {index}",
                            wanted.name
                        ),
                    )
                })?;
            slot.value = wanted.value;
            Ok(())
        })?;
        Ok(ResponsePayload::ModifyAttribute {
            uid: uid.to_owned(),
            attribute: out,
        })
    }

    fn delete_attribute(
        &self,
        ctx: &Ctx<'_>,
        uid: &str,
        name: &str,
        index: Option<i32>,
    ) -> Result<ResponsePayload, OpError> {
        Self::check_client_change(name)?;
        let name_owned = name.to_owned();
        let removed = self.update(ctx, uid, "delete attribute", move |row| {
            let index = index.unwrap_or(0).max(0) as usize;
            let pos = row
                .attributes
                .iter()
                .enumerate()
                .filter(|(_, a)| a.name == name_owned)
                .nth(index)
                .map(|(i, _)| i)
                .ok_or_else(|| {
                    OpError::new(
                        ResultReason::ItemNotFound,
                        format!("Object has no attribute \"{name_owned}\" at index {index}"),
                    )
                })?;
            Ok(row.attributes.remove(pos))
        })?;
        Ok(ResponsePayload::DeleteAttribute {
            uid: uid.to_owned(),
            attribute: removed,
        })
    }

    fn locate(
        &self,
        ctx: &Ctx<'_>,
        maximum: Option<i32>,
        offset: Option<i32>,
        wanted: &[Attribute],
    ) -> Result<ResponsePayload, OpError> {
        let is_admin = self.config.administrators.iter().any(|a| a == ctx.identity);
        let mut filter = ObjectFilter::default();
        if !is_admin {
            filter.owner = Some(ctx.identity);
        }
        let mut name = None;
        let mut uid = None;
        let mut object_type = None;
        let mut states = Vec::new();
        for a in wanted {
            match (a.name.as_str(), &a.value) {
                ("Name", Value::Structure(items)) => {
                    name = items
                        .iter()
                        .find(|i| i.tag == tag::NAME_VALUE)
                        .and_then(|i| match &i.value {
                            Value::TextString(t) => Some(t.to_string()),
                            _ => None,
                        });
                }
                ("Unique Identifier", Value::TextString(t)) => uid = Some(t.to_string()),
                ("Object Type", Value::Enumeration(t)) => object_type = Some(*t),
                ("State", Value::Enumeration(s)) => states.push(*s),
                _ => {}
            }
        }
        let live: Vec<u32> = [
            State::PreActive,
            State::Active,
            State::Deactivated,
            State::Compromised,
        ]
        .iter()
        .map(|s| *s as u32)
        .collect();
        filter.states = Some(if states.is_empty() { &live } else { &states });
        filter.name = name.as_deref();
        filter.uid = uid.as_deref();
        filter.object_type = object_type;
        let rows = self.store.read(|conn| store::list_objects(conn, &filter))?;
        let matches: Vec<String> = rows
            .into_iter()
            .filter(|row| matches_all(&row.attributes, wanted))
            .map(|row| row.uid)
            .collect();
        let located = matches.len();
        let skip = offset.unwrap_or(0).max(0) as usize;
        let take = maximum
            .filter(|m| *m >= 0)
            .map(|m| m as usize)
            .unwrap_or(usize::MAX);
        let uids: Vec<String> = matches.into_iter().skip(skip).take(take).collect();
        Ok(ResponsePayload::Locate {
            located_items: (ctx.version >= ProtocolVersion::V1_3
                && (maximum.is_some() || offset.is_some()))
            .then_some(located as i32),
            uids,
        })
    }

    fn transition(
        &self,
        ctx: &Ctx<'_>,
        uid: &str,
        event: Event,
        reason: Option<RevocationReason>,
        occurrence: Option<i64>,
    ) -> Result<State, OpError> {
        let now = ctx.now;
        let action = match event {
            Event::Activate => "activate",
            Event::Deactivate | Event::Compromise => "revoke",
            Event::Destroy => "destroy",
            Event::Reactivate => "reactivate",
        };
        self.update(ctx, uid, action, move |row| {
            apply(row, event, now, reason, occurrence)
        })
    }

    fn rekey(
        &self,
        ctx: &Ctx<'_>,
        uid: &str,
        offset: Option<u32>,
        template: Option<&TemplateAttribute>,
    ) -> Result<ResponsePayload, OpError> {
        let old = self.load(ctx, uid)?;
        if old.object_type != ObjectType::SymmetricKey as u32 {
            return Err(OpError::new(
                ResultReason::OperationNotSupported,
                "Re-key works on symmetric keys only",
            ));
        }
        let state = State::from_u32(old.state);
        if !matches!(state, Some(State::PreActive) | Some(State::Active)) {
            return Err(OpError::new(
                ResultReason::PermissionDenied,
                format!("Object {uid} is not active and cannot be re-keyed"),
            ));
        }
        let length = match attributes::first(&old.attributes, "Cryptographic Length") {
            Some(Value::Integer(l)) => *l,
            _ => 256,
        };
        let algorithm = match attributes::first(&old.attributes, "Cryptographic Algorithm") {
            Some(Value::Enumeration(a)) => *a,
            _ => CryptographicAlgorithm::Aes as u32,
        };
        let mut attrs: Vec<Attribute> = old
            .attributes
            .iter()
            .filter(|a| {
                attributes::lookup(&a.name)
                    .map(|d| d.access != Access::Server)
                    .unwrap_or(true)
                    && !matches!(
                        a.name.as_str(),
                        "Link"
                            | "Activation Date"
                            | "Deactivation Date"
                            | "Fresh"
                            | "Original Creation Date"
                            | "Random Number Generator"
                    )
            })
            .cloned()
            .collect();
        if let Some(t) = template {
            for a in self.client_attributes(t)? {
                attributes::remove(&mut attrs, &a.name);
                attrs.push(a);
            }
        }
        if let Some(offset) = offset {
            attributes::set(
                &mut attrs,
                "Activation Date",
                Value::DateTime(ctx.now + i64::from(offset)),
            );
        } else if state == Some(State::Active) {
            attributes::set(&mut attrs, "Activation Date", Value::DateTime(ctx.now));
        }
        let material = random_bytes(length as usize / 8)?;
        let new_uid = new_uid()?;
        attrs.push(link(tresor_kmip::spec::LinkType::ReplacedObjectLink, uid));
        self.standard_attributes(
            ctx,
            &new_uid,
            ObjectType::SymmetricKey,
            &mut attrs,
            Some(&material),
        );
        let object = symmetric_key(algorithm, length, Bytes::new(material.to_vec()));
        self.store_new(
            ctx,
            &new_uid,
            ObjectType::SymmetricKey,
            attrs,
            &object.item,
            "rekey",
        )?;
        let replacement = new_uid.clone();
        self.update(ctx, uid, "rekey", move |row| {
            row.attributes.push(link(
                tresor_kmip::spec::LinkType::ReplacementObjectLink,
                &replacement,
            ));
            // The name moves to the replacement key.
            attributes::remove(&mut row.attributes, "Name");
            Ok(())
        })?;
        Ok(ResponsePayload::ReKey {
            uid: new_uid,
            template: None,
        })
    }
}

/// Applies a lifecycle event to an object: the new state and the dates and reasons that go with
/// it. Used by clients' operations and by the administrator.
pub fn apply(
    row: &mut ObjectRow,
    event: Event,
    now: i64,
    reason: Option<RevocationReason>,
    occurrence: Option<i64>,
) -> Result<State, OpError> {
    let from = State::from_u32(row.state).ok_or_else(|| {
        OpError::new(
            ResultReason::GeneralFailure,
            "Stored object has an unknown state",
        )
    })?;
    let to = lifecycle::next(from, event)?;
    row.state = to as u32;
    let attrs = &mut row.attributes;
    attributes::set(attrs, "State", Value::Enumeration(to as u32));
    match event {
        Event::Activate => attributes::set(attrs, "Activation Date", Value::DateTime(now)),
        Event::Reactivate => {
            attributes::remove(attrs, "Deactivation Date");
            attributes::remove(attrs, "Revocation Reason");
        }
        Event::Deactivate => attributes::set(attrs, "Deactivation Date", Value::DateTime(now)),
        Event::Compromise => {
            attributes::set(attrs, "Compromise Date", Value::DateTime(now));
            attributes::set(
                attrs,
                "Compromise Occurrence Date",
                Value::DateTime(occurrence.unwrap_or(now)),
            );
        }
        Event::Destroy => {
            attributes::set(attrs, "Destroy Date", Value::DateTime(now));
            row.sealed = None;
        }
    }
    if let Some(reason) = reason {
        let mut items = vec![Item::enumeration(tag::REVOCATION_REASON_CODE, reason.code)];
        if let Some(m) = reason.message {
            items.push(Item::text(tag::REVOCATION_MESSAGE, m));
        }
        attributes::set(attrs, "Revocation Reason", Value::Structure(items));
    }
    Ok(to)
}

fn link(link_type: tresor_kmip::spec::LinkType, uid: &str) -> Attribute {
    Attribute::new(
        "Link",
        Value::Structure(vec![
            Item::enumeration(tag::LINK_TYPE, link_type as u32),
            Item::text(tag::LINKED_OBJECT_IDENTIFIER, uid),
        ]),
    )
}

fn denied(uid: &str) -> OpError {
    OpError::new(
        ResultReason::PermissionDenied,
        format!("Object {uid} belongs to another client; its owner or the key server administrator can grant access"),
    )
}

fn not_found(uid: &str) -> OpError {
    OpError::new(
        ResultReason::ItemNotFound,
        format!("No object with Unique Identifier {uid}"),
    )
}

/// The version to answer in: the client's own if the server speaks it, else the closest one.
pub fn negotiate(requested: ProtocolVersion) -> ProtocolVersion {
    if SUPPORTED_VERSIONS.contains(&requested) {
        requested
    } else if requested.major > 1 || (requested.major == 1 && requested.minor > 4) {
        ProtocolVersion::V1_4
    } else {
        ProtocolVersion::V1_0
    }
}

/// The protocol version of a message that is TTLV but not a valid request.
fn request_version(item: &Item) -> Option<ProtocolVersion> {
    let pv = item
        .child(tag::REQUEST_HEADER)?
        .child(tag::PROTOCOL_VERSION)?;
    match (
        &pv.child(tag::PROTOCOL_VERSION_MAJOR)?.value,
        &pv.child(tag::PROTOCOL_VERSION_MINOR)?.value,
    ) {
        (Value::Integer(major), Value::Integer(minor)) => {
            Some(ProtocolVersion::new(*major, *minor))
        }
        _ => None,
    }
}

fn produced_uid(payload: &ResponsePayload) -> Option<String> {
    match payload {
        ResponsePayload::Create { uid, .. }
        | ResponsePayload::Register { uid, .. }
        | ResponsePayload::ReKey { uid, .. }
        | ResponsePayload::Get { uid, .. }
        | ResponsePayload::GetAttributes { uid, .. }
        | ResponsePayload::GetAttributeList { uid, .. }
        | ResponsePayload::Activate { uid }
        | ResponsePayload::Revoke { uid }
        | ResponsePayload::AddAttribute { uid, .. }
        | ResponsePayload::ModifyAttribute { uid, .. }
        | ResponsePayload::DeleteAttribute { uid, .. } => Some(uid.clone()),
        ResponsePayload::Locate { uids, .. } => uids.first().cloned(),
        _ => None,
    }
}

/// Numbers instances of multi-instance attributes: index 0 is left out, as KMIP 1.x clients expect.
fn with_indexes(attrs: &mut [Attribute]) {
    let mut seen: Vec<(String, i32)> = Vec::new();
    for a in attrs.iter_mut() {
        let n = match seen.iter_mut().find(|(name, _)| *name == a.name) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                seen.push((a.name.clone(), 0));
                0
            }
        };
        a.index = (n > 0).then_some(n);
    }
}

/// Whether an object's attributes match every attribute of a Locate request. Two instances of one
/// date attribute give a range.
fn matches_all(attrs: &[Attribute], wanted: &[Attribute]) -> bool {
    let mut i = 0;
    while i < wanted.len() {
        let w = &wanted[i];
        if let Value::DateTime(lo) = w.value {
            if let Some(Attribute {
                value: Value::DateTime(hi),
                name,
                ..
            }) = wanted.get(i + 1)
            {
                if *name == w.name {
                    let ok = attributes::all(attrs, &w.name)
                        .any(|a| matches!(a.value, Value::DateTime(t) if t >= lo && t <= *hi));
                    if !ok {
                        return false;
                    }
                    i += 2;
                    continue;
                }
            }
        }
        if w.name == "Cryptographic Usage Mask" {
            // A mask matches objects that allow at least the bits asked for.
            let ok = matches!((attributes::first(attrs, &w.name), &w.value), (Some(Value::Integer(have)), Value::Integer(want)) if have & want == *want);
            if !ok {
                return false;
            }
        } else if !attributes::all(attrs, &w.name).any(|a| a.value == w.value) {
            return false;
        }
        i += 1;
    }
    true
}

fn convert_format(object: Item, format: u32) -> Result<Item, OpError> {
    let current = object
        .child(tag::KEY_BLOCK)
        .and_then(|b| b.child(tag::KEY_FORMAT_TYPE))
        .and_then(|f| match f.value {
            Value::Enumeration(v) => Some(v),
            _ => None,
        });
    match current {
        Some(c) if c == format => Ok(object),
        None => Ok(object),
        Some(c)
            if c == KeyFormatType::Raw as u32
                && format == KeyFormatType::TransparentSymmetricKey as u32 =>
        {
            // Raw key material becomes a Transparent Symmetric Key structure.
            let mut object = object;
            if let Value::Structure(items) = &mut object.value {
                for block in items.iter_mut().filter(|i| i.tag == tag::KEY_BLOCK) {
                    if let Value::Structure(fields) = &mut block.value {
                        for f in fields.iter_mut() {
                            if f.tag == tag::KEY_FORMAT_TYPE {
                                f.value = Value::Enumeration(format);
                            }
                            if f.tag == tag::KEY_VALUE {
                                if let Value::Structure(kv) = &mut f.value {
                                    for m in kv.iter_mut().filter(|m| m.tag == tag::KEY_MATERIAL) {
                                        let raw = std::mem::replace(
                                            &mut m.value,
                                            Value::Structure(Vec::new()),
                                        );
                                        m.value = Value::Structure(vec![Item::new(tag::KEY, raw)]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            Ok(object)
        }
        Some(_) => Err(OpError::new(
            ResultReason::KeyFormatTypeNotSupported,
            "The key cannot be returned in that Key Format Type",
        )),
    }
}

/// The number of key bytes for an algorithm and length in bits, if the server makes such keys.
fn key_length(algorithm: u32, bits: i32) -> Result<usize, OpError> {
    use CryptographicAlgorithm as A;
    let algo = CryptographicAlgorithm::from_u32(algorithm);
    let ok = match algo {
        Some(A::Aes) => matches!(bits, 128 | 192 | 256),
        Some(A::TripleDes) => matches!(bits, 112 | 168),
        Some(A::HmacSha1 | A::HmacSha224 | A::HmacSha256 | A::HmacSha384 | A::HmacSha512) => (64..=4096).contains(&bits) && bits % 8 == 0,
        _ => {
            return Err(OpError::new(
                ResultReason::InvalidField,
                "The key server creates AES, 3DES and HMAC keys; register keys of other algorithms with Register",
            ))
        }
    };
    if !ok {
        let name = algo.map(|a| a.spec_name()).unwrap_or("?");
        return Err(OpError::new(
            ResultReason::InvalidField,
            format!("A {name} key cannot be {bits} bits long"),
        ));
    }
    Ok(match algo {
        // 3DES keys carry a parity bit per byte: 112 bits in 16 bytes, 168 in 24.
        Some(A::TripleDes) => bits as usize / 7,
        _ => bits as usize / 8,
    })
}

/// Sets the odd parity bit of every DES key byte.
fn set_des_parity(key: &mut [u8]) {
    for b in key.iter_mut() {
        let ones = (*b & 0xFE).count_ones();
        *b = (*b & 0xFE) | u8::from(ones % 2 == 0);
    }
}

/// A new unique identifier: a random UUID.
fn new_uid() -> Result<String, OpError> {
    let b = random_bytes(16)?;
    let mut b: [u8; 16] = b[..]
        .try_into()
        .map_err(|_| OpError::new(ResultReason::GeneralFailure, "random identifier"))?;
    b[6] = (b[6] & 0x0F) | 0x40;
    b[8] = (b[8] & 0x3F) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}
