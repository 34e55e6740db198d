//! Drives the sans-IO [`SignalClient`] on a media socket's [`SignalPort`].

use std::net::SocketAddr;

use crate::client::{ClientConfig, ClientEvent, Role, SignalClient};
use crate::wire::signal::PeerMsg;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::socket::SignalPort;

/// Punch datagrams from peers, for the path manager.
pub type PeerSink = mpsc::UnboundedSender<(SocketAddr, PeerMsg)>;

pub struct Signalling {
    leave: Option<oneshot::Sender<()>>,
    hosts: mpsc::UnboundedSender<Vec<SocketAddr>>,
    task: JoinHandle<()>,
}

impl Signalling {
    /// Starts the client; its events arrive on the returned receiver (closed when it finishes).
    /// Datagrams from anyone but the rendezvous that decode as punches go to `peers`.
    pub fn spawn(
        port: SignalPort,
        server: SocketAddr,
        role: Role,
        peers: Option<PeerSink>,
    ) -> (Self, mpsc::UnboundedReceiver<ClientEvent>) {
        let (tx, events) = mpsc::unbounded_channel();
        let (leave, leave_rx) = oneshot::channel();
        let client = SignalClient::new(
            std::time::Instant::now(),
            server,
            role,
            rand::random(),
            ClientConfig::default(),
        );
        let (hosts, hosts_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive(port, client, tx, leave_rx, peers, hosts_rx));
        (
            Self {
                leave: Some(leave),
                hosts,
                task,
            },
            events,
        )
    }

    /// Announces new host candidates (a router port mapping arrived).
    pub fn hosts_updater(&self) -> mpsc::UnboundedSender<Vec<SocketAddr>> {
        self.hosts.clone()
    }

    /// Says goodbye to the rendezvous (one datagram, best effort) and stops.
    pub async fn leave(mut self) {
        if let Some(l) = self.leave.take() {
            let _ = l.send(());
        }
        let _ = tokio::time::timeout(std::time::Duration::from_millis(200), &mut self.task).await;
    }
}

impl Drop for Signalling {
    fn drop(&mut self) {
        if self.leave.is_some() {
            self.task.abort();
        }
    }
}

async fn drive(
    mut port: SignalPort,
    mut client: SignalClient,
    events: mpsc::UnboundedSender<ClientEvent>,
    mut leave: oneshot::Receiver<()>,
    peers: Option<PeerSink>,
    mut hosts: mpsc::UnboundedReceiver<Vec<SocketAddr>>,
) {
    let server = client.server();
    loop {
        while let Some(d) = client.poll_transmit() {
            if let Err(e) = port.send(server, &d).await {
                tracing::debug!(%server, "signalling send failed: {e}");
            }
        }
        while let Some(e) = client.poll_event() {
            let _ = events.send(e);
        }
        // A finished client (room gone at the rendezvous, rendezvous unreachable) must not stop
        // punch datagrams reaching the path manager: direct streams outlive the rendezvous.
        let timeout = client.poll_timeout().map(Instant::from_std);
        tokio::select! {
            d = port.recv() => match d {
                Some((from, bytes)) if from == server => {
                    client.handle_datagram(std::time::Instant::now(), from, &bytes)
                }
                Some((from, bytes)) => {
                    if let (Some(p), Ok(m)) = (&peers, PeerMsg::decode(&bytes)) {
                        let _ = p.send((from, m));
                    }
                }
                None => return,
            },
            _ = async {
                match timeout {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => client.handle_timeout(std::time::Instant::now()),
            Some(h) = hosts.recv() => client.set_hosts(std::time::Instant::now(), h),
            _ = &mut leave => {
                client.leave();
                while let Some(d) = client.poll_transmit() {
                    let _ = port.send(server, &d).await;
                }
                return;
            }
        }
    }
}
