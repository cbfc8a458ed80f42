//! Dockerflow: `/__lbheartbeat__` (the process runs), `/__heartbeat__` (its
//! dependencies answer) and `/__version__`.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::join_all;
use serde::Serialize;
use warp::http::{Method, StatusCode};
use warp::{Filter, Rejection, Reply};

use shared::version::VersionInfo;

use crate::cache::CacheControl;
use crate::replicas::{Health, Replica};
use crate::routes::only;

/// A check's or the whole heartbeat's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every check passed.
    Ok,
    /// Degraded but serving.
    Warning,
    /// Not serving.
    Error,
}

#[derive(Debug, Serialize)]
struct Heartbeat {
    status: Verdict,
    checks: BTreeMap<String, Verdict>,
    details: BTreeMap<String, String>,
}

/// Judges the replicas: all up is ok; some down is a warning; all down is
/// an error (503), since no read can succeed. Not being subscribed to
/// invalidations (check `broker`) is a warning: reads still work, with
/// short cache lifetimes.
fn heartbeat(replicas: &[Replica], health: &[Health], broker_up: bool) -> Heartbeat {
    let mut checks = BTreeMap::new();
    let mut details = BTreeMap::new();
    if broker_up {
        checks.insert("broker".to_string(), Verdict::Ok);
    } else {
        checks.insert("broker".to_string(), Verdict::Warning);
        details.insert(
            "broker".to_string(),
            "not subscribed to invalidations".into(),
        );
    }
    for (replica, health) in replicas.iter().zip(health) {
        let verdict = match health {
            Health::Up => Verdict::Ok,
            Health::Down => {
                details.insert(replica.name.clone(), "not answering".into());
                Verdict::Warning
            }
        };
        checks.insert(replica.name.clone(), verdict);
    }
    let status = if health.iter().all(|h| *h == Health::Down) {
        Verdict::Error
    } else {
        checks.values().copied().max().unwrap_or(Verdict::Ok)
    };
    Heartbeat {
        status,
        checks,
        details,
    }
}

/// The three Dockerflow routes.
pub fn routes(
    replicas: Arc<Vec<Replica>>,
    cache: CacheControl,
    version: Arc<VersionInfo>,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let lbheartbeat = warp::path!("__lbheartbeat__")
        .and(only(&[Method::GET]))
        .map(|| warp::reply::json(&serde_json::json!({})));
    let heartbeat = warp::path!("__heartbeat__")
        .and(only(&[Method::GET]))
        .then(move || {
            let replicas = replicas.clone();
            let broker_up = cache.is_subscribed();
            async move {
                let health = join_all(replicas.iter().map(Replica::check)).await;
                let body = heartbeat(&replicas, &health, broker_up);
                let status = match body.status {
                    Verdict::Error => StatusCode::SERVICE_UNAVAILABLE,
                    Verdict::Ok | Verdict::Warning => StatusCode::OK,
                };
                warp::reply::with_status(warp::reply::json(&body), status)
            }
        });
    let version = warp::path!("__version__")
        .and(only(&[Method::GET]))
        .map(move || warp::reply::json(version.as_ref()));
    lbheartbeat.or(heartbeat).or(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::postgres::PgPoolOptions;

    fn replicas(n: usize) -> Vec<Replica> {
        (1..=n)
            .map(|i| Replica {
                name: format!("replica-{i}"),
                pool: PgPoolOptions::new()
                    .connect_lazy("postgres://nobody@127.0.0.1:1/x")
                    .unwrap(),
            })
            .collect()
    }

    #[tokio::test]
    async fn verdicts() {
        let r = replicas(2);
        let all_up = heartbeat(&r, &[Health::Up, Health::Up], true);
        assert_eq!(all_up.status, Verdict::Ok);
        let one_down = heartbeat(&r, &[Health::Up, Health::Down], true);
        assert_eq!(one_down.status, Verdict::Warning);
        assert_eq!(one_down.checks["replica-2"], Verdict::Warning);
        let all_down = heartbeat(&r, &[Health::Down, Health::Down], true);
        assert_eq!(all_down.status, Verdict::Error);
        let no_broker = heartbeat(&r, &[Health::Up, Health::Up], false);
        assert_eq!(
            no_broker.status,
            Verdict::Warning,
            "a lost broker is never a 503"
        );
        assert_eq!(no_broker.checks["broker"], Verdict::Warning);
    }
}
