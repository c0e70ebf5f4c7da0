//! The key server administrator's commands: list, show, activate, deactivate, destroy and grant.
//! They work on the database directly (the key server may keep running) and are audited.
//!
//! KMIP gives clients no way back from Deactivated. The administrator can reactivate a
//! Deactivated key, as commercial key servers allow; Destroyed and Compromised keys stay as they
//! are.

use tresor_kmip::message::RevocationReason;
use tresor_kmip::spec::{ObjectType, RevocationReasonCode, State};
use tresor_kmip::Value;

use crate::engine::{apply, system_now, OpError};
use crate::lifecycle::Event;
use crate::store::{self, AuditRecord, ObjectFilter, ObjectRow, Store, StoreError};

/// Why an administrative command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("No key with id {0} on this key server; list the keys with: tresor kms key list")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<OpError> for AdminError {
    fn from(e: OpError) -> AdminError {
        AdminError::Refused(e.message)
    }
}

/// One object, as the administrator sees it (never its key material).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeySummary {
    pub uid: String,
    pub object_type: String,
    pub state: String,
    pub owner: String,
    pub names: Vec<String>,
    pub algorithm: Option<String>,
    pub length: Option<i32>,
    pub created: i64,
    pub updated: i64,
}

/// Everything about one object.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyDetails {
    pub summary: KeySummary,
    pub attributes: Vec<(String, String)>,
    pub grants: Vec<String>,
    pub audit: Vec<AuditRecord>,
}

fn summary(row: &ObjectRow) -> KeySummary {
    let names = row
        .attributes
        .iter()
        .filter(|a| a.name == "Name")
        .filter_map(|a| match &a.value {
            Value::Structure(items) => items.first().and_then(|i| match &i.value {
                Value::TextString(t) => Some(t.to_string()),
                _ => None,
            }),
            _ => None,
        })
        .collect();
    let algorithm = match crate::attributes::first(&row.attributes, "Cryptographic Algorithm") {
        Some(Value::Enumeration(a)) => tresor_kmip::spec::CryptographicAlgorithm::from_u32(*a)
            .map(|a| a.spec_name().to_owned()),
        _ => None,
    };
    let length = match crate::attributes::first(&row.attributes, "Cryptographic Length") {
        Some(Value::Integer(l)) => Some(*l),
        _ => None,
    };
    KeySummary {
        uid: row.uid.clone(),
        object_type: ObjectType::from_u32(row.object_type)
            .map(|t| t.spec_name().to_owned())
            .unwrap_or_else(|| format!("0x{:08X}", row.object_type)),
        state: state_name(row.state),
        owner: row.owner.clone(),
        names,
        algorithm,
        length,
        created: row.created,
        updated: row.updated,
    }
}

fn state_name(state: u32) -> String {
    State::from_u32(state)
        .map(|s| s.spec_name().to_owned())
        .unwrap_or_else(|| format!("0x{state:08X}"))
}

/// Every object, newest first.
pub fn list(store: &Store) -> Result<Vec<KeySummary>, AdminError> {
    let rows = store.read(|conn| store::list_objects(conn, &ObjectFilter::default()))?;
    Ok(rows.iter().map(summary).collect())
}

/// One object with its attributes, grants and audit trail.
pub fn show(store: &Store, uid: &str) -> Result<KeyDetails, AdminError> {
    store.read(|conn| -> Result<KeyDetails, AdminError> {
        let row =
            store::get_object(conn, uid)?.ok_or_else(|| AdminError::NotFound(uid.to_owned()))?;
        let attributes = row
            .attributes
            .iter()
            .map(|a| (a.name.clone(), describe(&a.name, &a.value)))
            .collect();
        Ok(KeyDetails {
            summary: summary(&row),
            attributes,
            grants: store::grants_of(conn, uid)?,
            audit: store::audit_log(conn, Some(uid))?,
        })
    })
}

fn describe(name: &str, value: &Value) -> String {
    let item = tresor_kmip::Item::new(tresor_kmip::spec::tag::ATTRIBUTE_VALUE, value.clone());
    let attr = tresor_kmip::Item::structure(
        tresor_kmip::spec::tag::ATTRIBUTE,
        vec![
            tresor_kmip::Item::text(tresor_kmip::spec::tag::ATTRIBUTE_NAME, name),
            item,
        ],
    );
    let text = tresor_kmip::pretty::render(&attr);
    // Drop the "Attribute" and "AttributeName" lines; keep the value's.
    text.lines()
        .skip(2)
        .map(|l| {
            l.trim()
                .trim_start_matches("AttributeValue: ")
                .trim_start_matches("AttributeValue")
        })
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Chooses the lifecycle event for a key's state, or says why none applies.
type EventChoice = fn(State) -> Result<(Event, Option<RevocationReason>), String>;

fn change(
    store: &Store,
    uid: &str,
    actor: &str,
    action: &'static str,
    event_for: EventChoice,
) -> Result<KeySummary, AdminError> {
    let uid = uid.to_owned();
    let actor = actor.to_owned();
    store.write(move |conn| -> Result<KeySummary, AdminError> {
        let mut row =
            store::get_object(conn, &uid)?.ok_or_else(|| AdminError::NotFound(uid.clone()))?;
        let state = State::from_u32(row.state)
            .ok_or_else(|| AdminError::Refused("The key has an unknown state".into()))?;
        let (event, reason) = event_for(state).map_err(AdminError::Refused)?;
        let now = system_now();
        let from = state.spec_name();
        let to = apply(&mut row, event, now, reason, None)?;
        row.updated = now;
        crate::attributes::set(
            &mut row.attributes,
            "Last Change Date",
            Value::DateTime(now),
        );
        store::update_object(conn, &row)?;
        store::audit(
            conn,
            now,
            &actor,
            action,
            Some(&uid),
            &format!("{from} -> {}", to.spec_name()),
        )?;
        Ok(summary(&row))
    })
}

/// Makes a key usable again: Pre-Active becomes Active; a Deactivated key is reactivated.
pub fn activate(store: &Store, uid: &str, actor: &str) -> Result<KeySummary, AdminError> {
    change(store, uid, actor, "admin activate", |state| match state {
        State::PreActive => Ok((Event::Activate, None)),
        State::Deactivated => Ok((Event::Reactivate, None)),
        State::Active => Err("The key is already active".into()),
        other => Err(format!(
            "The key is {other}; a destroyed or compromised key cannot be activated again"
        )),
    })
}

/// Takes an active key out of use (its data can still be read by whoever holds it).
pub fn deactivate(store: &Store, uid: &str, actor: &str) -> Result<KeySummary, AdminError> {
    change(store, uid, actor, "admin deactivate", |state| match state {
        State::Active => Ok((
            Event::Deactivate,
            Some(RevocationReason {
                code: RevocationReasonCode::CessationOfOperation as u32,
                message: Some("deactivated by the key server administrator".into()),
            }),
        )),
        State::Deactivated => Err("The key is already deactivated".into()),
        other => Err(format!(
            "The key is {other}; only an active key can be deactivated"
        )),
    })
}

/// Destroys a key's material for good. An active key must be deactivated first.
pub fn destroy(store: &Store, uid: &str, actor: &str) -> Result<KeySummary, AdminError> {
    change(store, uid, actor, "admin destroy", |state| {
        match state {
        State::Active => Err("The key is active; deactivate it first (tresor kms key deactivate ID), then destroy it".into()),
        State::Destroyed | State::DestroyedCompromised => Err("The key is already destroyed".into()),
        _ => Ok((Event::Destroy, None)),
    }
    })
}

/// Lets another client identity use a key.
pub fn grant(store: &Store, uid: &str, identity: &str, actor: &str) -> Result<(), AdminError> {
    let (uid, identity, actor) = (uid.to_owned(), identity.to_owned(), actor.to_owned());
    store.write(move |conn| -> Result<(), AdminError> {
        store::get_object(conn, &uid)?.ok_or_else(|| AdminError::NotFound(uid.clone()))?;
        store::grant(conn, &uid, &identity)?;
        store::audit(
            conn,
            system_now(),
            &actor,
            "admin grant",
            Some(&uid),
            &identity,
        )?;
        Ok(())
    })
}
