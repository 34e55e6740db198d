//! The one definition of every message on the wire.
//!
//! * [`signal`]: datagrams between peers and the rendezvous, on the same UDP socket as QUIC.
//! * [`media`]: the control stream and per-frame header carried inside QUIC between peers.
//! * [`audio`]: Opus packets in QUIC datagrams between peers.

pub mod audio;
pub mod codec;
pub mod media;
pub mod signal;

pub use codec::WireError;
