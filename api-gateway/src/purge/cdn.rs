//! Where purges go: the [`Cdn`] interface and its adapters. Varnish (the
//! `xkey` vmod, through the `PURGE` method of `infra/varnish/addonreg.vcl`)
//! is the one the local stack and the tests run for real; Fastly's batch
//! surrogate-key purge and Google Cloud CDN's cache-tag invalidation are
//! written against the same interface and tested against stand-ins of
//! their APIs. Limits and batching: `docs/edge.md`.
//!
//! Calls are blocking (ureq, already in the tree with rustls for Sentry);
//! the purger makes them on tokio's blocking pool.

use std::time::Duration;

use thiserror::Error;

use shared::settings::Secret;

/// Why a purge failed; the purger retries it.
#[derive(Debug, Error)]
pub enum PurgeError {
    /// No answer (connection, timeout, TLS).
    #[error("{cdn}: {source}")]
    Transport {
        /// Which CDN.
        cdn: &'static str,
        /// Why.
        source: Box<ureq::Error>,
    },
    /// An answer other than success.
    #[error("{cdn}: HTTP {status}: {body}")]
    Refused {
        /// Which CDN.
        cdn: &'static str,
        /// Its status.
        status: u16,
        /// The start of its body.
        body: String,
    },
}

/// A CDN the purger can remove answers from by surrogate key.
pub trait Cdn: Send + Sync {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Most keys one [`Cdn::purge`] call may carry.
    fn batch_size(&self) -> usize;

    /// Removes every answer labelled with any of `keys` (at most
    /// [`Cdn::batch_size`]).
    fn purge(&self, keys: &[String]) -> Result<(), PurgeError>;

    /// Removes every answer of the service (after events were missed).
    fn purge_all(&self) -> Result<(), PurgeError>;
}

/// How long one CDN API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(CALL_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into()
}

/// The outcome of one call: success, or a [`PurgeError`].
fn checked(
    cdn: &'static str,
    answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(), PurgeError> {
    let mut response = answer.map_err(|source| PurgeError::Transport {
        cdn,
        source: Box::new(source),
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let mut body = response.body_mut().read_to_string().unwrap_or_default();
    body.truncate(200);
    Err(PurgeError::Refused {
        cdn,
        status: status.as_u16(),
        body,
    })
}

/// Varnish nodes running `infra/varnish/addonreg.vcl`: `POST /__purge__`
/// (the VCL's `PURGE`, in a method ureq sends) with the keys,
/// space-separated, in `xkey-purge`; purging everything is the key
/// every answer carries too (`all`, added by the VCL).
pub struct Varnish {
    /// Each edge node's base URL, e.g. `http://127.0.0.1:6081`.
    nodes: Vec<String>,
    agent: ureq::Agent,
}

impl Varnish {
    /// Purges on every node of `nodes`.
    pub fn new(nodes: Vec<String>) -> Self {
        Self {
            nodes,
            agent: agent(),
        }
    }

    fn purge_header(&self, value: &str) -> Result<(), PurgeError> {
        for node in &self.nodes {
            let answer = self
                .agent
                .post(format!("{}/__purge__", node.trim_end_matches('/')))
                .header("xkey-purge", value)
                .send(());
            checked("varnish", answer)?;
        }
        Ok(())
    }
}

/// The key the VCL adds to every cached answer, for purging everything.
pub const VARNISH_ALL_KEY: &str = "addonreg-all";

impl Cdn for Varnish {
    fn name(&self) -> &'static str {
        "varnish"
    }

    /// Keys of 25 bytes and a space: 250 of them stay well inside
    /// Varnish's default 8 KiB request header limit (`http_req_hdr_len`).
    fn batch_size(&self) -> usize {
        250
    }

    fn purge(&self, keys: &[String]) -> Result<(), PurgeError> {
        self.purge_header(&keys.join(" "))
    }

    fn purge_all(&self) -> Result<(), PurgeError> {
        self.purge_header(VARNISH_ALL_KEY)
    }
}

/// Fastly's API: `POST /service/{id}/purge` with `{"surrogate_keys": […]}`
/// (at most 256 keys), `POST /service/{id}/purge_all`; token in
/// `Fastly-Key`. Hard purges: a soft purge would let Fastly serve the old
/// answer while it refetches.
pub struct Fastly {
    api: String,
    service_id: String,
    token: Secret,
    agent: ureq::Agent,
}

impl Fastly {
    /// The service `service_id` at `api` (`https://api.fastly.com`).
    pub fn new(api: String, service_id: String, token: Secret) -> Self {
        Self {
            api: api.trim_end_matches('/').to_string(),
            service_id,
            token,
            agent: agent(),
        }
    }
}

impl Cdn for Fastly {
    fn name(&self) -> &'static str {
        "fastly"
    }

    fn batch_size(&self) -> usize {
        256
    }

    fn purge(&self, keys: &[String]) -> Result<(), PurgeError> {
        let body = serde_json::json!({ "surrogate_keys": keys }).to_string();
        let answer = self
            .agent
            .post(format!("{}/service/{}/purge", self.api, self.service_id))
            .header("Fastly-Key", self.token.expose())
            .header("Accept", "application/json")
            .content_type("application/json")
            .send(body);
        checked("fastly", answer)
    }

    fn purge_all(&self) -> Result<(), PurgeError> {
        let answer = self
            .agent
            .post(format!(
                "{}/service/{}/purge_all",
                self.api, self.service_id
            ))
            .header("Fastly-Key", self.token.expose())
            .header("Accept", "application/json")
            .send(());
        checked("fastly", answer)
    }
}

/// Google Cloud CDN: `POST /compute/v1/projects/{project}/global/urlMaps/
/// {urlMap}/invalidateCache` with `{"cacheTags": […]}` (at most 10 tags a
/// request) or `{"path": "/*"}`; an OAuth bearer token.
pub struct GoogleCdn {
    api: String,
    project: String,
    url_map: String,
    token: Secret,
    agent: ureq::Agent,
}

impl GoogleCdn {
    /// The URL map `url_map` of `project` at `api`
    /// (`https://compute.googleapis.com`).
    pub fn new(api: String, project: String, url_map: String, token: Secret) -> Self {
        Self {
            api: api.trim_end_matches('/').to_string(),
            project,
            url_map,
            token,
            agent: agent(),
        }
    }

    fn invalidate(&self, rule: serde_json::Value) -> Result<(), PurgeError> {
        let answer = self
            .agent
            .post(format!(
                "{}/compute/v1/projects/{}/global/urlMaps/{}/invalidateCache",
                self.api, self.project, self.url_map
            ))
            .header("Authorization", format!("Bearer {}", self.token.expose()))
            .content_type("application/json")
            .send(rule.to_string());
        checked("google", answer)
    }
}

impl Cdn for GoogleCdn {
    fn name(&self) -> &'static str {
        "google"
    }

    fn batch_size(&self) -> usize {
        10
    }

    fn purge(&self, keys: &[String]) -> Result<(), PurgeError> {
        self.invalidate(serde_json::json!({ "cacheTags": keys }))
    }

    fn purge_all(&self) -> Result<(), PurgeError> {
        self.invalidate(serde_json::json!({ "path": "/*" }))
    }
}

#[cfg(test)]
mod tests {
    //! Each adapter against a stand-in of its API: a warp server that
    //! records what arrives and answers as the real one does.

    use std::sync::{Arc, Mutex};

    use warp::Filter;
    use warp::http::{HeaderMap, StatusCode};

    use super::*;

    /// What the stand-in received: path, headers, body.
    type Seen = Arc<Mutex<Vec<(String, HeaderMap, String)>>>;

    /// Serves `status` to every POST, recording it; returns its base URL.
    async fn stand_in(status: StatusCode) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let route = warp::post()
            .and(warp::path::full())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .map(
                move |path: warp::path::FullPath, headers, body: bytes::Bytes| {
                    log.lock().unwrap().push((
                        path.as_str().to_string(),
                        headers,
                        String::from_utf8_lossy(&body).into_owned(),
                    ));
                    warp::reply::with_status(warp::reply::json(&serde_json::json!({})), status)
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        (format!("http://{addr}"), seen)
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("p{i:024x}")).collect()
    }

    #[tokio::test]
    async fn fastly_batch_purge_and_purge_all() {
        let (api, seen) = stand_in(StatusCode::OK).await;
        let fastly = Fastly::new(api, "SVC1".into(), "tok".parse().unwrap());
        assert_eq!(fastly.batch_size(), 256);
        let batch = keys(3);
        let (fastly, batch) = tokio::task::spawn_blocking(move || {
            fastly.purge(&batch).unwrap();
            fastly.purge_all().unwrap();
            (fastly, batch)
        })
        .await
        .unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        let (path, headers, body) = &seen[0];
        assert_eq!(path, "/service/SVC1/purge");
        assert_eq!(headers["fastly-key"], "tok");
        assert!(headers.get("fastly-soft-purge").is_none(), "hard purges");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body, serde_json::json!({ "surrogate_keys": batch }));
        assert_eq!(seen[1].0, "/service/SVC1/purge_all");
        drop(fastly);
    }

    #[tokio::test]
    async fn google_cache_tag_invalidation_and_refusals() {
        let (api, seen) = stand_in(StatusCode::OK).await;
        let google = GoogleCdn::new(api, "proj".into(), "map".into(), "tok".parse().unwrap());
        assert_eq!(google.batch_size(), 10);
        let batch = keys(10);
        let (google, batch) = tokio::task::spawn_blocking(move || {
            google.purge(&batch).unwrap();
            google.purge_all().unwrap();
            (google, batch)
        })
        .await
        .unwrap();
        let seen = seen.lock().unwrap().clone();
        let (path, headers, body) = &seen[0];
        assert_eq!(
            path,
            "/compute/v1/projects/proj/global/urlMaps/map/invalidateCache"
        );
        assert_eq!(headers["authorization"], "Bearer tok");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body, serde_json::json!({ "cacheTags": batch }));
        let all: serde_json::Value = serde_json::from_str(&seen[1].2).unwrap();
        assert_eq!(all, serde_json::json!({ "path": "/*" }));
        drop(google);

        // A refusal (here: over the rate limit) is an error the purger retries.
        let (api, _) = stand_in(StatusCode::TOO_MANY_REQUESTS).await;
        let limited = GoogleCdn::new(api, "proj".into(), "map".into(), "tok".parse().unwrap());
        let e = tokio::task::spawn_blocking(move || limited.purge(&keys(1)).unwrap_err())
            .await
            .unwrap();
        assert!(matches!(e, PurgeError::Refused { status: 429, .. }), "{e}");
    }
}
