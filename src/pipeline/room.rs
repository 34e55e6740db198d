//! The sender's room at the rendezvous: opening it (an embedded rendezvous when none is
//! named), and following it: punching towards each viewer it lists, keeping the paths of
//! those still connected across a rendezvous restart.

use std::net::SocketAddr;
use std::sync::Arc;

use inclubit_rendezvous::client::{ClientEvent, Role};
use inclubit_rendezvous::code::RoomCode;
use inclubit_rendezvous::server::rooms::{RoomsConfig, TicketKey};
use inclubit_rendezvous::server::{Server, ServerConfig};
use inclubit_rendezvous::wire::signal::{RoomTicket, WebSide};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::send::{SendConfig, Shared};
use super::PipelineError;
use crate::net::candidates::host_candidates;
use crate::net::paths::PathManager;
use crate::net::portmap::{self, PortMapper};
use crate::net::signal::Signalling;
use crate::net::{Identity, MediaSocket, NetError, PathPolicy, PeerEndpoint};

/// An open room: its code and where viewers find it, and the sender's endpoint in it.
pub(super) struct Room {
    pub code: RoomCode,
    pub web: Option<WebSide>,
    pub ticket: RoomTicket,
    /// The rendezvous address to tell viewers.
    pub advertised: SocketAddr,
    pub embedded: bool,
    pub server_task: Option<JoinHandle<()>>,
    pub endpoint: quinn::Endpoint,
    pub local_addr: SocketAddr,
    pub socket: Arc<MediaSocket>,
    pub signalling: Signalling,
    pub events: mpsc::UnboundedReceiver<ClientEvent>,
    pub paths: Arc<PathManager>,
    pub mapping: Option<PortMapper>,
    pub hosts: Vec<SocketAddr>,
}

/// Binds the sender's endpoint and opens its room (claiming its code back with a ticket).
pub(super) async fn open_room(cfg: &SendConfig) -> Result<Room, PipelineError> {
    let identity = Identity::generate()?;
    let ep = PeerEndpoint::bind(cfg.bind, Some(&identity), cfg.impairment.clone())?;

    let (rendezvous, embedded, server_task) = match cfg.rendezvous {
        Some(addr) => (addr, false, None),
        None => {
            let (addr, task) =
                embed_rendezvous(cfg.bind, cfg.embedded_port, cfg.ticket_key).await?;
            (addr, true, Some(task))
        }
    };
    // Talk to an embedded rendezvous over loopback when bound to every interface.
    let signal_to = if embedded && rendezvous.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), rendezvous.port())
    } else {
        rendezvous
    };
    let hosts = host_candidates(ep.local_addr);
    // A router port mapping makes us reachable even behind a symmetric NAT. Nothing waits for
    // it: it is announced when it arrives, and punching moves to it.
    let mapping = portmap::wanted(cfg.no_upnp, cfg.bind, signal_to)
        .then(|| PortMapper::start(ep.local_addr.port()));
    let PeerEndpoint {
        endpoint,
        signal,
        local_addr,
        socket,
    } = ep;
    let media_socket = socket.clone();
    // Viewers that cannot reach us directly come through the rendezvous relay.
    socket.set_relay_server(signal_to);
    socket.set_relay_allowed(cfg.paths != PathPolicy::DirectOnly);
    let (paths, peer_sink) = PathManager::start(socket.clone(), cfg.punch.clone(), None, None);
    let (signalling, mut events) = Signalling::spawn(
        signal,
        signal_to,
        Role::Sender {
            hosts: hosts.clone(),
            fingerprint: identity.fingerprint(),
            claim: cfg.claim,
            direct_only: cfg.paths == PathPolicy::DirectOnly,
        },
        Some(peer_sink),
    );
    let (code, web, ticket) = match events.recv().await {
        Some(ClientEvent::Opened {
            code,
            reflexive,
            web,
            ticket,
        }) => {
            tracing::debug!(%code, %reflexive, "room opened");
            if let Some(c) = cfg.claim.filter(|c| c.code != code) {
                tracing::warn!(
                    "the rendezvous does not recognise the ticket of {} (it restarted with a new \
                     key); this stream has a new code",
                    c.code
                );
            }
            (code, web, ticket)
        }
        Some(ClientEvent::Refused(kind)) => return Err(NetError::Refused(kind).into()),
        _ => return Err(NetError::Unreachable(signal_to).into()),
    };
    // What to tell viewers: a concrete address for the embedded rendezvous.
    let advertised = if embedded && rendezvous.ip().is_unspecified() {
        hosts
            .iter()
            .find(|a| a.is_ipv4())
            .map(|a| SocketAddr::new(a.ip(), rendezvous.port()))
            .unwrap_or(signal_to)
    } else {
        rendezvous
    };
    Ok(Room {
        code,
        web,
        ticket,
        advertised,
        embedded,
        server_task,
        endpoint,
        local_addr,
        socket: media_socket,
        signalling,
        events,
        paths,
        mapping,
        hosts,
    })
}

/// Follows the room's events for the whole stream: punches towards every viewer listed
/// (`punch`), drops the paths of those who left, and says what the rendezvous is doing.
pub(super) async fn follow_room(
    mut events: mpsc::UnboundedReceiver<ClientEvent>,
    paths: Arc<PathManager>,
    shared: Arc<Shared>,
    socket: Arc<MediaSocket>,
    code: RoomCode,
    punch: bool,
) {
    // Viewers from before the room was re-opened (the rendezvous restarted) are not in
    // the new room's lists, but their streams go on: their paths stay while they are
    // connected.
    let mut listed: Vec<u64> = Vec::new();
    let mut carried: Vec<u64> = Vec::new();
    while let Some(ev) = events.recv().await {
        match ev {
            ClientEvent::Viewers(list) => {
                if punch {
                    for v in &list {
                        paths.add_peer(v.relay, v.secret, &v.candidates);
                    }
                }
                listed = list.iter().map(|v| v.relay).collect();
                carried.retain(|r| shared.is_connected(socket.relay_peer(*r)));
                paths.retain(&[&listed[..], &carried[..]].concat());
            }
            ClientEvent::Lost => tracing::warn!("rendezvous not answering; streams go on"),
            ClientEvent::Restored => tracing::info!("rendezvous answering again"),
            ClientEvent::ServerClosing => tracing::warn!(
                "the rendezvous is shutting down; streams go on, the room is re-opened when \
                 it is back"
            ),
            ClientEvent::RoomGone => {
                tracing::warn!("the rendezvous forgot this room (restarted?); re-opening it")
            }
            // Re-opening was refused (e.g. the server is full): say so, the stream goes on.
            ClientEvent::Refused(kind) => tracing::warn!(
                "the rendezvous refused to re-open this room ({kind}); new viewers cannot \
                 join, the current ones go on"
            ),
            ClientEvent::Opened { code: again, .. } => {
                carried.append(&mut listed);
                if again == code {
                    tracing::info!(%code, "room re-opened at the rendezvous; viewers can join again")
                } else {
                    tracing::warn!(
                        "the rendezvous no longer knows this room's ticket: new code \
                         {again}; viewers need the new code"
                    )
                }
            }
            _ => {}
        }
    }
}

async fn embed_rendezvous(
    bind: SocketAddr,
    port: u16,
    ticket_key: Option<TicketKey>,
) -> Result<(SocketAddr, JoinHandle<()>), PipelineError> {
    let cfg = |port| ServerConfig {
        listen: SocketAddr::new(bind.ip(), port),
        rooms: RoomsConfig {
            ticket_key,
            ..Default::default()
        },
    };
    let server = match Server::bind(cfg(port)).await {
        Ok(s) => s,
        Err(e) if port != 0 => {
            tracing::info!("{e}; using another port");
            Server::bind(cfg(0)).await?
        }
        Err(e) => return Err(e.into()),
    };
    let addr = server.local_addr();
    Ok((addr, tokio::spawn(server.run())))
}
