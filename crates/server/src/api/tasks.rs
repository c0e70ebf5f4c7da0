//! `/api/v1/tasks`: long work the server carries out after it answered, with its progress;
//! cancelling one.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use tresor_api::requests::TaskQuery;
use tresor_api::views::Task;
use tresor_core::access::Privilege;

use super::{authorize, ApiError, ApiPath, ApiQuery, AppState};

/// `GET /api/v1/tasks`: the newest tasks (`?running=true`: those not ended; `?limit=N`).
pub(super) async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<TaskQuery>,
) -> Result<Json<Vec<Task>>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Listing tasks")?;
    let limit = q.limit.unwrap_or(100);
    Ok(Json(
        s.task_service().list(limit, q.running.unwrap_or(false))?,
    ))
}

/// `GET /api/v1/tasks/{id}`: one task, with its progress now.
pub(super) async fn show(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Task>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Reading a task")?;
    Ok(Json(s.task_service().show(&id)?))
}

/// `POST /api/v1/tasks/{id}/cancel`: the privilege starting the task needs (the service
/// decides it from the task's kind).
pub(super) async fn cancel(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Task>, ApiError> {
    let caller = super::permit(&s, &headers, Privilege::SystemView, "Cancelling a task")?;
    Ok(Json(s.task_service().cancel(&caller, &id).await?))
}
