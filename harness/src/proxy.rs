//! A TCP proxy in front of a broker that a test can freeze (a silent
//! partition: no FIN, no RST) or cut, for one process's connection only.

/// What a [`TcpProxy`] does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Passes bytes both ways.
    Forward,
    /// Stops passing bytes without closing anything (a silent partition:
    /// no FIN, no RST); new connections are accepted and frozen too.
    Freeze,
    /// Closes every connection and refuses new ones.
    Cut,
}

/// A TCP proxy to a broker, for one process's connection only, that the
/// test can freeze or cut (no `iptables` here).
pub struct TcpProxy {
    /// The broker URL through the proxy.
    pub url: String,
    mode: tokio::sync::watch::Sender<ProxyMode>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free port, forwarding to `broker`'s host and port.
    pub async fn to_broker(broker: &crate::TestBroker) -> Self {
        Self::to_amqp(&broker.url).await
    }

    /// Listens on a free port, forwarding to the host and port of the AMQP
    /// URL `url`; [`TcpProxy::url`] is the same URL through the proxy.
    pub async fn to_amqp(url: &str) -> Self {
        let mut uri: lapin::uri::AMQPUri = url.parse().expect("broker URL");
        let target = format!("{}:{}", uri.authority.host, uri.authority.port);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        uri.authority.host = "127.0.0.1".into();
        uri.authority.port = listener.local_addr().expect("proxy address").port();
        let (mode, watch) = tokio::sync::watch::channel(ProxyMode::Forward);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *watch.borrow() == ProxyMode::Cut {
                    continue;
                }
                let (target, watch) = (target.clone(), watch.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pipe(client_read, server_write, watch.clone()),
                        pipe(server_read, client_write, watch),
                    );
                });
            }
        });
        Self {
            url: uri.to_string(),
            mode,
            accept,
        }
    }

    /// Switches every connection, open or new, to `mode`.
    pub fn set(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.set(ProxyMode::Cut);
        self.accept.abort();
    }
}

/// Copies `from` to `to` while the mode is `Forward`, holds while `Freeze`,
/// and ends (closing both) on `Cut`.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: tokio::sync::watch::Receiver<ProxyMode>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        loop {
            match *mode.borrow_and_update() {
                ProxyMode::Forward => break,
                ProxyMode::Cut => return,
                ProxyMode::Freeze => {}
            }
            if mode.changed().await.is_err() {
                return;
            }
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        // Frozen meanwhile: hold what was read until forwarding again.
        loop {
            match *mode.borrow_and_update() {
                ProxyMode::Forward => break,
                ProxyMode::Cut => return,
                ProxyMode::Freeze => {}
            }
            if mode.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
