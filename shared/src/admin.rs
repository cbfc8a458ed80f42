//! The admin listener: Prometheus metrics, never on the public port.

use std::future::Future;

use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use warp::Filter;
use warp::http::{Response, StatusCode};

/// Serves `GET /metrics` (the registry in text format) and `GET /__lbheartbeat__`
/// (for liveness probes of processes without a public port) until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let metrics = warp::path!("metrics").and(warp::get()).map(move || {
        let mut body = Vec::new();
        match TextEncoder::new().encode(&registry.gather(), &mut body) {
            Ok(()) => Response::builder()
                .header("content-type", prometheus::TEXT_FORMAT)
                .body(body),
            Err(_) => Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(Vec::new()),
        }
    });
    let lbheartbeat = warp::path!("__lbheartbeat__")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({})));
    warp::serve(metrics.or(lbheartbeat))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

/// A registry holding the process collector (RSS, open files, CPU), to which
/// each process adds its own metrics.
pub fn registry(prefix: &str) -> Registry {
    // Start-up: fails only for an invalid prefix, which is a constant.
    let registry = Registry::new_custom(Some(prefix.to_string()), None).expect("metrics prefix");
    let _ = registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ));
    let _ = registry.register(Box::new(crate::telemetry::DroppedLines::new()));
    registry
}
