//! The upstreams: per room, the bridge joins as an ordinary QUIC viewer of the full-size
//! rendition, and of the half-size one while some browser is on it, and passes the sender's
//! access units on. Started by the first browser viewer, stopped when the last leaves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::core::AccessUnit;
use crate::code::{PairingCode, PairingSecret, RoomCode};
use crate::peer::control::SessionError;
use crate::peer::rendition::TOP;
use crate::peer::subscribe::{subscribe, SubEvent, SubHandle, SubscribeConfig};
use crate::peer::NetError;
use crate::wire::media::{Preference, StreamHello};
use crate::wire::signal::ErrorKind;

/// What the bridge's driver hears from the feeds.
#[derive(Debug)]
pub enum FeedMsg {
    /// An access unit of the room's stream on a rendition.
    Frame(RoomCode, usize, AccessUnit),
    /// The room's upstream of a rendition ended.
    Ended(RoomCode, usize),
}

/// One upstream: a room's rendition.
type Key = (RoomCode, usize);

/// Why a room cannot be watched in a browser right now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    #[error("no room {0}")]
    NotFound(RoomCode),
    #[error("the camera of room {0} cannot be reached: {1}")]
    Offline(RoomCode, String),
    #[error("the rendezvous did not answer: {0}")]
    Rendezvous(String),
    /// The code's secret part is not the one the room's sender pairs with.
    #[error("wrong code for room {0}: check the whole code the sender printed")]
    WrongCode(RoomCode),
    /// Too many wrong codes for this room lately: no new browsers for a while.
    #[error("too many wrong codes for room {0}; try again in a few minutes")]
    Locked(RoomCode),
}

/// Wrong secrets for a room, from one client and from all, before the room takes no new
/// browser from that client (or from anybody) for a while. Without them the bridge would
/// answer right or wrong to every guess: an oracle for the secret.
const WRONG_PER_CLIENT: u32 = 3;
const WRONG_PER_ROOM: u32 = 30;
const WRONG_WINDOW: Duration = Duration::from_secs(600);
/// Most (room, client) pairs whose wrong guesses are remembered.
const MAX_WRONG: usize = 10_000;

/// Who brought a code: a client's network (an IPv4 address or IPv6 /64), or nobody known.
type Client = Option<std::net::IpAddr>;

/// The secret each room's upstreams paired with, and the wrong ones browsers brought.
#[derive(Default)]
struct Secrets {
    /// The secret and who brought it (blamed if the sender refuses it).
    paired: HashMap<RoomCode, (PairingSecret, Client)>,
    /// Per (room, client) and per (room, everybody: `None`): count and the first's time.
    wrong: HashMap<(RoomCode, Client), (u32, Instant)>,
    /// Rooms whose sender drew a new secret: their live upstream serves the browsers it has, and
    /// each new browser's code is proved with the sender first.
    stale: std::collections::HashSet<RoomCode>,
}

impl Secrets {
    /// Whether `client`'s browser with `code` may watch: `Ok(false)` at once (the first code
    /// for a room is the new upstream's to prove with the sender), `Ok(true)` once the code is
    /// proved with the sender (its secret changed since the upstream paired).
    fn check(
        &mut self,
        code: PairingCode,
        client: Client,
        now: Instant,
    ) -> Result<bool, FeedError> {
        let room = code.room;
        self.wrong.retain(|_, (_, t)| now < *t + WRONG_WINDOW);
        let count = |k| self.wrong.get(&k).map_or(0, |w| w.0);
        if count((room, client)) >= WRONG_PER_CLIENT || count((room, None)) >= WRONG_PER_ROOM {
            return Err(FeedError::Locked(room));
        }
        match self.paired.get(&room) {
            None => {
                self.paired.insert(room, (code.secret, client));
                Ok(false)
            }
            Some(_) if self.stale.contains(&room) => Ok(true),
            Some((s, _)) if *s == code.secret => Ok(false),
            Some(_) => {
                self.wrong_guess(room, client, now);
                Err(FeedError::WrongCode(room))
            }
        }
    }

    fn wrong_guess(&mut self, room: RoomCode, client: Client, now: Instant) {
        for key in [(room, client), (room, None)] {
            if self.wrong.len() < MAX_WRONG || self.wrong.contains_key(&key) {
                self.wrong.entry(key).or_insert((0, now)).0 += 1;
            }
        }
        tracing::warn!(%room, ?client, "a browser brought a wrong code for this room");
    }
}

#[derive(Debug, Clone)]
enum State {
    Connecting,
    Live(StreamHello),
    Failed(FeedError),
}

struct Feed {
    /// Tells this subscription from a later one for the same room.
    id: u64,
    state: watch::Receiver<State>,
    handle: Arc<Mutex<Option<SubHandle>>>,
}

/// The rooms the bridge is subscribed to.
pub struct Feeds {
    rendezvous: SocketAddr,
    feeds: Mutex<HashMap<Key, Feed>>,
    secrets: Mutex<Secrets>,
    next_id: std::sync::atomic::AtomicU64,
    to_driver: mpsc::UnboundedSender<FeedMsg>,
}

impl Feeds {
    pub fn new(rendezvous: SocketAddr, to_driver: mpsc::UnboundedSender<FeedMsg>) -> Self {
        Self {
            rendezvous,
            feeds: Mutex::new(HashMap::new()),
            secrets: Mutex::new(Secrets::default()),
            next_id: std::sync::atomic::AtomicU64::new(1),
            to_driver,
        }
    }

    /// Subscribes to `code`'s room (its full-size rendition) unless already subscribed;
    /// returns once its stream is live. A browser's code must be the one the room's upstream
    /// paired with.
    pub async fn ensure(
        self: &Arc<Self>,
        code: PairingCode,
        client: Option<std::net::IpAddr>,
    ) -> Result<StreamHello, FeedError> {
        let client = client.map(crate::web::limits::client_of);
        let prove =
            self.secrets
                .lock()
                .map_err(|_| poisoned())?
                .check(code, client, Instant::now())?;
        if prove {
            self.prove(code, client).await?;
        }
        self.ensure_rendition(code.room, TOP).await
    }

    /// Pairs with the room's sender once with `code` (a connection that ends at the hello):
    /// after a re-key, the only way to tell the new code from an old or a guessed one.
    async fn prove(&self, code: PairingCode, client: Client) -> Result<(), FeedError> {
        let room = code.room;
        let mut cfg = SubscribeConfig::new(code, self.rendezvous);
        cfg.name = "web-bridge (checking a code)".into();
        cfg.no_upnp = true;
        let result = subscribe(cfg).await;
        let mut s = self.secrets.lock().map_err(|_| poisoned())?;
        match result {
            Ok(sub) => {
                sub.handle.stop();
                s.paired.insert(room, (code.secret, client));
                s.stale.remove(&room);
                Ok(())
            }
            Err(SessionError::Pairing(_)) => {
                s.wrong_guess(room, client, Instant::now());
                Err(FeedError::WrongCode(room))
            }
            Err(e) => Err(FeedError::Offline(room, e.to_string())),
        }
    }

    /// Subscribes to `room`'s `rendition` unless already subscribed; returns once it is live.
    pub async fn ensure_rendition(
        self: &Arc<Self>,
        room: RoomCode,
        rendition: usize,
    ) -> Result<StreamHello, FeedError> {
        let key = (room, rendition);
        let mut state = {
            let mut feeds = self.feeds.lock().map_err(|_| poisoned())?;
            match feeds.get(&key) {
                Some(f) => f.state.clone(),
                None => {
                    let (tx, rx) = watch::channel(State::Connecting);
                    let handle = Arc::new(Mutex::new(None));
                    let id = self
                        .next_id
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    feeds.insert(
                        key,
                        Feed {
                            id,
                            state: rx.clone(),
                            handle: handle.clone(),
                        },
                    );
                    tokio::spawn(self.clone().run(key, id, tx, handle));
                    rx
                }
            }
        };
        loop {
            match &*state.borrow_and_update() {
                State::Live(h) => return Ok(h.clone()),
                State::Failed(e) => return Err(e.clone()),
                State::Connecting => {}
            }
            if state.changed().await.is_err() {
                return Err(FeedError::Offline(room, "subscription ended".into()));
            }
        }
    }

    /// Asks the room's sender for a keyframe on `rendition`.
    pub fn request_keyframe(&self, room: RoomCode, rendition: usize) {
        if let Some(h) = self.handle((room, rendition)) {
            h.request_keyframe();
        }
    }

    /// Tells the sender of `room`'s upstream of `rendition` to send no more than `max_bitrate`
    /// (0: no limit). False when there is no such upstream (yet).
    pub fn limit(&self, room: RoomCode, rendition: usize, max_bitrate: u64) -> bool {
        let Some(h) = self.handle((room, rendition)) else {
            return self.has((room, rendition));
        };
        h.prefer(Preference {
            rendition: Some(rendition as u8),
            max_bitrate,
        });
        true
    }

    /// No browser watches `room` any more: leave it (every rendition).
    pub fn release(&self, room: RoomCode) {
        for key in self.keys(room) {
            self.release_rendition(key.0, key.1);
        }
    }

    /// No browser is on `room`'s `rendition` any more: leave that upstream.
    pub fn release_rendition(&self, room: RoomCode, rendition: usize) {
        if let Some(h) = self.handle((room, rendition)) {
            tracing::info!(%room, rendition, "no browser viewers left on it; leaving");
            // Forgotten now: a browser arriving while this one winds down gets a fresh one.
            self.forget((room, rendition), None);
            h.stop();
        }
    }

    /// Rooms with a live upstream.
    pub fn live(&self) -> Vec<RoomCode> {
        let mut rooms: Vec<RoomCode> = self
            .feeds
            .lock()
            .map(|f| {
                f.iter()
                    .filter(|(_, f)| matches!(*f.state.borrow(), State::Live(_)))
                    .map(|(k, _)| k.0)
                    .collect()
            })
            .unwrap_or_default();
        rooms.sort_by_key(|r| r.to_string());
        rooms.dedup();
        rooms
    }

    /// The renditions of `room` with an upstream (live or on its way).
    pub fn renditions(&self, room: RoomCode) -> Vec<usize> {
        self.keys(room).into_iter().map(|k| k.1).collect()
    }

    fn keys(&self, room: RoomCode) -> Vec<Key> {
        self.feeds
            .lock()
            .map(|f| f.keys().filter(|k| k.0 == room).copied().collect())
            .unwrap_or_default()
    }

    fn has(&self, key: Key) -> bool {
        self.feeds.lock().is_ok_and(|f| f.contains_key(&key))
    }

    fn handle(&self, key: Key) -> Option<SubHandle> {
        let feeds = self.feeds.lock().ok()?;
        let h = feeds.get(&key)?.handle.lock().ok()?.clone();
        h
    }

    async fn run(
        self: Arc<Self>,
        (room, rendition): Key,
        id: u64,
        state: watch::Sender<State>,
        handle_slot: Arc<Mutex<Option<SubHandle>>>,
    ) {
        let secret = self
            .secrets
            .lock()
            .ok()
            .and_then(|s| s.paired.get(&room).map(|p| p.0));
        let Some(secret) = secret else {
            let _ = state.send(State::Failed(FeedError::WrongCode(room)));
            self.forget((room, rendition), Some(id));
            return;
        };
        let mut cfg = SubscribeConfig::new(PairingCode { room, secret }, self.rendezvous);
        cfg.name = "web-bridge".into();
        cfg.prefer = Preference {
            rendition: Some(rendition as u8),
            max_bitrate: 0,
        };
        // The bridge serves browsers from a server: no router to map a port on.
        cfg.no_upnp = true;
        let result = match subscribe(cfg).await {
            Ok(sub) => Ok(sub),
            Err(SessionError::Net(NetError::Refused(ErrorKind::RoomNotFound))) => {
                Err(FeedError::NotFound(room))
            }
            Err(SessionError::Net(e @ NetError::Unreachable(_))) => {
                Err(FeedError::Rendezvous(e.to_string()))
            }
            Err(SessionError::Pairing(_)) => {
                if let Ok(mut s) = self.secrets.lock() {
                    if let Some((_, client)) = s.paired.remove(&room) {
                        s.wrong_guess(room, client, Instant::now());
                    }
                }
                Err(FeedError::WrongCode(room))
            }
            Err(e) => Err(FeedError::Offline(room, e.to_string())),
        };
        match result {
            Err(e) => {
                tracing::info!(%room, rendition, "browser bridge cannot subscribe: {e}");
                self.forget((room, rendition), Some(id));
                let _ = state.send(State::Failed(e));
            }
            Ok(sub) => {
                let (hello, handle, mut events, task) = sub.into_parts();
                tracing::info!(%room, rendition, w = hello.width, h = hello.height, "browser bridge subscribed");
                if let Ok(mut h) = handle_slot.lock() {
                    *h = Some(handle.clone());
                }
                let _ = state.send(State::Live(hello));
                while let Some(ev) = events.recv().await {
                    if matches!(ev, SubEvent::Rekeyed) {
                        tracing::info!(%room, "the sender drew a new code: new browsers' codes are checked with it");
                        if let Ok(mut s) = self.secrets.lock() {
                            s.stale.insert(room);
                        }
                    }
                    if let SubEvent::Frame(f) = ev {
                        let au = AccessUnit {
                            seq: f.seq,
                            keyframe: f.keyframe,
                            capture_us: f.capture_us,
                            data: Arc::from(&f.data[..]),
                        };
                        if self
                            .to_driver
                            .send(FeedMsg::Frame(room, rendition, au))
                            .is_err()
                        {
                            handle.stop();
                        }
                    }
                }
                let end = crate::peer::subscribe::Subscription::finished(task).await;
                tracing::info!(%room, rendition, sender_ended = end.sender_ended, "browser bridge left the room");
                let newer = !self.forget((room, rendition), Some(id));
                let _ = state.send(State::Failed(FeedError::Offline(
                    room,
                    "the stream ended".into(),
                )));
                // A newer subscription to the room serves its browsers now: leave them be.
                if !newer {
                    let _ = self.to_driver.send(FeedMsg::Ended(room, rendition));
                }
            }
        }
    }

    /// Removes upstream `key` if it is subscription `id` (any, for `None`). False when another
    /// subscription holds the room.
    fn forget(&self, key: Key, id: Option<u64>) -> bool {
        let Ok(mut f) = self.feeds.lock() else {
            return true;
        };
        match f.get(&key) {
            Some(feed) if id.is_some_and(|id| id != feed.id) => false,
            Some(_) => {
                f.remove(&key);
                // The room's last upstream: its secret is proved afresh next time.
                if !f.keys().any(|k| k.0 == key.0) {
                    if let Ok(mut s) = self.secrets.lock() {
                        s.paired.remove(&key.0);
                        s.stale.remove(&key.0);
                    }
                }
                true
            }
            None => true,
        }
    }
}

fn poisoned() -> FeedError {
    FeedError::Rendezvous("bridge state poisoned".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> PairingCode {
        s.parse().unwrap()
    }

    #[test]
    fn wrong_secrets_lock_the_client_then_the_room_for_a_while() {
        let mut s = Secrets::default();
        let t0 = Instant::now();
        let (a, b) = (
            Some("192.0.2.1".parse().unwrap()),
            Some("192.0.2.2".parse().unwrap()),
        );
        assert_eq!(s.check(code("K7F-Q2M-4X9P"), b, t0), Ok(false));
        let room = code("K7F-Q2M-4X9P").room;
        for _ in 0..WRONG_PER_CLIENT {
            assert_eq!(
                s.check(code("K7F-Q2M-0000"), a, t0),
                Err(FeedError::WrongCode(room))
            );
        }
        // That client gets no answer now, not even for the right code; others still do.
        assert_eq!(
            s.check(code("K7F-Q2M-4X9P"), a, t0),
            Err(FeedError::Locked(room))
        );
        assert_eq!(s.check(code("K7F-Q2M-4X9P"), b, t0), Ok(false));
        // Guesses from many clients lock the room for everybody.
        for i in 0..WRONG_PER_ROOM {
            let c = Some(std::net::IpAddr::from([198, 51, 100, i as u8]));
            let _ = s.check(code("K7F-Q2M-0000"), c, t0);
        }
        assert_eq!(
            s.check(code("K7F-Q2M-4X9P"), b, t0),
            Err(FeedError::Locked(room))
        );
        // A room whose sender drew a new secret: every new code is proved with the sender.
        s.stale.insert(room);
        let later = t0 + WRONG_WINDOW;
        assert_eq!(s.check(code("K7F-Q2M-4X9P"), b, later), Ok(true));
        s.stale.clear();
        // Until the window passes.
        assert_eq!(s.check(code("K7F-Q2M-4X9P"), a, later), Ok(false));
    }
}
