//! STUN binding requests as the rendezvous answers them (address reflection).
use inclubit_rendezvous::server::reflect::{binding_response, is_binding_request};

fn main() {
    let from = "198.51.100.7:5000".parse().unwrap();
    afl::fuzz!(|data: &[u8]| {
        if is_binding_request(data) {
            let _ = binding_response(data, from);
        }
    });
}
