//! The worker's session with RabbitMQ. lapin does not reconnect by itself:
//! a lost connection ends its streams, so the consumer builds a new session
//! through [`connect`], on the next node when there are several
//! ([`shared::broker::Reconnect`]); the session re-declares the topology.
//!
//! Two connections: one consumes and acknowledges, the other publishes. A
//! broker under a memory or disk alarm blocks every connection that publishes
//! (it stops reading from it), which on a shared connection would block the
//! acks, and the close that hands unacknowledged messages back, too.

use std::time::Duration;

use lapin::{Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use shared::broker::Reconnect;
use shared::settings::Secret;
use shared::topology::{REPLY_SUCCESS, Topology};

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

/// Connects (both connections, to one node), opens the consuming channel
/// and declares the topology, once.
pub async fn open(url: &Secret, topology: &Topology) -> lapin::Result<Session> {
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

/// Opens a session on the first node that takes it, with backoff between
/// rounds, until it succeeds or `stop` fires.
pub async fn connect(
    reconnect: &mut Reconnect,
    topology: &Topology,
    stop: &CancellationToken,
) -> Option<Session> {
    reconnect
        .connect("write-worker", stop, |url| async move {
            open(&url, topology).await
        })
        .await
}
