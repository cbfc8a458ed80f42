//! Error reporting: with `ADDONREG_SENTRY_DSN` set, an error the gateway logs
//! reaches Sentry with its environment and release, and with no database
//! URL, password or host name.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{TestBroker, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
    assert!(
        envelope.contains(r#""environment":"sentry-test""#),
        "{envelope}"
    );
    assert!(
        envelope.contains(&format!(
            r#""release":"addonreg@{}"#,
            env!("CARGO_PKG_VERSION")
        )),
        "{envelope}"
    );
    assert!(
        envelope.contains(r#""service":"addonreg-gateway""#),
        "{envelope}"
    );
    // Info lines stay out. (Warnings are breadcrumbs of their own thread,
    // so whether the failed attempt's rides along depends on scheduling.)
    assert!(!envelope.contains("gateway listening"), "{envelope}");
    assert_nothing_private(&envelope, &replica, password);

    // The SIGTERM path (which flushes the reports) still ends cleanly.
    assert!(gw.process.terminate().success());
}

/// A stand-in for Sentry's ingestion on 127.0.0.1: it keeps the body of
/// every request (Sentry envelopes are POSTed to `/api/<project>/envelope/`)
/// and answers 200. Stops with the test.
struct FakeSentry {
    port: u16,
    /// Each request's first line and body.
    requests: Arc<Mutex<Vec<(String, String)>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl FakeSentry {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let requests = requests.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(record(stream, requests.clone()));
                }
            }
        });
        Self {
            port,
            requests,
            accept,
        }
    }

    /// A DSN for project 1 here.
    fn dsn(&self) -> String {
        format!("http://public@127.0.0.1:{}/1", self.port)
    }

    /// The first envelope containing `needle`, waiting up to 10 s for it.
    async fn envelope_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .requests
                .lock()
                .expect("requests lock")
                .iter()
                .find(|(_, body)| body.contains(needle))
                .cloned();
            if let Some((request, body)) = found {
                assert!(request.starts_with("POST /api/1/envelope/ "), "{request}");
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "no envelope with {needle:?} within 10 s; got {:?}",
                self.requests.lock().expect("requests lock")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for FakeSentry {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Reads one HTTP/1.1 request with a `Content-Length` body, keeps its first
/// line and body, answers 200 and closes the connection.
async fn record(mut stream: TcpStream, requests: Arc<Mutex<Vec<(String, String)>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let (request, head_end, length) = loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let request = head.lines().next().unwrap_or_default().to_string();
            break (request, end + 4, length);
        }
    };
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    requests
        .lock()
        .expect("requests lock")
        .push((request, body));
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
        .await;
}

/// Promises every reported event keeps: no host name, user, password or URL.
fn assert_nothing_private(envelope: &str, url: &str, password: &str) {
    assert!(!envelope.contains(password), "password in {envelope}");
    assert!(!envelope.contains(url), "database URL in {envelope}");
    assert!(!envelope.contains("@127.0.0.1"), "a URL in {envelope}");
    assert!(
        !envelope.contains("\"server_name\""),
        "server name in {envelope}"
    );
    assert!(!envelope.contains("\"user\""), "user in {envelope}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    // A short name (`vm`) could match any word; longer ones can't by chance.
    if host.len() >= 6 {
        assert!(!envelope.contains(host), "host name in {envelope}");
    }
}
