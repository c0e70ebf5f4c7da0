//! `/api/v1/alarms`: the raised alarms, and acknowledging one.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use tresor_api::views::{Alarm, AlarmAcknowledged};
use tresor_core::access::Privilege;

use super::{authorize, ApiError, ApiPath, AppState};

/// `GET /api/v1/alarms`.
pub(super) async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<Alarm>>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Listing alarms")?;
    Ok(Json(s.events().alarms()?))
}

/// `POST /api/v1/alarms/{id}/ack`.
pub(super) async fn acknowledge(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<AlarmAcknowledged>, ApiError> {
    let user = authorize(
        &s,
        &headers,
        Privilege::AlarmAcknowledge,
        "Acknowledging an alarm",
    )?;
    s.events().acknowledge(id, &user)?;
    Ok(Json(AlarmAcknowledged {
        alarm: id,
        acknowledged_by: user,
    }))
}
