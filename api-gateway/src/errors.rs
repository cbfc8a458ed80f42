//! The one place where failures become HTTP answers, in the contract's shape
//! `{"code", "error", "message"}`; internal causes never reach clients.
//!
//! [`ApiError`] decides, in adjacent exhaustive matches, the status, the
//! public message and whether a failure is logged at error. Filters reject
//! with it (a typed rejection), handlers return it, and [`recover`] turns
//! warp's own rejections into it.

use std::borrow::Cow;
use std::convert::Infallible;

use serde::Serialize;
use thiserror::Error;
use warp::http::header::{ALLOW, CONNECTION};
use warp::http::{HeaderValue, Method, StatusCode};
use warp::{Rejection, Reply};

use crate::store::StoreError;

/// Everything a request can fail with.
#[derive(Debug, Error)]
pub enum ApiError {
    /// An input is not what the contract allows; the message names it.
    #[error("{field}: {problem}")]
    InvalidField {
        /// The input at fault: `addon_id`, `limit`, `items[3].sha256` …
        field: Cow<'static, str>,
        /// What is wrong with it, for a person.
        problem: Cow<'static, str>,
    },
    /// Nothing there: no route, no record, no receipt; says which.
    #[error("{0}")]
    NotFound(&'static str),
    /// The route exists, not with this method; the answer's `Allow` names
    /// the methods it takes (RFC 9110 §15.5.6: a 405 must), when known.
    #[error("method not allowed on this resource")]
    MethodNotAllowed(&'static [Method]),
    /// The body is over the route's limit.
    #[error("request body too large")]
    PayloadTooLarge,
    /// The body did not arrive within `ADDONREG_HTTP_BODY_READ_TIMEOUT_MS`.
    #[error("request body not received in time")]
    BodyTimeout,
    /// Every replica failed or timed out.
    #[error("no database replica answered")]
    Unavailable,
    /// No replica that answered had replayed what the read needs, and the
    /// gateway won't answer an old value.
    #[error("no database replica is fresh enough")]
    Behind,
    /// A bug or corrupt data; the cause is logged, never answered.
    #[error("internal error: {0}")]
    Internal(String),
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    /// An invalid input named `field`.
    pub fn invalid(
        field: impl Into<Cow<'static, str>>,
        problem: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::InvalidField {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidField { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unavailable | Self::Behind => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client is told.
    pub fn public_message(&self) -> Cow<'_, str> {
        match self {
            Self::InvalidField { .. }
            | Self::NotFound(_)
            | Self::MethodNotAllowed(_)
            | Self::PayloadTooLarge
            | Self::BodyTimeout
            | Self::Unavailable
            | Self::Behind => self.to_string().into(),
            Self::Internal(_) => "internal error".into(),
        }
    }

    /// Whether an operator must hear of it: the service failed, not the client.
    pub fn logs_at_error(&self) -> bool {
        match self {
            Self::InvalidField { .. }
            | Self::NotFound(_)
            | Self::MethodNotAllowed(_)
            | Self::PayloadTooLarge
            | Self::BodyTimeout => false,
            Self::Unavailable | Self::Behind | Self::Internal(_) => true,
        }
    }

    /// The JSON error answer (logging the cause when it must).
    pub fn response(&self) -> warp::reply::Response {
        if self.logs_at_error() {
            tracing::error!(type = "request.error", code = self.status().as_u16(), error = %self, "request failed");
        }
        let mut response = reply(self.status(), &self.public_message());
        if let Self::BodyTimeout = self {
            // The rest of the body may still trickle in: hang up rather than
            // keep the connection to read it.
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if let Self::MethodNotAllowed(methods) = self
            && !methods.is_empty()
        {
            let allow: Vec<&str> = methods.iter().map(Method::as_str).collect();
            // Method names are tokens: always a valid header value.
            if let Ok(value) = HeaderValue::from_str(&allow.join(", ")) {
                response.headers_mut().insert(ALLOW, value);
            }
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable => Self::Unavailable,
            StoreError::Behind(_) => Self::Behind,
            StoreError::CorruptRow(cause) => Self::Internal(cause),
        }
    }
}

impl Reply for ApiError {
    fn into_response(self) -> warp::reply::Response {
        self.response()
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: u16,
    error: &'a str,
    message: &'a str,
}

/// A JSON error answer.
pub fn reply(status: StatusCode, message: &str) -> warp::reply::Response {
    let body = ErrorBody {
        code: status.as_u16(),
        error: status.canonical_reason().unwrap_or("Error"),
        message,
    };
    // Strings only: serialising can't fail.
    crate::routes::json_bytes(status, serde_json::to_vec(&body).unwrap_or_default())
}

/// Turns rejections into the contract's error shape. An [`ApiError`] wins:
/// it comes from a route whose path and method matched, while the other
/// routes only said "not me".
pub async fn recover(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    if let Some(e) = rejection.find::<ApiError>() {
        return Ok(e.response());
    }
    // Every route names its methods (routes::methods); warp's own 405 can't.
    let error = if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed(&[])
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::PayloadTooLarge
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::invalid("query", "must be a URL-encoded query string")
    } else if let Some(header) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::invalid(header.name().to_string(), "invalid header value")
    } else if rejection.is_not_found() {
        ApiError::NotFound("no such resource")
    } else {
        ApiError::Internal(format!("unhandled rejection: {rejection:?}"))
    };
    Ok(error.response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_causes_stay_inside() {
        let e = ApiError::Internal("SELECT … FROM records on 10.0.0.7: boom".into());
        assert_eq!(e.status(), 500);
        assert_eq!(e.public_message(), "internal error");
        assert!(e.logs_at_error());
        let e = ApiError::from(StoreError::Unavailable);
        assert_eq!(e.status(), 503);
        assert_eq!(e.public_message(), "no database replica answered");
    }

    #[test]
    fn a_405_names_the_allowed_methods() {
        let e = ApiError::MethodNotAllowed(&[Method::GET, Method::HEAD]);
        let response = e.response();
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()[ALLOW], "GET, HEAD");
    }

    #[test]
    fn invalid_fields_are_named() {
        let e = ApiError::invalid("items[3].sha256", "must be 64 hex digits");
        assert_eq!(e.status(), 400);
        assert_eq!(e.public_message(), "items[3].sha256: must be 64 hex digits");
        assert!(!e.logs_at_error());
    }
}
