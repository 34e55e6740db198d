//! Short human room codes: six characters of Crockford base32 (30 bits), shown as `K7F-Q2M`.
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
        let mut bits = 0u32;
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
            let v = ALPHABET
                .iter()
                .position(|&a| a as char == c)
                .ok_or_else(|| BadCode(s.to_string()))?;
            n += 1;
            if n > CODE_CHARS {
                return Err(BadCode(s.to_string()));
            }
            bits = (bits << 5) | v as u32;
        }
        if n != CODE_CHARS {
            return Err(BadCode(s.to_string()));
        }
        Ok(Self(bits))
    }
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

    proptest! {
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
