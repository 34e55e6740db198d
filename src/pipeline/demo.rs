//! `inclubit demo`: embedded rendezvous + test-card sender + viewer in one process on loopback.
