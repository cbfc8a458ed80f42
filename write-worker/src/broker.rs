//! The connections to RabbitMQ. lapin does not reconnect by itself: a lost
//! connection ends its streams, so every user of the broker goes through
//! [`connect_with_backoff`] again, which also re-declares the topology.
//!
//! Two connections: one consumes and acknowledges, the other publishes. A
//! broker under a memory or disk alarm blocks every connection that publishes
//! (it stops reading from it), which on a shared connection would block the
//! acks, and the close that hands unacknowledged messages back, too.

use std::time::Duration;

use lapin::{Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use shared::settings::Secret;
use shared::topology::{REPLY_SUCCESS, Topology};

/// First and longest wait between connection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(3));

/// Longest wait for a channel or connection to close. A blocked connection
/// never answers; it is then dropped, and the broker reads its close once
/// the alarm clears.
const CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// The consuming connection with its channel and the topology declared, and
/// the publishing connection.
pub struct Session {
    /// The consuming connection, kept to close it.
    pub connection: Connection,
    /// The channel deliveries arrive and are acknowledged on.
    pub channel: Channel,
    /// The connection dead letters and events are published on.
    pub publishing: Connection,
}

impl Session {
    /// Closes the consuming channel and connection (unacknowledged deliveries
    /// go back to the queue), then the publishing connection, each given
    /// [`CLOSE_LIMIT`].
    pub async fn close(&self) {
        let reason = || "worker session ends".into();
        let _ =
            tokio::time::timeout(CLOSE_LIMIT, self.channel.close(REPLY_SUCCESS, reason())).await;
        let _ =
            tokio::time::timeout(CLOSE_LIMIT, self.connection.close(REPLY_SUCCESS, reason())).await;
        let _ =
            tokio::time::timeout(CLOSE_LIMIT, self.publishing.close(REPLY_SUCCESS, reason())).await;
    }
}

/// Connects (both connections), opens the consuming channel and declares the
/// topology, once.
pub async fn connect(url: &Secret, topology: &Topology) -> lapin::Result<Session> {
    // Named per prefix, so SREs (and tests) can tell deployments apart.
    let name = |role: &str| {
        ConnectionProperties::default().with_connection_name(
            format!("addonreg-write-worker {} {role}", topology.writes_queue).into(),
        )
    };
    let connection = Connection::connect(url.expose(), name("consume")).await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    let publishing = match Connection::connect(url.expose(), name("publish")).await {
        Ok(publishing) => publishing,
        Err(e) => {
            let _ = connection
                .close(REPLY_SUCCESS, "no publishing connection".into())
                .await;
            return Err(e);
        }
    };
    Ok(Session {
        connection,
        channel,
        publishing,
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
