//! Sound: Opus encoding and decoding (with loss concealment and in-band FEC) for the camera's
//! audio and talkback. The transport's parts are in the rendezvous crate
//! (`wire::audio`, `peer::jitter`).

pub mod opus;
