//! WHEP offers as the bridge takes them: str0m's parser, our checks, negotiation.
use std::time::Instant;

use inclubit_rendezvous::bridge::core::BridgeCore;
use inclubit_rendezvous::code::RoomCode;

fn main() {
    let local = vec!["127.0.0.1:9".parse().unwrap()];
    afl::fuzz!(|data: &[u8]| {
        let offer = String::from_utf8_lossy(data);
        let mut core = BridgeCore::new(local.clone());
        let _ = core.accept_offer(Instant::now(), RoomCode::from_bits(7), &offer);
    });
}
