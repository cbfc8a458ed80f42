//! addonreg's read gateway.
//!
//! Layout:
//! - `settings`: flags and `ADDONREG_*` variables.
//! - `app`: builds the gateway from its settings and runs it until stopped.
//! - `replicas`: one pool per read replica and their health.
//! - `store`: the reads (`Reads`) and their SQL over the replicas, with
//!   round-robin and failover between them; rows decoded into domain types.
//! - `answer`: a found record's encoded body and validators, as cached.
//! - `cache`: the in-memory record cache in front of the store, with its
//!   fences against stale refills.
//! - `misses`: concurrent cache misses of many keys read in one query.
//! - `fences`: per-key and per-add-on fences, each source's replay position,
//!   the global floor: which sources may serve which reads.
//! - `invalidation`: the broker subscription that evicts and fences keys.
//! - `metrics`: every Prometheus metric of the gateway.
//! - `monitor`: background replica health checks, lag and cache size.
//! - `routes`: the read API's filters and handlers; inputs parsed at the edge.
//! - `http_caching`: `ETag`, `Last-Modified`, `Cache-Control` and 304s of
//!   single-record answers; `Cache-Control` and surrogate keys of listings.
//! - `edge`: surrogate keys, and what this gateway has applied, which the
//!   edge purger asks on the admin listener before purging.
//! - `purge`: the edge purger (`edge-purger` binary): waits until every
//!   gateway applied an event, then purges its keys from the CDN, twice.
//! - `dockerflow`: `/__lbheartbeat__`, `/__heartbeat__`, `/__version__`.
//! - `server`: the public listener's accept loop and connections, with their
//!   limits (header and idle timeouts, most connections open).
//! - `errors`: the one mapping of failures to HTTP answers.
//! - `summary`: per-request metrics and sampled `request.summary` log lines.

pub mod answer;
pub mod app;
pub mod cache;
pub mod dockerflow;
pub mod edge;
pub mod errors;
pub mod fences;
pub mod http_caching;
pub mod invalidation;
pub mod metrics;
pub mod misses;
pub mod monitor;
pub mod purge;
pub mod replicas;
pub mod routes;
pub mod server;
pub mod settings;
pub mod store;
pub mod summary;

pub use app::App;
pub use settings::Settings;
