//! Limits that hold against many addresses, through the real UDP server (issue 13): 40
//! loopback addresses of one /24 get 16 rooms between them and a clear error after, while a
//! sender from another /24 still gets a room.

use std::net::UdpSocket;
use std::time::Duration;

use inclubit_rendezvous::server::{rooms::RoomsConfig, Server, ServerConfig};
use inclubit_rendezvous::wire::signal::{ClientMsg, ErrorKind, ServerMsg};

fn open_from(ip: &str, rv: std::net::SocketAddr) -> Result<(), ErrorKind> {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.connect(rv).unwrap();
    let open = ClientMsg::Open {
        txn: 1,
        hosts: vec![],
        fingerprint: [0; 32],
        claim: None,
        direct_only: false,
    };
    s.send(&open.encode()).unwrap();
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf).expect("an answer");
    match ServerMsg::decode(&buf[..n]) {
        Ok(ServerMsg::Opened { .. }) => Ok(()),
        Ok(ServerMsg::Error { kind, .. }) => Err(kind),
        other => panic!("{other:?}"),
    }
}

#[test]
fn one_network_of_many_addresses_gets_its_share_of_rooms() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(Server::bind(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            rooms: RoomsConfig {
                // Enough attempts for the test's 40 opens; the room cap is what is tested.
                join_burst_per_network: 100.0,
                ..RoomsConfig::default()
            },
        }))
        .unwrap();
    let rv = server.local_addr();
    rt.spawn(server.run());
    let got: Vec<_> = (2..42)
        .map(|i| open_from(&format!("127.0.0.{i}"), rv))
        .collect();
    assert_eq!(got.iter().filter(|r| r.is_ok()).count(), 16, "{got:?}");
    assert!(got[16..].iter().all(|r| *r == Err(ErrorKind::TooManyRooms)));
    assert_eq!(open_from("127.0.1.2", rv), Ok(()));
}
