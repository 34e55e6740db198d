//! Host candidates: the addresses of this machine the media socket can be reached on.

use std::net::{IpAddr, SocketAddr};

/// For a socket bound to a specific IP, just that address; for a wildcard bind, every
/// non-loopback interface address of the same family (loopback too when it is all there is).
pub fn host_candidates(local: SocketAddr) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let v4 = local.is_ipv4();
    let ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| ip.is_ipv4() == v4 || !v4)
        .filter(|ip| match ip {
            // Link-local v6 needs a scope id the peer cannot use.
            IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 != 0xfe80,
            IpAddr::V4(_) => true,
        })
        .collect();
    let mut out: Vec<SocketAddr> = ips
        .iter()
        .filter(|ip| !ip.is_loopback())
        .map(|ip| SocketAddr::new(*ip, local.port()))
        .collect();
    if out.is_empty() {
        out = ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, local.port()))
            .collect();
    }
    out.truncate(crate::wire::signal::MAX_CANDIDATES);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specific_bind_is_the_only_candidate() {
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(host_candidates(a), vec![a]);
    }

    #[test]
    fn wildcard_bind_lists_interfaces_with_the_port() {
        let c = host_candidates("0.0.0.0:5001".parse().unwrap());
        assert!(!c.is_empty());
        assert!(c.iter().all(|a| a.port() == 5001 && a.is_ipv4()));
    }
}
