//! Short human codes in Crockford base32: a room code of six characters (30 bits, `K7F-Q2M`)
//! that the rendezvous knows, and the pairing code people share, which adds a secret of four
//! (20 bits, `K7F-Q2M-4X9P`) that only sender and viewers know (see `peer::pairing`).
//!
//! The alphabet has no I, L, O or U, and parsing forgives case, spaces, dashes and the
//! look-alikes people type (O for 0, I and L for 1).

use std::fmt;
use std::str::FromStr;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in a code.
pub const CODE_CHARS: usize = 6;
/// Bits of entropy in a code.
pub const CODE_BITS: u32 = 5 * CODE_CHARS as u32;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomCode(u32);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a room code (six letters and digits, like K7F-Q2M)")]
pub struct BadCode(pub String);

impl RoomCode {
    pub fn from_bits(bits: u32) -> Self {
        Self(bits & ((1 << CODE_BITS) - 1))
    }
    pub fn bits(self) -> u32 {
        self.0
    }
    pub fn random(rng: &mut impl rand::Rng) -> Self {
        Self::from_bits(rng.gen())
    }
}

impl fmt::Display for RoomCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(CODE_CHARS + 1);
        for i in 0..CODE_CHARS {
            if i == 3 {
                s.push('-');
            }
            let shift = 5 * (CODE_CHARS - 1 - i);
            s.push(ALPHABET[((self.0 >> shift) & 31) as usize] as char);
        }
        f.write_str(&s)
    }
}

impl fmt::Debug for RoomCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomCode({self})")
    }
}

impl FromStr for RoomCode {
    type Err = BadCode;
    fn from_str(s: &str) -> Result<Self, BadCode> {
        match decode(s) {
            Some((bits, CODE_CHARS)) => Ok(Self(bits as u32)),
            _ => Err(BadCode(s.to_string())),
        }
    }
}

/// Characters in a pairing secret.
pub const SECRET_CHARS: usize = 4;
/// Bits of entropy in a pairing secret.
pub const SECRET_BITS: u32 = 5 * SECRET_CHARS as u32;

/// The part of a pairing code the rendezvous never learns.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PairingSecret(u32);

impl PairingSecret {
    pub fn from_bits(bits: u32) -> Self {
        Self(bits & ((1 << SECRET_BITS) - 1))
    }
    pub fn bits(self) -> u32 {
        self.0
    }
    pub fn random(rng: &mut impl rand::Rng) -> Self {
        Self::from_bits(rng.gen())
    }
}

impl fmt::Display for PairingSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode(self.0, SECRET_CHARS))
    }
}

/// Not printed in logs by accident.
impl fmt::Debug for PairingSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingSecret(..)")
    }
}

impl FromStr for PairingSecret {
    type Err = BadCode;
    fn from_str(s: &str) -> Result<Self, BadCode> {
        let (bits, n) = decode(s).ok_or_else(|| BadCode(s.to_string()))?;
        if n != SECRET_CHARS {
            return Err(BadCode(s.to_string()));
        }
        Ok(Self(bits as u32))
    }
}

/// What a sender prints and a viewer types: the room, then the secret, `K7F-Q2M-4X9P`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PairingCode {
    pub room: RoomCode,
    pub secret: PairingSecret,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPairingCode {
    #[error("`{0}` is not a code (ten letters and digits, like K7F-Q2M-4X9P)")]
    Malformed(String),
    #[error(
        "`{0}` is only the room part of a code: the sender prints three parts, like K7F-Q2M-4X9P"
    )]
    NoSecret(String),
}

impl fmt::Display for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.room, self.secret)
    }
}

impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PairingCode({}-..)", self.room)
    }
}

impl FromStr for PairingCode {
    type Err = BadPairingCode;
    fn from_str(s: &str) -> Result<Self, BadPairingCode> {
        match decode(s) {
            Some((bits, n)) if n == CODE_CHARS + SECRET_CHARS => Ok(Self {
                room: RoomCode::from_bits((bits >> SECRET_BITS) as u32),
                secret: PairingSecret::from_bits(bits as u32),
            }),
            Some((_, CODE_CHARS)) => Err(BadPairingCode::NoSecret(s.to_string())),
            _ => Err(BadPairingCode::Malformed(s.to_string())),
        }
    }
}

fn encode(bits: u32, chars: usize) -> String {
    (0..chars)
        .map(|i| ALPHABET[((bits >> (5 * (chars - 1 - i))) & 31) as usize] as char)
        .collect()
}

/// The bits of a code and how many characters it had; `None` for a character outside the
/// alphabet or more than a pairing code holds.
fn decode(s: &str) -> Option<(u64, usize)> {
    let mut bits = 0u64;
    let mut n = 0;
    for c in s.chars() {
        if c == '-' || c == ' ' {
            continue;
        }
        let c = match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        };
        let v = ALPHABET.iter().position(|&a| a as char == c)?;
        n += 1;
        if n > CODE_CHARS + SECRET_CHARS {
            return None;
        }
        bits = (bits << 5) | v as u64;
    }
    Some((bits, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn display_and_forgiving_parse() {
        let c = RoomCode::from_bits(0x3FFF_FFFF);
        assert_eq!(c.to_string(), "ZZZ-ZZZ");
        assert_eq!(
            "k7f q2m".parse::<RoomCode>().unwrap().to_string(),
            "K7F-Q2M"
        );
        assert_eq!(
            "o1l-iab".parse::<RoomCode>().unwrap().to_string(),
            "011-1AB"
        );
        assert!("K7F-Q2".parse::<RoomCode>().is_err());
        assert!("K7F-Q2MM".parse::<RoomCode>().is_err());
        assert!("K7F-Q2U".parse::<RoomCode>().is_err());
        assert!("".parse::<RoomCode>().is_err());
    }

    #[test]
    fn pairing_codes_have_three_parts() {
        let c: PairingCode = "k7f q2m 4x9p".parse().unwrap();
        assert_eq!(c.to_string(), "K7F-Q2M-4X9P");
        assert_eq!(c.room.to_string(), "K7F-Q2M");
        assert_eq!(c.secret.to_string(), "4X9P");
        assert_eq!(
            "K7F-Q2M".parse::<PairingCode>(),
            Err(BadPairingCode::NoSecret("K7F-Q2M".into()))
        );
        for bad in ["K7F-Q2M-4X9", "K7F-Q2M-4X9PP", "K7F-Q2M-4X9U", ""] {
            assert!(matches!(
                bad.parse::<PairingCode>(),
                Err(BadPairingCode::Malformed(_))
            ));
        }
        assert!("K7F-Q2M-4X9P".parse::<RoomCode>().is_err());
        // The secret never shows in debug output.
        assert!(!format!("{c:?}").contains("4X9P"));
    }

    proptest! {
        #[test]
        fn pairing_roundtrip(room in 0u32..(1 << CODE_BITS), secret in 0u32..(1 << SECRET_BITS)) {
            let c = PairingCode { room: RoomCode::from_bits(room), secret: PairingSecret::from_bits(secret) };
            prop_assert_eq!(c.to_string().parse::<PairingCode>().unwrap(), c);
        }
        #[test]
        fn roundtrip(bits in 0u32..(1 << CODE_BITS)) {
            let c = RoomCode::from_bits(bits);
            prop_assert_eq!(c.to_string().parse::<RoomCode>().unwrap(), c);
        }
        #[test]
        fn parse_never_panics(s in ".{0,20}") {
            let _ = s.parse::<RoomCode>();
        }
    }
}
