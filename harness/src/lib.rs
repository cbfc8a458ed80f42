//! The integration tests' harness: real Postgres and RabbitMQ, one of each
//! name per test, cleaned up afterwards.
//!
//! Layout:
//! - `database`: a fresh migrated database per test on a Postgres cluster.
//! - `broker`: a unique RabbitMQ name prefix per test, its names deleted at the end,
//!   and throwaway least-privilege broker users for it.
//! - `policy`: the broker policies of `infra/rabbitmq/definitions.json` for that
//!   prefix (delivery limits, dead-lettering), cleared at the end.
//! - `cluster`: a Postgres primary of the test's own (initdb on a free port),
//!   which it may stop and start, and streaming replicas of it.
//! - `model`: the seeded random write mix of the model-based tests.
//! - `launch`: how a gateway or worker is started (program, arguments,
//!   settings), for the tests and `loadtest`.
//! - `process`: a real binary of the workspace, started and stopped by a test.
//! - `rabbit`, `rabbit_cluster`: RabbitMQ nodes of a test's own, alone or as a
//!   three-node cluster, which it may stop and start.
//! - `proxy`: a TCP proxy to the broker that a test freezes or cuts.
//! - `varnish`: a Varnish of the test's own with the repository's VCL.
//! - `sentry`: a stand-in for Sentry's ingestion, recording what arrives.
//!
//! Each owner cleans up in `Drop`, also when the test fails; a failing test's
//! database is kept (and named on stderr) for a post-mortem.

pub mod broker;
pub mod cluster;
pub mod database;
pub mod launch;
pub mod model;
pub mod policy;
pub mod process;
pub mod proxy;
pub mod rabbit;
pub mod rabbit_cluster;
pub mod sentry;
pub mod varnish;

pub use broker::{BrokerRole, BrokerUser, TestBroker};
pub use cluster::{PgServer, TestCluster, TestReplica};
pub use database::TestDb;
pub use launch::Launch;
pub use policy::BrokerPolicies;
pub use process::{TestProcess, free_port, wait_for_http};
pub use proxy::{ProxyMode, TcpProxy};
pub use varnish::TestVarnish;

/// A short random name part, unique per test.
fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// Runs `work` to completion on a runtime of its own, on a thread of its own:
/// `Drop` can't be async, and may run inside a test's runtime.
fn block_on_own_runtime<F>(work: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let joined = std::thread::spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(work),
            Err(e) => eprintln!("harness: no runtime for cleanup: {e}"),
        }
    })
    .join();
    if joined.is_err() {
        eprintln!("harness: cleanup panicked");
    }
}
