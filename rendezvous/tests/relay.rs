//! The relay through the real UDP server: only the two members of a session exchange data; a
//! third party that knows the session id can neither inject nor read, and nobody can make the
//! relay send anywhere else (there is no destination to name, and a member's new address must
//! echo a challenge first).

use std::net::UdpSocket;
use std::time::Duration;

use inclubit_rendezvous::server::{rooms::RoomsConfig, Server, ServerConfig};
use inclubit_rendezvous::wire::signal::{relay_header, ClientMsg, ServerMsg};

fn socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

fn answer(s: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = [0u8; 2048];
    s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

#[test]
fn only_members_relay_to_each_other() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(Server::bind(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            rooms: RoomsConfig::default(),
        }))
        .unwrap();
    let rv = server.local_addr();
    rt.spawn(server.run());

    let (sender, viewer, stranger) = (socket(), socket(), socket());
    for s in [&sender, &viewer, &stranger] {
        s.connect(rv).unwrap();
    }
    sender
        .send(
            &ClientMsg::Open {
                txn: 1,
                hosts: vec![],
                fingerprint: [0; 32],
                claim: None,
                direct_only: false,
            }
            .encode(),
        )
        .unwrap();
    let Ok(ServerMsg::Opened { code, .. }) = ServerMsg::decode(&answer(&sender).unwrap()) else {
        panic!("no room")
    };
    viewer
        .send(
            &ClientMsg::Join {
                txn: 2,
                code,
                hosts: vec![],
            }
            .encode(),
        )
        .unwrap();
    let (session, member, token) = loop {
        if let Ok(ServerMsg::Joined {
            relay,
            member,
            token,
            ..
        }) = ServerMsg::decode(&answer(&viewer).unwrap())
        {
            break (relay, member, token);
        }
    };
    // The sender was told about the viewer: drain that.
    let _ = answer(&sender);

    let packet = |payload: &[u8]| {
        let mut p = relay_header(true, session).to_vec();
        p.extend_from_slice(payload);
        p
    };
    // Member to member works, both ways.
    viewer.send(&packet(b"\x40from viewer")).unwrap();
    assert!(answer(&sender).unwrap().ends_with(b"from viewer"));
    sender.send(&packet(b"\x40from sender")).unwrap();
    assert!(answer(&viewer).unwrap().ends_with(b"from sender"));

    // A stranger with the session id: nothing reaches the members, nothing comes back.
    stranger.send(&packet(b"\x40injected")).unwrap();
    assert_eq!(answer(&sender), None, "the sender got injected data");
    assert_eq!(answer(&viewer), None, "the viewer got injected data");
    assert_eq!(answer(&stranger), None, "the stranger got an answer");
    // And members' data never goes to the stranger.
    viewer.send(&packet(b"\x40secret")).unwrap();
    assert!(answer(&sender).unwrap().ends_with(b"secret"));
    assert_eq!(answer(&stranger), None);

    // The viewer forges the stranger's address as its source (its own token, the stranger's
    // socket): the stranger gets one challenge it never asked for, and nothing else.
    let keepalive = ClientMsg::Keepalive {
        code,
        member,
        token,
        hosts: vec![],
    };
    stranger.send(&keepalive.encode()).unwrap();
    let got = answer(&stranger).expect("a challenge");
    assert!(
        matches!(ServerMsg::decode(&got), Ok(ServerMsg::Challenge { .. })),
        "{got:?}"
    );
    assert!(got.len() <= keepalive.encode().len());
    sender.send(&packet(b"\x40video")).unwrap();
    assert!(answer(&viewer).unwrap().ends_with(b"video"));
    assert_eq!(
        answer(&stranger),
        None,
        "relay data went to the forged address"
    );
}
