//! What survives a restart, in a state directory: the rendezvous's ticket key (so senders
//! re-open their codes after it restarts) and a sender's room tickets (so a restarted sender
//! keeps its code and its viewers' links).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::code::RoomCode;
use crate::server::rooms::TicketKey;
use crate::wire::signal::{Claim, RoomTicket};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: not a ticket key (32 bytes expected); remove it to make a new one")]
    BadKey(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `$STATE_DIRECTORY` (systemd's `StateDirectory=`), else `$XDG_STATE_HOME/app`, else
/// `~/.local/state/app`; `None` without a home.
pub fn default_dir(app: &str) -> Option<PathBuf> {
    let var = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("STATE_DIRECTORY")
        .or_else(|| var("XDG_STATE_HOME").map(|d| d.join(app)))
        .or_else(|| var("HOME").map(|h| h.join(".local/state").join(app)))
}

/// `$XDG_CONFIG_HOME/inclubit`, else `~/.config/inclubit`; `None` without a home.
pub fn config_dir() -> Option<PathBuf> {
    let var = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("XDG_CONFIG_HOME")
        .map(|d| d.join("inclubit"))
        .or_else(|| var("HOME").map(|h| h.join(".config/inclubit")))
}

/// Writes `bytes` to `path` readable by its owner only, through a temporary file and a rename
/// so a crash never leaves half a file.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The ticket key in `dir`, made on first use.
pub fn ticket_key(dir: &Path) -> Result<TicketKey, StateError> {
    let path = dir.join("ticket-key");
    match std::fs::read(&path) {
        Ok(bytes) => bytes
            .try_into()
            .map_err(|_| StateError::BadKey(path.clone())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: TicketKey = rand::random();
            write_private(&path, &key)?;
            Ok(key)
        }
        Err(e) => Err(io(&path)(e)),
    }
}

/// A sender's room tickets, per rendezvous (`rooms.json` in its state directory).
#[derive(Debug, Default)]
pub struct Tickets {
    path: PathBuf,
    /// rendezvous → code → ticket (hex).
    rooms: BTreeMap<String, BTreeMap<String, String>>,
}

impl Tickets {
    /// Loads `dir/rooms.json`; a missing file is an empty set.
    pub fn load(dir: &Path) -> Result<Self, StateError> {
        let path = dir.join("rooms.json");
        let rooms = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!("{}: unreadable ({e}); starting afresh", path.display());
                BTreeMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io(&path)(e)),
        };
        Ok(Self { path, rooms })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The claim for `code` at `rendezvous`, if this machine opened it there.
    pub fn claim(&self, rendezvous: &str, code: RoomCode) -> Option<Claim> {
        let hex = self.rooms.get(rendezvous)?.get(&code.to_string())?;
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(Claim {
            code,
            ticket: bytes.try_into().ok()?,
        })
    }

    /// Remembers `code`'s ticket at `rendezvous` and saves the file.
    pub fn remember(
        &mut self,
        rendezvous: &str,
        code: RoomCode,
        ticket: RoomTicket,
    ) -> Result<(), StateError> {
        let hex = ticket.iter().map(|b| format!("{b:02x}")).collect();
        self.rooms
            .entry(rendezvous.to_string())
            .or_default()
            .insert(code.to_string(), hex);
        let json = serde_json::to_vec_pretty(&self.rooms).expect("maps of strings serialise");
        write_private(&self.path, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("inclubit-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_ticket_key_is_made_once_and_kept() {
        let dir = temp_dir("key");
        let a = ticket_key(&dir).unwrap();
        assert_eq!(ticket_key(&dir).unwrap(), a);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("ticket-key"))
                .unwrap()
                .permissions();
            assert_eq!(mode.mode() & 0o777, 0o600);
        }
        std::fs::write(dir.join("ticket-key"), b"short").unwrap();
        assert!(matches!(ticket_key(&dir), Err(StateError::BadKey(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tickets_round_trip_per_rendezvous() {
        let dir = temp_dir("tickets");
        let code: RoomCode = "K7F-Q2M".parse().unwrap();
        let mut t = Tickets::load(&dir).unwrap();
        assert_eq!(t.claim("rv:7000", code), None);
        t.remember("rv:7000", code, [9; 16]).unwrap();
        let t = Tickets::load(&dir).unwrap();
        assert_eq!(
            t.claim("rv:7000", code),
            Some(Claim {
                code,
                ticket: [9; 16]
            })
        );
        assert_eq!(t.claim("other:7000", code), None);
        // A damaged file is reported and replaced, never fatal.
        std::fs::write(dir.join("rooms.json"), b"{nope").unwrap();
        assert_eq!(Tickets::load(&dir).unwrap().claim("rv:7000", code), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
