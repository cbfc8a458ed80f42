//! The connection to RabbitMQ. lapin does not reconnect by itself: a lost
//! connection ends its streams, so every user of the broker goes through
//! [`connect_with_backoff`] again, which also re-declares the topology.

use std::time::Duration;

use lapin::{Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use shared::settings::Secret;
use shared::topology::{REPLY_SUCCESS, Topology};

/// First and longest wait between connection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(3));

/// A connection with one channel and the topology declared.
pub struct Session {
    /// The connection, kept to close it.
    pub connection: Connection,
    /// The channel everything is done on.
    pub channel: Channel,
}

impl Session {
    /// Closes the channel, then the connection: unacknowledged deliveries go
    /// back to the queue.
    pub async fn close(&self) {
        let _ = self
            .channel
            .close(REPLY_SUCCESS, "worker session ends".into())
            .await;
        let _ = self
            .connection
            .close(REPLY_SUCCESS, "worker session ends".into())
            .await;
    }
}

/// Connects, opens a channel and declares the topology, once.
pub async fn connect(url: &Secret, topology: &Topology) -> lapin::Result<Session> {
    let connection = Connection::connect(
        url.expose(),
        // Named per prefix, so SREs (and tests) can tell deployments apart.
        ConnectionProperties::default().with_connection_name(
            format!("addonreg-write-worker {}", topology.writes_queue).into(),
        ),
    )
    .await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    Ok(Session {
        connection,
        channel,
    })
}

/// Connects with exponential backoff until it succeeds or `stop` fires.
pub async fn connect_with_backoff(
    url: &Secret,
    topology: &Topology,
    stop: &CancellationToken,
) -> Option<Session> {
    let mut wait = BACKOFF.0;
    loop {
        match connect(url, topology).await {
            Ok(session) => {
                tracing::info!(type = "broker.connected", "connected to RabbitMQ");
                return Some(session);
            }
            Err(e) => {
                tracing::warn!(type = "broker.unavailable", error = %e, retry_ms = wait.as_millis() as u64, "cannot reach RabbitMQ");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(BACKOFF.1);
    }
}
