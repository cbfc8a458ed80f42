//! A stand-in for Sentry, for the tests of error reporting: it records
//! what the processes send and checks that nothing private is in it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A stand-in for Sentry's ingestion on 127.0.0.1: it keeps the body of
/// every request (Sentry envelopes are POSTed to `/api/<project>/envelope/`)
/// and answers 200. Stops with the test.
pub struct FakeSentry {
    port: u16,
    /// Each request's first line and body.
    requests: Arc<Mutex<Vec<(String, String)>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl FakeSentry {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start() -> Self {
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
    pub fn dsn(&self) -> String {
        format!("http://public@127.0.0.1:{}/1", self.port)
    }

    /// The first envelope containing `needle`, waiting up to 10 s for it.
    pub async fn envelope_with(&self, needle: &str) -> String {
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

/// Checks that an event is filed under `environment`, this workspace's
/// release and the `service` tag.
pub fn assert_tagged(envelope: &str, environment: &str, service: &str) {
    assert!(
        envelope.contains(&format!(r#""environment":"{environment}""#)),
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
        envelope.contains(&format!(r#""service":"{service}""#)),
        "{envelope}"
    );
}

/// Promises every reported event keeps: no host name, user, password or URL.
pub fn assert_nothing_private(envelope: &str, url: &str, password: &str) {
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
