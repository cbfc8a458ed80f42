//! The intake's public API: `POST /v1/writes`, its OpenAPI document, and
//! the Dockerflow endpoints. A post is checked in the order that costs
//! least to refuse: method, token, content type, declared length, then the
//! body is read (at most 4 MiB), parsed by the worker's own parser, the
//! backlog consulted, and the write published; only a confirm answers 202.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde_json::json;
use warp::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::{Buf, Filter};

use shared::version::VersionInfo;
use shared::write::{MAX_BODY_BYTES, WriteMessage};

use super::auth::Tokens;
use super::backlog::Backlog;
use super::channels::Channels;
use super::errors::{IntakeError, json_bytes};
use super::metrics::Metrics;

/// The OpenAPI document of the intake, kept true by `tests/worker/intake.rs`
/// and fuzzed by `scripts/fuzz-intake`.
pub const OPENAPI: &str = include_str!("../../openapi-intake.json");

/// Longest a client may take to send its body once its head arrived, so a
/// trickled body can't hold a connection for ever.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What the handlers share.
pub struct State {
    /// The accepted tokens' digests.
    pub tokens: Tokens,
    /// Where writes are published.
    pub channels: Channels,
    /// The writes queue's backlog, as last read.
    pub backlog: Arc<Backlog>,
    /// The intake's metrics.
    pub metrics: Metrics,
    /// What `/__version__` answers.
    pub version: VersionInfo,
}

/// Every public route, with a summary of each answered request.
pub fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone {
    let writes = {
        let state = state.clone();
        warp::path!("v1" / "writes")
            .and(warp::method())
            .and(warp::header::headers_cloned())
            .and(warp::body::stream())
            .then(move |method, headers, body| {
                let state = state.clone();
                async move {
                    match post_write(&state, method, &headers, body).await {
                        Ok(response) => response,
                        Err(e) => e.response(&state.metrics),
                    }
                }
            })
    };
    let get = |path: &'static str, answer: Arc<dyn Fn() -> Response + Send + Sync>| {
        let metrics = state.metrics.clone();
        warp::path::full().and(warp::method()).and_then(
            move |full: warp::path::FullPath, method: Method| {
                let answer = answer.clone();
                let metrics = metrics.clone();
                async move {
                    if full.as_str() != path {
                        return Err(warp::reject::not_found());
                    }
                    Ok(if method == Method::GET {
                        answer()
                    } else {
                        IntakeError::MethodNotAllowed("GET").response(&metrics)
                    })
                }
            },
        )
    };
    let openapi = get(
        "/v1/openapi.json",
        Arc::new(|| json_bytes(StatusCode::OK, OPENAPI.as_bytes())),
    );
    let lbheartbeat = get(
        "/__lbheartbeat__",
        Arc::new(|| json_bytes(StatusCode::OK, "{}")),
    );
    let heartbeat = {
        let backlog = state.backlog.clone();
        get("/__heartbeat__", Arc::new(move || heartbeat(&backlog)))
    };
    let version = {
        let body = serde_json::to_vec(&state.version).unwrap_or_default();
        get(
            "/__version__",
            Arc::new(move || json_bytes(StatusCode::OK, body.clone())),
        )
    };
    let not_found = {
        let metrics = state.metrics.clone();
        warp::any().map(move || IntakeError::NotFound.response(&metrics))
    };
    let metrics = state.metrics.clone();
    writes
        .or(openapi)
        .unify()
        .or(lbheartbeat)
        .unify()
        .or(heartbeat)
        .unify()
        .or(version)
        .unify()
        .or(not_found)
        .unify()
        .with(warp::log::custom(move |info| summarise(&metrics, &info)))
}

async fn post_write<B: Buf>(
    state: &State,
    method: Method,
    headers: &HeaderMap,
    body: impl Stream<Item = Result<B, warp::Error>>,
) -> Result<Response, IntakeError> {
    if method != Method::POST {
        return Err(IntakeError::MethodNotAllowed("POST"));
    }
    let authorization = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !state.tokens.accepts(authorization) {
        return Err(IntakeError::Unauthorized);
    }
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(IntakeError::UnsupportedMediaType);
    }
    // Only a length far over the limit is refused unread: answering 413
    // before reading a body the client is still sending breaks its pipe
    // (it may never see the answer), while reading on costs at most 4 MiB.
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > 2 * MAX_BODY_BYTES as u64) {
        return Err(IntakeError::TooLarge);
    }
    let body = tokio::time::timeout(BODY_READ_TIMEOUT, read_within(body, MAX_BODY_BYTES))
        .await
        .map_err(|_| IntakeError::BodyUnreadable)??;
    // The worker's own parser: a write refused here is one it would dead-letter.
    let write =
        WriteMessage::parse(&body).map_err(|rejection| IntakeError::Invalid(rejection.reason))?;
    if state.backlog.over() {
        return Err(IntakeError::Backlog);
    }
    state
        .channels
        .publish(&write.write_id, &body)
        .await
        .map_err(IntakeError::Unconfirmed)?;
    state.metrics.accepted.inc();
    let location = format!("/v1/writes/{}", write.write_id.as_str());
    let mut response = json_bytes(
        StatusCode::ACCEPTED,
        serde_json::to_vec(&json!({"write_id": write.write_id.as_str()})).unwrap_or_default(),
    );
    // A write_id is [A-Za-z0-9._:-]: always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, value);
    }
    Ok(response)
}

/// The body, refused as soon as it exceeds `max` bytes (chunked bodies
/// declare no length).
async fn read_within<B: Buf>(
    body: impl Stream<Item = Result<B, warp::Error>>,
    max: usize,
) -> Result<Vec<u8>, IntakeError> {
    let mut body = std::pin::pin!(body);
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|_| IntakeError::BodyUnreadable)?;
        if bytes.len() + chunk.remaining() > max {
            return Err(IntakeError::TooLarge);
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            bytes.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(bytes)
}

/// `/__heartbeat__`: the broker answered lately (a backlog read).
fn heartbeat(backlog: &Backlog) -> Response {
    let (code, body) = match backlog.ready() {
        Some(ready) => (
            StatusCode::OK,
            json!({"status": "ok", "checks": {"broker": "ok"},
                   "details": {"broker": {"status": "ok", "backlog": ready}}}),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "error", "checks": {"broker": "error"},
                   "details": {"broker": {"status": "error", "detail": "the broker did not answer lately"}}}),
        ),
    };
    json_bytes(code, serde_json::to_vec(&body).unwrap_or_default())
}

/// The route pattern of a path; `other` for paths no route serves.
fn route_of(path: &str) -> &'static str {
    match path {
        "/v1/writes" => "/v1/writes",
        "/v1/openapi.json" => "/v1/openapi.json",
        "/__lbheartbeat__" => "/__lbheartbeat__",
        "/__heartbeat__" => "/__heartbeat__",
        "/__version__" => "/__version__",
        _ => "other",
    }
}

/// Counts and times every answered request, and logs a MozLog
/// `request.summary` line (method, route pattern, status, `t` in ms) like
/// the gateway's; headers (the token) are never part of it.
fn summarise(metrics: &Metrics, info: &warp::log::Info<'_>) {
    let route = route_of(info.path());
    let status = info.status();
    let elapsed = info.elapsed();
    metrics
        .requests
        .with_label_values(&[route, status.as_str()])
        .inc();
    metrics
        .request_duration
        .with_label_values(&[route])
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        type = "request.summary",
        method = info.method().as_str(),
        path = route,
        status = status.as_u16(),
        t = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_names_every_route_and_answer() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for path in paths.keys() {
            assert_eq!(route_of(path), path.as_str(), "a documented path is served");
        }
        let answers = doc["paths"]["/v1/writes"]["post"]["responses"]
            .as_object()
            .unwrap();
        let codes: Vec<&str> = answers.keys().map(String::as_str).collect();
        assert_eq!(codes, ["202", "400", "401", "405", "413", "415", "503"]);
    }
}
