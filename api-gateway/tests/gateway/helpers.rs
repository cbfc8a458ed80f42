//! What the gateway's tests share on top of the harness.

use std::time::Duration;

use harness::{TestProcess, free_port, wait_for_http};

/// A real `api-gateway` process and its two addresses.
pub struct Gateway {
    /// The process.
    pub process: TestProcess,
    /// `http://127.0.0.1:<public port>`.
    pub public: String,
    /// `http://127.0.0.1:<admin port>`.
    pub admin: String,
}

/// Starts the gateway reading from `replica_urls`, and waits until it listens.
pub async fn start_gateway(replica_urls: &[String], prefix: &str) -> Gateway {
    let (public, admin) = (free_port(), free_port());
    let process = TestProcess::start(
        env!("CARGO_BIN_EXE_api-gateway"),
        &[],
        &[
            ("ADDONREG_REPLICA_URLS", replica_urls.join(",")),
            ("ADDONREG_LISTEN", format!("127.0.0.1:{public}")),
            ("ADDONREG_METRICS_LISTEN", format!("127.0.0.1:{admin}")),
            ("ADDONREG_PREFIX", prefix.to_string()),
            ("ADDONREG_DB_ACQUIRE_TIMEOUT_MS", "500".to_string()),
        ],
    );
    let gateway = Gateway {
        process,
        public: format!("http://127.0.0.1:{public}"),
        admin: format!("http://127.0.0.1:{admin}"),
    };
    wait_for_http(
        &format!("{}/__lbheartbeat__", gateway.public),
        200,
        Duration::from_secs(20),
    )
    .await;
    gateway
}

/// GET `url`, returning the status and the JSON body.
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}
