//! What the worker's tests share on top of the harness.

use harness::{TestBroker, TestDb, TestProcess};

/// Starts the real `write-worker` binary against a test's database and broker.
pub fn start_worker(
    db: &TestDb,
    broker: &TestBroker,
    metrics_port: u16,
    args: &[&str],
) -> TestProcess {
    TestProcess::start(
        env!("CARGO_BIN_EXE_write-worker"),
        args,
        &[
            ("ADDONREG_DATABASE_URL", db.url_as("addonreg_worker")),
            ("ADDONREG_AMQP_URL", broker.url.clone()),
            ("ADDONREG_PREFIX", broker.prefix.to_string()),
            (
                "ADDONREG_METRICS_LISTEN",
                format!("127.0.0.1:{metrics_port}"),
            ),
        ],
    )
}
