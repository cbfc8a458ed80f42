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
#[derive(Debug, Clone, Copy)]
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
