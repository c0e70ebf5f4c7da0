//! `/api/v1/vms`: the VM list (streamed), one VM, its diagnosis, and what is done to VMs.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use tresor_api::requests::{
    AddDisk, AdoptVm, ConsoleInput, ConsoleQuery, CreateVm, CryptoRequest, FileQuery, LangQuery,
    RegisterRequest, UnlockMany, VmQuery,
};
use tresor_api::views::{
    ConsoleOutput, Diagnosis, DiscoveredVm, Registered, UnlockStarted, Vm, VmDone, VmPower,
    VmUnlock,
};
use tresor_api::ErrorCode;
use tresor_core::access::Privilege;

use super::{authorize, caller, permit, ApiError, ApiJson, ApiPath, ApiQuery, AppState};
use crate::service::vms::{vm_json_text, Uploaded, VmAction, VmFilter};
use crate::service::{parse_lang, ServiceError};

/// VMs per piece of the streamed VM list (about 32 KiB).
const LIST_PIECE: usize = 512;

/// `GET /api/v1/vms`: the VM list, answered from the store's memory with each VM's JSON rendered
/// once per change (the list is asked for often, by people and scripts, and can hold tens of
/// thousands of VMs). Filters: `locked`, `host`, `provider`; pages: `limit` and `offset`, with
/// the number of VMs that match in `X-Total-Count`. With `discovered`, the VMs hosts report that
/// the registry does not admit.
pub(super) async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<VmQuery>,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Listing VMs")?;
    if q.discovered.unwrap_or(false) {
        let vms: Vec<DiscoveredVm> = s.vms().discovered(q.host.as_deref());
        return Ok(Json(vms).into_response());
    }
    let filter = VmFilter {
        locked: q.locked.unwrap_or(false),
        host: q.host,
        provider: q.provider,
        offset: q.offset.unwrap_or(0),
        limit: q.limit,
    };
    let (total, page) = s.vms().list(&filter);
    // Streamed in pieces from the snapshot taken above: the whole list of tens of thousands of
    // VMs is megabytes, and its first bytes leave before the last are copied. Each piece starts
    // with `[` (the first) or `,`, and the last ends with `]`.
    let length = 1
        + page
            .iter()
            .map(|v| v.rendered(vm_json_text).len() + 1)
            .sum::<usize>()
        + usize::from(page.is_empty());
    let pieces = page.len().div_ceil(LIST_PIECE).max(1);
    let body = futures_util::stream::iter(0..pieces).map(move |i| {
        let mut piece = Vec::with_capacity(64 * LIST_PIECE);
        let vms = page.iter().skip(i * LIST_PIECE).take(LIST_PIECE);
        for (j, v) in vms.enumerate() {
            piece.push(if i == 0 && j == 0 { b'[' } else { b',' });
            piece.extend_from_slice(v.rendered(vm_json_text).as_bytes());
        }
        if page.is_empty() {
            piece.push(b'[');
        }
        if i + 1 == pieces {
            piece.push(b']');
        }
        Ok::<_, std::convert::Infallible>(piece)
    });
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/json".to_owned(),
            ),
            (axum::http::header::CONTENT_LENGTH, length.to_string()),
            (
                axum::http::HeaderName::from_static("x-total-count"),
                total.to_string(),
            ),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// `GET /api/v1/vms/{name}`.
pub(super) async fn show(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Vm>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Reading a VM")?;
    Ok(Json(s.vms().show(&name)?))
}

/// `GET /api/v1/vms/{name}/diagnose`: which case applies, the evidence, and the next step.
pub(super) async fn diagnose(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<LangQuery>,
) -> Result<Json<Diagnosis>, ApiError> {
    let caller = permit(&s, &headers, Privilege::SystemView, "Diagnosing a VM")?;
    let lang = parse_lang(q.lang.as_deref())?;
    Ok(Json(s.vms().diagnose(&caller, &name, lang).await?))
}

/// `POST /api/v1/vms`: a new VM (an encrypted one needs `Cryptographer.EncryptNew`).
pub(super) async fn create(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateVm>,
) -> Result<Json<Vm>, ApiError> {
    let privilege = if req.encrypt {
        Privilege::CryptoEncryptNew
    } else {
        Privilege::VmCreate
    };
    let caller = permit(
        &s,
        &headers,
        privilege,
        &format!("Creating VM {}", req.name),
    )?;
    Ok(Json(s.vms().create(&caller, &req).await?))
}

/// `POST /api/v1/vms/register`: a VM from its folder on a host (answered when done), or every
/// VM folder of the host (`all`: a task, answered 202 when started).
pub(super) async fn register(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<Response, ApiError> {
    let caller = permit(&s, &headers, Privilege::VmRegister, "Registering VMs")?;
    if req.all && req.path.is_none() {
        let task = s.vms().register_all(&caller, req)?;
        return Ok((axum::http::StatusCode::ACCEPTED, Json(task)).into_response());
    }
    let done: Registered = s.vms().register_folders(&caller, &req, None).await?;
    Ok(Json(done).into_response())
}

/// `POST /api/v1/vms/unlock`: many VMs (named ones, every locked one, a host's or a
/// provider's); the answer names the VMs asked for, and the client follows their state.
pub(super) async fn unlock_many(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Option<ApiJson<UnlockMany>>,
) -> Result<Json<UnlockStarted>, ApiError> {
    let req = body.map(|b| b.0).unwrap_or_default();
    let selectors = usize::from(!req.names.is_empty())
        + usize::from(req.all)
        + usize::from(req.host.is_some())
        + usize::from(req.provider.is_some());
    if selectors != 1 {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "Say which VMs to unlock: names, all, a host or a provider (exactly one of them)",
        ));
    }
    let what = if req.all {
        "Unlocking every locked VM".to_owned()
    } else if let Some(h) = &req.host {
        format!("Unlocking the VMs of host {h}")
    } else if let Some(p) = &req.provider {
        format!("Unlocking the VMs with keys of provider {p}")
    } else {
        format!("Unlocking VM {}", req.names.join(", "))
    };
    let caller = permit(&s, &headers, Privilege::CryptoRegisterVm, &what)?;
    Ok(Json(s.vms().unlock_many(&caller, &req).await?))
}

/// `POST /api/v1/vms/adopt`: a libvirt domain becomes a Tresor VM.
pub(super) async fn adopt(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<AdoptVm>,
) -> Result<Json<Vm>, ApiError> {
    // Encrypting as well needs Cryptographer.Encrypt: the service decides.
    let caller = caller(&s, &headers)?;
    Ok(Json(s.vms().adopt(&caller, &req).await?))
}

/// `POST /api/v1/vms/{name}/add-disk`.
pub(super) async fn add_disk(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<AddDisk>,
) -> Result<Json<Vm>, ApiError> {
    // The privilege depends on whether the VM is encrypted: the service decides it.
    let caller = caller(&s, &headers)?;
    Ok(Json(s.vms().add_disk(&caller, &name, &req).await?))
}

/// `GET /api/v1/vms/{name}/console`: the serial console's log from `?offset=N` on.
pub(super) async fn console_read(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ConsoleQuery>,
) -> Result<Json<ConsoleOutput>, ApiError> {
    // The privileges depend on whether the VM is encrypted: the service decides them.
    let caller = caller(&s, &headers)?;
    Ok(Json(
        s.vms()
            .console_read(&caller, &name, q.offset.unwrap_or(0))
            .await?,
    ))
}

/// `POST /api/v1/vms/{name}/console`: keys typed on the serial console.
pub(super) async fn console_write(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ConsoleInput>,
) -> Result<Json<VmDone>, ApiError> {
    let caller = caller(&s, &headers)?;
    Ok(Json(
        s.vms().console_write(&caller, &name, &req.input).await?,
    ))
}

/// `PUT /api/v1/vms/{name}/files/{kind}`: the body, as it arrives, to the VM's host; the last
/// piece of an image starts its import as a task (202).
pub(super) async fn upload(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath((name, kind)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<FileQuery>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    use futures_util::StreamExt;
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    // The privilege depends on the kind and on whether the VM is encrypted: the service decides
    // it, before it reads the body.
    let answer = match caller(&s, &headers) {
        Ok(caller) => {
            let piece = crate::service::vms::FilePiece {
                kind,
                offset: q.offset.unwrap_or(0),
                more: q.more.unwrap_or(false),
                announced,
            };
            s.vms().upload(&caller, &name, &piece, &mut stream).await
        }
        Err(e) => Err(e),
    };
    if answer.is_err() {
        // A client still sending its piece would see a broken connection instead of the answer:
        // the rest of the piece (at most MAX_FILE_PIECE bytes) is read and dropped first.
        let mut left = tresor_api::requests::MAX_FILE_PIECE;
        while let Some(Ok(bytes)) = stream.next().await {
            left = left.saturating_sub(bytes.len() as u64);
            if left == 0 {
                break;
            }
        }
    }
    Ok(match answer? {
        Uploaded::Vm(vm) => Json(vm).into_response(),
        // The last piece of an image: its import goes on as a task.
        Uploaded::Task(task) => (axum::http::StatusCode::ACCEPTED, Json(task)).into_response(),
    })
}

/// `POST /api/v1/vms/{name}/{action}`: power on or off, unlock, unregister, reload, delete,
/// encrypt, decrypt, rekey (`encrypt` and `rekey` take a [`CryptoRequest`]; those three start a
/// task and answer it, 202).
pub(super) async fn action(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath((name, op)): ApiPath<(String, String)>,
    body: Option<ApiJson<CryptoRequest>>,
) -> Result<Response, ApiError> {
    let Some(action) = VmAction::parse(&op) else {
        return Err(ServiceError::new(
            ErrorCode::NotFound,
            format!("No VM operation {op}"),
        ));
    };
    let caller = permit(&s, &headers, action.privilege(), &action.describe(&name))?;
    let vms = s.vms();
    Ok(match action {
        VmAction::PowerOn | VmAction::PowerOff => {
            let power_state = vms
                .power(&caller, &name, action == VmAction::PowerOn)
                .await?;
            Json(VmPower {
                vm: name,
                power_state,
            })
            .into_response()
        }
        VmAction::Unlock => {
            let requested = vms.unlock(&caller, &name).await?;
            let unlock = if requested {
                "requested"
            } else {
                "nothing to do"
            };
            Json(VmUnlock {
                vm: name,
                unlock: unlock.into(),
            })
            .into_response()
        }
        _ => {
            let body = body.map(|b| b.0);
            match vms.operate(&caller, &name, action, body.as_ref()).await? {
                // Started: the task says how it goes on.
                Some(task) => (axum::http::StatusCode::ACCEPTED, Json(task)).into_response(),
                None => Json(VmDone { vm: name, done: op }).into_response(),
            }
        }
    })
}
