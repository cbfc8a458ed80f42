//! Error reporting: with `ADDONREG_SENTRY_DSN` set, a worker that fails logs
//! the error, reports it to Sentry with its environment and release (flushed
//! before the process exits), and sends no database URL, password or host
//! name.

use std::time::Duration;

use harness::TestProcess;
use harness::sentry::{FakeSentry, assert_nothing_private, assert_tagged};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_reaches_sentry_before_exit_without_secrets() {
    let sentry = FakeSentry::start().await;
    let password = "hunter2-sentry-worker";
    let url = format!("postgres://addonreg_worker:{password}@127.0.0.1:noport/addonreg");
    // Not a usable URL (the port): the worker refuses to start, logs why at
    // error, and exits.
    let mut worker = TestProcess::start(
        env!("CARGO_BIN_EXE_write-worker"),
        &[],
        &[
            ("ADDONREG_DATABASE_URL", url.clone()),
            ("ADDONREG_METRICS_LISTEN", "0".to_string()),
            ("ADDONREG_SENTRY_DSN", sentry.dsn()),
            ("ADDONREG_SENTRY_ENVIRONMENT", "sentry-test".to_string()),
        ],
    );

    let envelope = sentry.envelope_with("worker failed").await;
    assert!(
        envelope.contains("ADDONREG_DATABASE_URL: not a valid postgres:// URL"),
        "{envelope}"
    );
    assert_tagged(&envelope, "sentry-test", "addonreg-write-worker");
    assert_nothing_private(&envelope, &url, password);

    let status = worker
        .wait_exit(Duration::from_secs(10))
        .expect("the worker exits");
    assert_eq!(status.code(), Some(1));
}
