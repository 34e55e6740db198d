//! Bounds-checked reading and writing of the little binary formats in this module.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why bytes from the network could not be decoded. Never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message truncated")]
    Truncated,
    #[error("message too long ({0} bytes)")]
    TooLong(usize),
    #[error("not an inclubit message")]
    BadMagic,
    #[error("unsupported wire version {0}")]
    Version(u8),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("invalid value for {0}")]
    Invalid(&'static str),
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub fn i16(&mut self) -> Result<i16, WireError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub fn addr(&mut self) -> Result<SocketAddr, WireError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return Err(WireError::Invalid("address family")),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    /// A list with a one-byte count, at most `max` entries.
    pub fn addrs(&mut self, max: usize) -> Result<Vec<SocketAddr>, WireError> {
        let n = self.u8()? as usize;
        if n > max {
            return Err(WireError::Invalid("address count"));
        }
        (0..n).map(|_| self.addr()).collect()
    }

    /// A UTF-8 string with a one-byte length.
    pub fn short_str(&mut self) -> Result<&'a str, WireError> {
        let n = self.u8()? as usize;
        std::str::from_utf8(self.bytes(n)?).map_err(|_| WireError::Invalid("utf-8"))
    }

    /// Bytes with a one-byte length.
    pub fn short_bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u8()? as usize;
        self.bytes(n)
    }

    pub fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing(self.buf.len()))
        }
    }
}

#[derive(Default)]
pub(crate) struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn i16(&mut self, v: i16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    pub fn addr(&mut self, a: &SocketAddr) {
        match a.ip() {
            IpAddr::V4(ip) => {
                self.u8(4);
                self.bytes(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.u8(6);
                self.bytes(&ip.octets());
            }
        }
        self.u16(a.port());
    }
    /// Writes at most `max` addresses (callers keep lists short; extra entries are dropped).
    pub fn addrs(&mut self, list: &[SocketAddr], max: usize) {
        let n = list.len().min(max);
        self.u8(n as u8);
        for a in &list[..n] {
            self.addr(a);
        }
    }
    /// At most 255 bytes (callers pass short fields), with a one-byte length.
    pub fn short_bytes(&mut self, v: &[u8]) {
        let v = &v[..v.len().min(255)];
        self.u8(v.len() as u8);
        self.bytes(v);
    }
    /// Strings longer than 255 bytes are cut at a char boundary.
    pub fn short_str(&mut self, s: &str) {
        let mut end = s.len().min(255);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u8(end as u8);
        self.bytes(&s.as_bytes()[..end]);
    }
}
