//! The admin listener: Prometheus metrics, never on the public port.

use std::future::Future;

use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use warp::Filter;
use warp::http::{Response, StatusCode};

/// Routes a process adds to its admin listener (the worker's Dockerflow).
pub type ExtraRoutes = warp::filters::BoxedFilter<(Box<dyn warp::Reply>,)>;

/// Serves `GET /metrics` (the registry in text format) and `GET /__lbheartbeat__`
/// (for liveness probes of processes without a public port) until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let none = warp::any()
        .and_then(|| async { Err::<Box<dyn warp::Reply>, _>(warp::reject::not_found()) })
        .boxed();
    serve_with(listener, registry, none, shutdown).await;
}

/// [`serve`], plus `extra` routes.
pub async fn serve_with(
    listener: TcpListener,
    registry: Registry,
    extra: ExtraRoutes,
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
    warp::serve(metrics.or(lbheartbeat).or(extra))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

/// [`serve_with`] on a thread and runtime of its own, so that it answers even
/// while the process's other tasks are blocked (a liveness probe then sees
/// the verdict of `extra`, not a timeout). `extra` must not use I/O of the
/// main runtime. Stops when `stop` is cancelled.
pub fn spawn_with(
    listener: TcpListener,
    registry: Registry,
    extra: ExtraRoutes,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let listener = listener.into_std()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => {
                        serve_with(listener, registry, extra, stop.cancelled_owned()).await
                    }
                    Err(e) => {
                        tracing::error!(type = "admin.failed", error = %e, "admin listener lost")
                    }
                }
            })
        })
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
