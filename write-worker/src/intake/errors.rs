//! The one place where a post's failures become HTTP answers, in the
//! contract's shape `{"code", "error", "message"}`, and are counted.
//! Internal causes (broker errors) are logged, never answered; a token is
//! never part of any of them.

use bytes::Bytes;
use serde::Serialize;
use thiserror::Error;
use warp::http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

use shared::write::RejectReason;

use super::channels::PublishError;
use super::metrics::Metrics;

/// Everything a post can fail with.
#[derive(Debug, Error)]
pub enum IntakeError {
    /// No bearer token, or not an accepted one: the answer does not say which.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The body is not declared as JSON.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// The body is over the contract's 4 MiB.
    #[error("body exceeds {} bytes", shared::write::MAX_BODY_BYTES)]
    TooLarge,
    /// The body could not be read to its end.
    #[error("body could not be read to its end")]
    BodyUnreadable,
    /// The worker would dead-letter this write: the message is its
    /// `x-addonreg-reason`, code first.
    #[error("{code}: {0}", code = .0.code())]
    Invalid(RejectReason),
    /// The writes queue holds more than `ADDONREG_INTAKE_MAX_BACKLOG`.
    #[error("the writes queue is over its backlog bound; retry later")]
    Backlog,
    /// The broker did not take the write.
    #[error("the broker did not confirm the write; retry later")]
    Unconfirmed(PublishError),
    /// No such route.
    #[error("no such resource")]
    NotFound,
    /// The route takes another method.
    #[error("method not allowed on this resource")]
    MethodNotAllowed(&'static str),
}

/// Seconds a client waits before retrying a 503: a backlog drains and a
/// broker comes back in seconds, and AMO retries anyway.
const RETRY_AFTER_SECS: u32 = 1;

impl IntakeError {
    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge | Self::Invalid(RejectReason::BodyTooLarge(_)) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::BodyUnreadable | Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Backlog | Self::Unconfirmed(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// Counts it in the metric of its kind.
    fn count(&self, metrics: &Metrics) {
        match self {
            Self::Unauthorized => metrics.unauthorized.inc(),
            Self::UnsupportedMediaType => {
                metrics.rejected.with_label_values(&["content_type"]).inc()
            }
            Self::TooLarge => metrics
                .rejected
                .with_label_values(&["body_too_large"])
                .inc(),
            Self::BodyUnreadable => metrics
                .rejected
                .with_label_values(&["body_unreadable"])
                .inc(),
            Self::Invalid(reason) => metrics.rejected.with_label_values(&[reason.code()]).inc(),
            Self::Backlog => metrics.unavailable.with_label_values(&["backlog"]).inc(),
            Self::Unconfirmed(e) => metrics.unavailable.with_label_values(&[e.cause()]).inc(),
            Self::NotFound | Self::MethodNotAllowed(_) => {}
        }
    }

    /// The JSON error answer, counted (and logged when the service, not the
    /// client, failed).
    pub fn response(&self, metrics: &Metrics) -> Response {
        self.count(metrics);
        if let Self::Unconfirmed(e) = self {
            tracing::warn!(type = "intake.unconfirmed", cause = e.cause(), error = %e, "write not confirmed");
        }
        let mut response = reply(self.status(), &self.to_string());
        let headers = response.headers_mut();
        match self {
            Self::Unauthorized => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Backlog | Self::Unconfirmed(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            Self::MethodNotAllowed(allow) => {
                headers.insert(warp::http::header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        response
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: u16,
    error: &'a str,
    message: &'a str,
}

/// A JSON error answer.
pub fn reply(status: StatusCode, message: &str) -> Response {
    let body = ErrorBody {
        code: status.as_u16(),
        error: status.canonical_reason().unwrap_or("Error"),
        message,
    };
    // Strings only: serialising can't fail.
    json_bytes(status, serde_json::to_vec(&body).unwrap_or_default())
}

/// A JSON answer with an explicit `Content-Length`.
pub fn json_bytes(status: StatusCode, bytes: impl Into<Bytes>) -> Response {
    let bytes = bytes.into();
    let length = HeaderValue::from(bytes.len());
    let mut response = Response::new(bytes.into());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, length);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_400_says_what_the_dead_letter_would() {
        let rejection = shared::write::WriteMessage::parse(b"[]").unwrap_err();
        let e = IntakeError::Invalid(rejection.reason);
        assert_eq!(e.status(), 400);
        assert_eq!(e.to_string(), "not_an_object: body is not a JSON object");
        let huge = IntakeError::Invalid(RejectReason::BodyTooLarge(5 << 20));
        assert_eq!(huge.status(), 413);
    }

    #[test]
    fn a_503_says_when_to_retry() {
        let metrics = Metrics::register(&prometheus::Registry::new());
        let response = IntakeError::Backlog.response(&metrics);
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        assert_eq!(metrics.unavailable.with_label_values(&["backlog"]).get(), 1);
        let response = IntakeError::Unauthorized.response(&metrics);
        assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
    }
}
