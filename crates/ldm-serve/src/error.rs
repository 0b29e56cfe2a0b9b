//! One error type for every route, answered in the shape of the API the route belongs to: the
//! OpenAI error object, the AUTOMATIC1111 API's exception body, or the native `{"error": ...}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Which API's error shape a route answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    OpenAi,
    Automatic1111,
    Native,
}

impl Style {
    /// The style of the API a request path belongs to.
    pub fn of_path(path: &str) -> Style {
        if path.starts_with("/sdapi/") {
            Style::Automatic1111
        } else if path.starts_with("/v1/images") || path.starts_with("/v1/models") {
            Style::OpenAi
        } else {
            Style::Native
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault, where one is.
    pub param: Option<String>,
    /// Seconds a client should wait before retrying (queue full).
    pub retry_after: Option<u64>,
    pub style: Style,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            retry_after: None,
            style: Style::Native,
        }
    }

    /// A request the server refuses as it is (400).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A refusal naming the field at fault.
    pub fn field(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.into()),
            ..Self::invalid(message)
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn styled(mut self, style: Style) -> Self {
        self.style = style;
        self
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.style {
            Style::OpenAi => json!({"error": {
                "message": self.message,
                "type": self.kind(),
                "param": self.param,
                "code": null,
            }}),
            // The web UI's API answers exceptions as {error, detail, body, errors}.
            Style::Automatic1111 => json!({
                "error": self.kind(),
                "detail": self.message,
                "body": "",
                "errors": self.message,
            }),
            Style::Native => json!({"error": {"message": self.message, "param": self.param}}),
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&seconds.to_string()).expect("digits"),
            );
        }
        response
    }
}

/// A JSON body as `T`, or the error that names what is wrong with it.
pub fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, ApiError> {
    parse_json(&body_bytes(body)?)
}

/// The body, or the error that kept it from being read (413 when over the limit).
pub fn body_bytes(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::body::Bytes, ApiError> {
    body.map_err(|e| ApiError::new(e.status(), e.body_text()))
}

pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("the JSON body is malformed: {e}")))
}
