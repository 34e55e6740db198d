//! End-to-end pairing, sans-IO: the code's secret part (which the rendezvous never sees) keys a
//! SPAKE2 exchange between viewer and sender inside their QUIC connection, and each side proves
//! it holds the same key *for this TLS session* (a MAC over the TLS exporter). A rendezvous that
//! hands out its own certificate fingerprint and relays both connections gets two TLS sessions
//! with different exporters, and no key without the secret: both ends refuse.
//!
//! Messages ride the control stream: `ViewerHello { pake }` → `Pairing { pake, confirm }` →
//! `PairConfirm { confirm }` → `Hello`.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use spake2::{Ed25519Group, Identity, Password, Spake2};

use crate::code::PairingSecret;

/// Label of the TLS exporter both sides read (RFC 5705 / RFC 8446 §7.5).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-inclubit-pairing";
/// Bytes of exporter output bound into the confirmations.
pub const BINDING_LEN: usize = 32;
/// Length of a confirmation MAC.
pub const CONFIRM_LEN: usize = 32;

pub type Binding = [u8; BINDING_LEN];
pub type Confirm = [u8; CONFIRM_LEN];

const VIEWER_ID: &[u8] = b"inclubit viewer";
const SENDER_ID: &[u8] = b"inclubit sender";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairingError {
    /// The other side's SPAKE2 message is malformed.
    #[error("malformed pairing message")]
    Malformed,
    /// The other side does not hold the same secret for this TLS session: a wrong code, or a
    /// party between the two.
    #[error("the other side does not know this code's secret part (a wrong code, or someone between you)")]
    Mismatch,
}

/// The viewer's half, from its first message to the sender's confirmation.
pub struct ViewerPairing {
    spake: Spake2<Ed25519Group>,
}

impl ViewerPairing {
    /// Starts with the code's secret; returns the message for [`Control::ViewerHello`].
    ///
    /// [`Control::ViewerHello`]: crate::wire::media::Control::ViewerHello
    pub fn start(secret: PairingSecret) -> (Self, Vec<u8>) {
        let (spake, msg) = Spake2::<Ed25519Group>::start_a(
            &password(secret),
            &Identity::new(VIEWER_ID),
            &Identity::new(SENDER_ID),
        );
        (Self { spake }, msg)
    }

    /// The sender's answer: checks its confirmation and returns ours.
    pub fn finish(
        self,
        theirs: &[u8],
        sender_confirm: &Confirm,
        binding: &Binding,
    ) -> Result<Confirm, PairingError> {
        let key = self
            .spake
            .finish(theirs)
            .map_err(|_| PairingError::Malformed)?;
        verify(&key, SENDER_ID, binding, sender_confirm)?;
        Ok(confirm(&key, VIEWER_ID, binding))
    }
}

/// The sender's half: answers a viewer's message, then checks the viewer's confirmation.
pub struct SenderPairing {
    key: Vec<u8>,
    binding: Binding,
}

impl SenderPairing {
    /// Answers the viewer's message: our message and our confirmation, and what to check the
    /// viewer's confirmation against.
    pub fn answer(
        secret: PairingSecret,
        viewer_msg: &[u8],
        binding: &Binding,
    ) -> Result<(Self, Vec<u8>, Confirm), PairingError> {
        let (spake, msg) = Spake2::<Ed25519Group>::start_b(
            &password(secret),
            &Identity::new(VIEWER_ID),
            &Identity::new(SENDER_ID),
        );
        let key = spake
            .finish(viewer_msg)
            .map_err(|_| PairingError::Malformed)?;
        let ours = confirm(&key, SENDER_ID, binding);
        Ok((
            Self {
                key,
                binding: *binding,
            },
            msg,
            ours,
        ))
    }

    /// The viewer's confirmation: `Ok` only if it holds the same key for this TLS session.
    pub fn check(&self, viewer_confirm: &Confirm) -> Result<(), PairingError> {
        verify(&self.key, VIEWER_ID, &self.binding, viewer_confirm)
    }
}

fn password(secret: PairingSecret) -> Password {
    Password::new(format!("inclubit pairing {secret}").into_bytes())
}

fn mac(key: &[u8], who: &[u8], binding: &Binding) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"inclubit pairing confirm");
    mac.update(who);
    mac.update(binding);
    mac
}

fn confirm(key: &[u8], who: &[u8], binding: &Binding) -> Confirm {
    mac(key, who, binding).finalize().into_bytes().into()
}

/// Constant-time.
fn verify(key: &[u8], who: &[u8], binding: &Binding, got: &Confirm) -> Result<(), PairingError> {
    mac(key, who, binding)
        .verify_slice(got)
        .map_err(|_| PairingError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> PairingSecret {
        s.parse().unwrap()
    }

    fn pair(
        viewer: PairingSecret,
        sender: PairingSecret,
        vb: Binding,
        sb: Binding,
    ) -> Result<(), PairingError> {
        let (v, msg) = ViewerPairing::start(viewer);
        let (s, reply, sc) = SenderPairing::answer(sender, &msg, &sb)?;
        let vc = v.finish(&reply, &sc, &vb)?;
        s.check(&vc)
    }

    #[test]
    fn the_same_secret_on_one_session_pairs() {
        assert_eq!(
            pair(secret("4X9P"), secret("4X9P"), [1; 32], [1; 32]),
            Ok(())
        );
    }

    #[test]
    fn a_wrong_secret_is_refused_by_the_viewer() {
        assert_eq!(
            pair(secret("4X9P"), secret("4X9Q"), [1; 32], [1; 32]),
            Err(PairingError::Mismatch)
        );
    }

    #[test]
    fn a_party_in_the_middle_is_refused_even_with_the_secret() {
        // Two TLS sessions (viewer↔middle, middle↔sender): the exporters differ.
        assert_eq!(
            pair(secret("4X9P"), secret("4X9P"), [1; 32], [2; 32]),
            Err(PairingError::Mismatch)
        );
    }

    #[test]
    fn the_sender_refuses_a_viewer_that_lies_about_its_confirmation() {
        let (_, msg) = ViewerPairing::start(secret("4X9P"));
        let (s, _, _) = SenderPairing::answer(secret("4X9P"), &msg, &[1; 32]).unwrap();
        assert_eq!(s.check(&[0; 32]), Err(PairingError::Mismatch));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for bad in [&[][..], &[0u8; 5][..], &[0xff; 33][..], &[0x41; 200][..]] {
            let r = SenderPairing::answer(secret("4X9P"), bad, &[1; 32]);
            assert!(r.is_err());
            let (v, _) = ViewerPairing::start(secret("4X9P"));
            assert!(v.finish(bad, &[0; 32], &[1; 32]).is_err());
        }
    }
}
