//! The one place where failures become HTTP answers, in the contract's shape
//! `{"code", "error", "message"}`; internal causes never reach clients.

use std::convert::Infallible;

use serde::Serialize;
use warp::http::StatusCode;
use warp::{Rejection, Reply};

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
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// Turns warp's own rejections (no route, wrong method …) into the contract's
/// error shape.
pub async fn recover(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "no such resource")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this resource",
        )
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "body must be application/json",
        )
    } else if rejection
        .find::<warp::filters::body::BodyDeserializeError>()
        .is_some()
    {
        (
            StatusCode::BAD_REQUEST,
            "body is not valid JSON of the expected shape",
        )
    } else {
        tracing::error!(type = "request.error", rejection = ?rejection, "unhandled rejection");
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    };
    Ok(reply(status, message))
}
