//! Signalling datagrams as the rendezvous and its clients take them off the socket, and the
//! rooms core fed whatever decodes.
use std::time::Instant;

use inclubit_rendezvous::server::rooms::{Rooms, RoomsConfig};
use inclubit_rendezvous::wire::signal::{parse_relay, ClientMsg, PeerMsg, ServerMsg};

fn main() {
    let start = Instant::now();
    afl::fuzz!(|data: &[u8]| {
        let _ = ServerMsg::decode(data);
        let _ = PeerMsg::decode(data);
        let _ = parse_relay(true, data);
        let _ = parse_relay(false, data);
        if let Ok(msg) = ClientMsg::decode(data) {
            // Re-encoding what decoded gives it back.
            assert_eq!(ClientMsg::decode(&msg.encode()).ok(), Some(msg.clone()));
            let mut rooms = Rooms::new(RoomsConfig::default(), 1);
            let from = "192.0.2.1:4000".parse().unwrap();
            rooms.handle(start, from, msg);
            while rooms.poll_transmit().is_some() {}
        }
    });
}
