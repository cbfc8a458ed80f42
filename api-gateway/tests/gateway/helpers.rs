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
    start_gateway_with(replica_urls, prefix, &[]).await
}

/// The same with more `ADDONREG_*` settings (which win over the defaults here).
pub async fn start_gateway_with(
    replica_urls: &[String],
    prefix: &str,
    settings: &[(&str, String)],
) -> Gateway {
    let (public, admin) = (free_port(), free_port());
    let mut env = vec![
        ("ADDONREG_REPLICA_URLS", replica_urls.join(",")),
        ("ADDONREG_LISTEN", format!("127.0.0.1:{public}")),
        ("ADDONREG_METRICS_LISTEN", format!("127.0.0.1:{admin}")),
        ("ADDONREG_PREFIX", prefix.to_string()),
        ("ADDONREG_DB_ACQUIRE_TIMEOUT_MS", "500".to_string()),
    ];
    env.retain(|(key, _)| !settings.iter().any(|(k, _)| k == key));
    env.extend(settings.iter().cloned());
    let process = TestProcess::start(env!("CARGO_BIN_EXE_api-gateway"), &[], &env);
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

/// A record to insert as the owner, as a worker would have stored it.
#[derive(Debug, Clone)]
pub struct SeedRecord {
    pub addon_id: String,
    /// 64 hex digits.
    pub sha256: String,
    /// `registered`, `revoked` or `deleted` (a tombstone).
    pub status: &'static str,
    pub version: Option<String>,
    /// RFC 3339.
    pub registered_at: Option<String>,
    /// RFC 3339.
    pub updated_at: String,
}

impl SeedRecord {
    /// A registered record of version 1.0, registered and updated at the same time.
    pub fn registered(addon_id: &str, sha256: &str) -> Self {
        Self {
            addon_id: addon_id.into(),
            sha256: sha256.into(),
            status: "registered",
            version: Some("1.0".into()),
            registered_at: Some("2026-11-22T10:00:00.123456Z".into()),
            updated_at: "2026-11-22T10:00:00.123456Z".into(),
        }
    }
}

/// Inserts (or replaces) records as the schema's owner.
pub async fn insert_records(owner: &sqlx::PgPool, records: &[SeedRecord]) {
    for r in records {
        sqlx::query(
            "INSERT INTO records (addon_id, sha256, status, version, registered_at, updated_at, \
                                  last_write_id, last_op_index, ops) \
             VALUES ($1, decode($2, 'hex'), $3, $4, $5::timestamptz, $6::timestamptz, 'seed', 0, '[]'::jsonb) \
             ON CONFLICT (addon_id, sha256) DO UPDATE SET status = EXCLUDED.status, \
                 version = EXCLUDED.version, registered_at = EXCLUDED.registered_at, \
                 updated_at = EXCLUDED.updated_at",
        )
        .bind(&r.addon_id)
        .bind(&r.sha256)
        .bind(r.status)
        .bind(&r.version)
        .bind(&r.registered_at)
        .bind(&r.updated_at)
        .execute(owner)
        .await
        .expect("insert record");
    }
}

/// Inserts a receipt as the schema's owner.
pub async fn insert_receipt(
    owner: &sqlx::PgPool,
    write_id: &str,
    status: &str,
    reason: Option<&str>,
    processed_at: &str,
) {
    sqlx::query(
        "INSERT INTO receipts (write_id, status, reason, processed_at) \
         VALUES ($1, $2, $3, $4::timestamptz)",
    )
    .bind(write_id)
    .bind(status)
    .bind(reason)
    .bind(processed_at)
    .execute(owner)
    .await
    .expect("insert receipt");
}
