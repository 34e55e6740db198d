//! The media frame header and the control messages a peer reads from QUIC streams.
use inclubit_rendezvous::wire::media::{Control, FrameHeader};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(head) =
            <&[u8; FrameHeader::LEN]>::try_from(data.get(..FrameHeader::LEN).unwrap_or(&[]))
        {
            let _ = FrameHeader::decode(head);
        }
        if let Ok(c) = Control::decode(data) {
            assert_eq!(Control::decode(&c.encode()).ok(), Some(c));
        }
    });
}
