//! inclubit rendezvous: the wire format (one definition for every message), the sans-IO room
//! logic and its UDP server, and a peer's transport (QUIC over one punched UDP socket). No ffmpeg,
//! no GPU: an admin's VPS builds only this crate.

pub mod abuse;
pub mod bridge;
pub mod client;
pub mod clock;
pub mod code;
pub mod config;
pub mod metrics;
pub mod peer;
pub mod server;
pub mod service;
pub mod state;
pub mod web;
pub mod wire;
