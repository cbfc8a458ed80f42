//! What the building blocks alone do, measured in the same run as addonreg
//! (absolute figures drift by a third between runs on shared machines).

use std::time::Instant;

use futures_util::StreamExt;
use futures_util::future::try_join_all;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::BenchError;
use crate::env::{Scratch, Target};

/// Raw RabbitMQ: a quorum queue, persistent 300-byte messages.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct QueueRates {
    /// Publish with confirms, 1000 in flight (messages/s).
    pub publish: f64,
    /// Consume with manual acks, prefetch 500 (messages/s).
    pub consume: f64,
}

/// Publishes then consumes `messages` through a fresh quorum queue.
pub async fn quorum_queue(target: &Target, messages: usize) -> Result<QueueRates, BenchError> {
    let scratch = Scratch::create(target).await?;
    let result = quorum_queue_in(&scratch, messages).await;
    scratch.drop().await?;
    result
}

async fn quorum_queue_in(scratch: &Scratch, messages: usize) -> Result<QueueRates, BenchError> {
    let queue = format!("{}.baseline", scratch.prefix);
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    let channel = scratch.broker.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable, args)
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let body = vec![b'x'; 300];
    let started = Instant::now();
    for chunk in (0..messages).collect::<Vec<_>>().chunks(1_000) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for _ in chunk {
            let properties = BasicProperties::default().with_delivery_mode(2);
            confirms.push(
                channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await?,
            );
        }
        try_join_all(confirms).await?;
    }
    let publish = messages as f64 / started.elapsed().as_secs_f64();

    let consumer_channel = scratch.broker.create_channel().await?;
    consumer_channel
        .basic_qos(500, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    for n in 1..=messages {
        let delivery = consumer
            .next()
            .await
            .ok_or_else(|| BenchError::Check("consumer ended".into()))??;
        if n % 100 == 0 || n == messages {
            consumer_channel
                .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
        }
    }
    let consume = messages as f64 / started.elapsed().as_secs_f64();
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok(QueueRates { publish, consume })
}

/// Raw Postgres: `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING`, 500
/// rows a statement, two clients, into a table keyed like `records`.
pub async fn upsert_rows_per_sec(target: &Target, rows: usize) -> Result<f64, BenchError> {
    let scratch = Scratch::create(target).await?;
    let result = upsert_in(&scratch, rows).await;
    scratch.drop().await?;
    result
}

async fn upsert_in(scratch: &Scratch, rows: usize) -> Result<f64, BenchError> {
    sqlx::query(
        "CREATE TABLE baseline (addon_id text COLLATE \"C\", sha256 bytea, status text, \
         updated_at timestamptz, PRIMARY KEY (addon_id, sha256))",
    )
    .execute(&scratch.pool)
    .await?;
    let started = Instant::now();
    let clients = 2;
    try_join_all((0..clients).map(|client| {
        let pool = scratch.pool.clone();
        async move {
            for start in (client * 500..rows).step_by(clients * 500) {
                let end = (start + 500).min(rows);
                let ids: Vec<String> = (start..end)
                    .map(|i| format!("addon{}@baseline", i % 1000))
                    .collect();
                let hashes: Vec<Vec<u8>> = (start..end)
                    .map(|i| (i as u64).to_be_bytes().repeat(4))
                    .collect();
                sqlx::query(
                    "INSERT INTO baseline SELECT a, h, 'registered', now() \
                     FROM unnest($1::text[], $2::bytea[]) AS u(a, h) ON CONFLICT DO NOTHING",
                )
                .bind(&ids)
                .bind(&hashes)
                .execute(&pool)
                .await?;
            }
            Ok::<_, sqlx::Error>(())
        }
    }))
    .await?;
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// nginx serving one record as a static file: the baseline for what a
/// well-tuned static server answers on this machine. Stopped on drop.
pub struct Nginx {
    dir: std::path::PathBuf,
    child: tokio::process::Child,
}

impl Nginx {
    /// Starts nginx (2 worker processes, no access log) on `port`, serving
    /// `body` as `application/json` at every path.
    pub fn start(port: u16, body: &str) -> Result<Self, BenchError> {
        let dir =
            std::env::temp_dir().join(format!("addonreg-nginx-{}-{port}", std::process::id()));
        let io = |e| BenchError::Process("nginx scratch dir".into(), e);
        std::fs::create_dir_all(dir.join("logs")).map_err(io)?;
        std::fs::write(dir.join("record.json"), body).map_err(io)?;
        let conf = format!(
            "worker_processes 2;\n\
             error_log {dir}/logs/error.log;\n\
             pid {dir}/nginx.pid;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
               access_log off;\n\
               sendfile on; tcp_nodelay on; keepalive_requests 1000000;\n\
               open_file_cache max=16 inactive=60s; open_file_cache_valid 60s;\n\
               client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};\n\
               uwsgi_temp_path {dir}; scgi_temp_path {dir};\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 root {dir};\n\
                 location / {{ default_type application/json; try_files /record.json =404; }}\n\
               }}\n\
             }}\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).map_err(io)?;
        // A configuration nginx refuses would only show as a port nobody
        // listens on: have it checked first, and say why.
        let checked = std::process::Command::new("nginx")
            .arg("-t")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .output()
            .map_err(|e| BenchError::Process("nginx (apt-get install nginx-light)".into(), e))?;
        if !checked.status.success() {
            return Err(BenchError::Check(format!(
                "nginx refused its configuration: {}",
                String::from_utf8_lossy(&checked.stderr).trim()
            )));
        }
        let child = tokio::process::Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Process("nginx (apt-get install nginx-light)".into(), e))?;
        Ok(Self { dir, child })
    }

    /// Whether an `nginx` binary is on the PATH.
    pub fn installed() -> bool {
        std::process::Command::new("nginx")
            .arg("-v")
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master must stop its workers itself: killed outright it
        // leaves them running. A quick shutdown (SIGTERM), waited for.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            for _ in 0..50 {
                if self.child.try_wait().is_ok_and(|s| s.is_some()) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
