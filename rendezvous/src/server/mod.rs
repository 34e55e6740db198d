//! The rendezvous server: the sans-IO [`rooms`] core behind a thin tokio UDP driver.

pub mod rooms;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::wire::signal::{parse_relay, relay_to_downlink, ClientMsg, MAX_SIGNAL_LEN};
use rooms::{Event, Rooms, RoomsConfig};

/// Command-line options of the server; shared by `inclubit-rendezvous` and `inclubit rendezvous`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// UDP address to listen on (signalling and, later, relay).
    #[arg(long, default_value = "0.0.0.0:7000")]
    pub listen: SocketAddr,
    /// Seconds a room lives without hearing from its sender.
    #[arg(long, default_value_t = 15)]
    pub room_idle_secs: u64,
    /// Most viewers in one room.
    #[arg(long, default_value_t = 16)]
    pub max_viewers: usize,
}

impl ServerArgs {
    pub fn config(&self) -> ServerConfig {
        ServerConfig {
            listen: self.listen,
            rooms: RoomsConfig {
                idle: Duration::from_secs(self.room_idle_secs),
                max_viewers: self.max_viewers,
                ..Default::default()
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub rooms: RoomsConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct Server {
    socket: UdpSocket,
    rooms: Rooms,
    malformed: u64,
}

impl Server {
    pub async fn bind(cfg: ServerConfig) -> Result<Self, ServerError> {
        let socket = UdpSocket::bind(cfg.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: cfg.listen,
                source,
            })?;
        Ok(Self {
            socket,
            rooms: Rooms::new(cfg.rooms, rand::random()),
            malformed: 0,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        // A bound socket always has a local address.
        self.socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until the task is dropped. Bad datagrams are counted and dropped; socket errors
    /// are logged and the loop goes on: nothing a client sends stops the server.
    pub async fn run(mut self) {
        tracing::info!(addr = %self.local_addr(), "rendezvous listening");
        let mut buf = vec![0u8; 2048];
        loop {
            let timeout = self.rooms.poll_timeout().map(Instant::from_std);
            let sleep = async {
                match timeout {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        if let Some(to) = self.on_datagram(from, &mut buf[..n]) {
                            // Relay data goes out as it came in, one byte changed.
                            if let Err(e) = self.socket.send_to(&buf[..n], to).await {
                                tracing::debug!(%to, "relay send error: {e}");
                            }
                        }
                    }
                    Err(e) => tracing::debug!("recv error: {e}"),
                },
                _ = sleep => self.rooms.handle_timeout(std::time::Instant::now()),
            }
            self.flush().await;
        }
    }

    /// Handles one datagram; returns where to forward it when it is relay data.
    fn on_datagram(&mut self, from: SocketAddr, bytes: &mut [u8]) -> Option<SocketAddr> {
        if let Some((session, payload)) = parse_relay(true, bytes) {
            let len = payload.len();
            let to = self
                .rooms
                .route_relay(std::time::Instant::now(), from, session, len)?;
            relay_to_downlink(bytes);
            return Some(to);
        }
        if bytes.len() > MAX_SIGNAL_LEN {
            self.malformed += 1;
            return None;
        }
        match ClientMsg::decode(bytes) {
            Ok(msg) => self.rooms.handle(std::time::Instant::now(), from, msg),
            Err(e) => {
                self.malformed += 1;
                if self.malformed.is_power_of_two() {
                    tracing::debug!(%from, total = self.malformed, "dropped malformed datagram: {e}");
                }
            }
        }
        None
    }

    async fn flush(&mut self) {
        while let Some(ev) = self.rooms.poll_event() {
            match ev {
                Event::Opened { code, from } => tracing::info!(%code, %from, "room opened"),
                Event::Joined { code, member, from } => {
                    tracing::info!(%code, member, %from, "viewer joined")
                }
                Event::ViewerLeft { code, member } => tracing::info!(%code, member, "viewer left"),
                Event::Closed { code, reason } => tracing::info!(%code, ?reason, "room closed"),
                Event::RateLimited { ip } => tracing::warn!(%ip, "rate limit: refusing requests"),
                Event::RelayLimited { session, limit } => {
                    tracing::warn!(session = %format!("{session:016x}"), limit, "relay limit reached: dropping data")
                }
                Event::RelayRefused { session, from } => {
                    tracing::warn!(session = %format!("{session:016x}"), %from, "relay data from a non-member refused")
                }
            }
        }
        while let Some(t) = self.rooms.poll_transmit() {
            if let Err(e) = self.socket.send_to(&t.msg.encode(), t.to).await {
                tracing::debug!(to = %t.to, "send error: {e}");
            }
        }
    }
}

/// Binds and serves forever (until the task is dropped).
pub async fn run(cfg: ServerConfig) -> Result<(), ServerError> {
    Server::bind(cfg).await?.run().await;
    Ok(())
}
