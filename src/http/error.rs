//! How the admin API reports failures: an HTTP status and a JSON body
//! `{"error": "..."}`, with [`ProvisionError`] mapped to the status that
//! says whose move it is (the caller's: 4xx; the database's: 503; ours: 500).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::provision::ProvisionError;

/// A failed API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The response status.
    pub status: StatusCode,
    /// The text of the body's `error` member.
    pub message: String,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400: the request itself is wrong (bad id, body or parameter).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<ProvisionError> for ApiError {
    fn from(e: ProvisionError) -> ApiError {
        let status = match &e {
            ProvisionError::InvalidId(_) => StatusCode::BAD_REQUEST,
            ProvisionError::UnknownTenant(_) => StatusCode::NOT_FOUND,
            // Refused in the tenant's current state: being dropped, still
            // provisioning, sessions left after a drop's terminate.
            ProvisionError::Invalid(_) => StatusCode::CONFLICT,
            ProvisionError::Db { source, .. } => db_status(source),
            ProvisionError::Io { .. }
            | ProvisionError::Cluster(_)
            | ProvisionError::Migration { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// 503 when PostgreSQL could not be reached or is not accepting work now
/// (no server answer; SQLSTATE classes 08, 53, 57), else 500.
fn db_status(e: &tokio_postgres::Error) -> StatusCode {
    match e.as_db_error() {
        None => StatusCode::SERVICE_UNAVAILABLE,
        Some(db) => {
            let code = db.code().code();
            if ["08", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
            {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provision_errors_map_to_statuses() {
        let status = |e: ProvisionError| ApiError::from(e).status;
        assert_eq!(
            status(ProvisionError::UnknownTenant("x".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(ProvisionError::Invalid("being dropped".into())),
            StatusCode::CONFLICT
        );
        let bad_id = crate::tenant::TenantId::parse("Bad Id").unwrap_err();
        assert_eq!(status(bad_id.into()), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(ProvisionError::Cluster("no initdb".into())),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn body_is_json_with_the_message() {
        let response = ApiError::bad_request("no \"id\"").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
    }
}
