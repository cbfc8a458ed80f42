//! What every answered request leaves behind: `requests_total` and
//! `request_duration_seconds` (always), and a sampled MozLog line of type
//! `request.summary` naming the route pattern, never the raw path (which
//! holds ids).

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use shared::settings::InvalidSetting;
use warp::log::Info;

use crate::metrics::Metrics;

/// The route pattern of a request path, without allocating; `other` for
/// paths no route serves.
pub fn route_of(path: &str) -> &'static str {
    let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
    let p: [Option<&str>; 6] = std::array::from_fn(|_| parts.next());
    match p {
        [
            Some("v1"),
            Some("addons"),
            Some(_),
            Some("hashes"),
            Some(_),
            None,
        ] => "/v1/addons/{addon_id}/hashes/{sha256}",
        [Some("v1"), Some("addons"), Some(_), Some("hashes"), None, _] => {
            "/v1/addons/{addon_id}/hashes"
        }
        [Some("v1"), Some("lookups"), None, ..] => "/v1/lookups",
        [Some("v1"), Some("writes"), Some(_), None, ..] => "/v1/writes/{write_id}",
        [Some("v1"), Some("openapi.json"), None, ..] => "/v1/openapi.json",
        [Some("__lbheartbeat__"), None, ..] => "/__lbheartbeat__",
        [Some("__heartbeat__"), None, ..] => "/__heartbeat__",
        [Some("__version__"), None, ..] => "/__version__",
        _ => "other",
    }
}

/// Records one answered request. Cheap to clone (warp clones its log
/// callback per request): one reference count.
#[derive(Debug, Clone)]
pub struct Summary {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    metrics: Metrics,
    /// Log when a uniform draw in [0, 2^32) is below this; `None`: never.
    threshold: Option<u64>,
}

impl Summary {
    /// `sample` is `ADDONREG_REQUEST_LOG_SAMPLE`, from 0.0 to 1.0.
    pub fn new(metrics: Metrics, sample: f64) -> Result<Self, InvalidSetting> {
        if !(0.0..=1.0).contains(&sample) {
            return Err(InvalidSetting {
                variable: "ADDONREG_REQUEST_LOG_SAMPLE",
                problem: format!("must be from 0.0 to 1.0, not {sample}"),
            });
        }
        let threshold = (sample > 0.0).then_some((sample * (1u64 << 32) as f64) as u64);
        Ok(Self {
            inner: Arc::new(Inner { metrics, threshold }),
        })
    }

    /// Counts, times and maybe logs the request `info` describes.
    pub fn record(&self, info: &Info<'_>) {
        let route = route_of(info.path());
        let status = info.status();
        let elapsed = info.elapsed();
        let Inner { metrics, threshold } = self.inner.as_ref();
        metrics
            .requests
            .with_label_values(&[route, status.as_str()])
            .inc();
        metrics
            .request_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
        if threshold.is_some_and(|t| draw() < t) {
            tracing::info!(
                type = "request.summary",
                method = info.method().as_str(),
                path = route,
                status = status.as_u16(),
                t = elapsed.as_secs_f64() * 1000.0,
                "request"
            );
        }
    }
}

/// A uniform draw in [0, 2^32) from a per-thread xorshift generator.
fn draw() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::collections::hash_map::RandomState::new().build_hasher().finish() | 1,
        );
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x >> 32
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_patterns() {
        assert_eq!(
            route_of("/v1/addons/%7Bx%7D/hashes/abc"),
            "/v1/addons/{addon_id}/hashes/{sha256}"
        );
        assert_eq!(
            route_of("/v1/addons/a@b/hashes"),
            "/v1/addons/{addon_id}/hashes"
        );
        assert_eq!(route_of("/v1/lookups"), "/v1/lookups");
        assert_eq!(route_of("/v1/writes/w1"), "/v1/writes/{write_id}");
        assert_eq!(route_of("/v1/openapi.json"), "/v1/openapi.json");
        assert_eq!(route_of("/__heartbeat__"), "/__heartbeat__");
        assert_eq!(route_of("/v1/addons/a/hashes/b/c"), "other");
        assert_eq!(route_of("/secret/thing"), "other");
    }

    #[test]
    fn sample_rate_is_validated() {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry).unwrap();
        assert!(Summary::new(metrics.clone(), 1.5).is_err());
        assert!(Summary::new(metrics.clone(), -0.1).is_err());
        assert!(Summary::new(metrics.clone(), f64::NAN).is_err());
        assert_eq!(
            Summary::new(metrics.clone(), 0.0).unwrap().inner.threshold,
            None
        );
        assert_eq!(
            Summary::new(metrics, 1.0).unwrap().inner.threshold,
            Some(1u64 << 32)
        );
    }
}
