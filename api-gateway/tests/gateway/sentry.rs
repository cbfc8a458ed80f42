//! Error reporting: with `ADDONREG_SENTRY_DSN` set, an error the gateway logs
//! reaches Sentry with its environment and release, and with no database
//! URL, password or host name.

use harness::sentry::{FakeSentry, assert_nothing_private, assert_tagged};
use harness::{TestBroker, free_port};

use crate::helpers::start_gateway_with;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_error_reaches_sentry_without_secrets() {
    let sentry = FakeSentry::start().await;
    let broker = TestBroker::new();
    let password = "hunter2-sentry-gateway";
    // Nobody listens there: every read fails, and the request answers 503,
    // which the gateway logs at error.
    let replica = format!(
        "postgres://addonreg_gateway:{password}@127.0.0.1:{}/addonreg",
        free_port()
    );
    let mut gw = start_gateway_with(
        std::slice::from_ref(&replica),
        &broker.prefix.to_string(),
        &[
            ("ADDONREG_AMQP_URL", broker.url.clone()),
            ("ADDONREG_SENTRY_DSN", sentry.dsn()),
            ("ADDONREG_SENTRY_ENVIRONMENT", "sentry-test".to_string()),
        ],
    )
    .await;
    let status = reqwest::get(format!(
        "{}/v1/addons/sentry@example.com/hashes/{}",
        gw.public,
        "ab".repeat(32)
    ))
    .await
    .expect("GET")
    .status();
    assert_eq!(status, 503);

    let envelope = sentry.envelope_with("request failed").await;
    assert!(
        envelope.contains("no database replica answered"),
        "{envelope}"
    );
    assert_tagged(&envelope, "sentry-test", "addonreg-gateway");
    // Info lines stay out. (Warnings are breadcrumbs of their own thread,
    // so whether the failed attempt's rides along depends on scheduling.)
    assert!(!envelope.contains("gateway listening"), "{envelope}");
    assert_nothing_private(&envelope, &replica, password);

    // The SIGTERM path (which flushes the reports) still ends cleanly.
    assert!(gw.process.terminate().success());
}
