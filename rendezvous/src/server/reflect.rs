//! Address reflection for standard tools: a STUN Binding responder (RFC 8489, no
//! authentication, answers with XOR-MAPPED-ADDRESS). inclubit peers learn their reflexive
//! address from the rendezvous's own answers; this serves routers and others that speak STUN,
//! e.g. miniupnpd's `ext_perform_stun`.

use std::net::{IpAddr, SocketAddr};

const MAGIC: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];
const XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// True for a STUN Binding request (anything else STUN-like is ignored).
pub fn is_binding_request(d: &[u8]) -> bool {
    d.len() >= 20
        && d[..2] == BINDING_REQUEST
        && d[4..8] == MAGIC
        && u16::from_be_bytes([d[2], d[3]]) as usize == d.len() - 20
}

/// The Binding success response telling `from` its address as seen here.
pub fn binding_response(request: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    if !is_binding_request(request) {
        return None;
    }
    let txn = &request[8..20];
    let port = from.port() ^ 0x2112;
    let mut value = vec![0u8];
    match from.ip() {
        IpAddr::V4(ip) => {
            value.push(1);
            value.extend_from_slice(&port.to_be_bytes());
            for (b, m) in ip.octets().iter().zip(MAGIC) {
                value.push(b ^ m);
            }
        }
        IpAddr::V6(ip) => {
            value.push(2);
            value.extend_from_slice(&port.to_be_bytes());
            let key: Vec<u8> = MAGIC.iter().chain(txn).copied().collect();
            for (b, k) in ip.octets().iter().zip(key) {
                value.push(b ^ k);
            }
        }
    }
    let mut out = Vec::with_capacity(20 + 4 + value.len());
    out.extend_from_slice(&BINDING_SUCCESS);
    out.extend_from_slice(&((4 + value.len()) as u16).to_be_bytes());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(txn);
    out.extend_from_slice(&XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(&value);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_a_binding_request_with_the_xored_address() {
        let mut req = vec![0x00, 0x01, 0, 0];
        req.extend_from_slice(&MAGIC);
        req.extend_from_slice(&[7; 12]);
        let from: SocketAddr = "198.18.0.2:54321".parse().unwrap();
        let resp = binding_response(&req, from).unwrap();
        assert_eq!(&resp[..2], &BINDING_SUCCESS);
        assert_eq!(&resp[8..20], &[7; 12]);
        // XOR-MAPPED-ADDRESS, family 1, port and address XORed with the cookie.
        assert_eq!(&resp[20..24], &[0x00, 0x20, 0, 8]);
        assert_eq!(u16::from_be_bytes([resp[26], resp[27]]) ^ 0x2112, 54321);
        let ip: Vec<u8> = resp[28..32].iter().zip(MAGIC).map(|(b, m)| b ^ m).collect();
        assert_eq!(ip, [198, 18, 0, 2]);
    }

    #[test]
    fn other_bytes_are_not_stun() {
        assert!(binding_response(&[0x21, 1, 1], "1.2.3.4:5".parse().unwrap()).is_none());
        let mut req = vec![0x00, 0x01, 0, 4];
        req.extend_from_slice(&MAGIC);
        req.extend_from_slice(&[0; 12]);
        // Declared length does not match.
        assert!(!is_binding_request(&req));
    }
}
