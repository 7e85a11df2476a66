//! The signature on the agent's own Record-Route entries:
//! `<sip:198.18.2.1:5060;lr;mr=…>`, where `mr` is HMAC-SHA256 over the
//! Call-ID with the agent's secret, cut to 128 bits (32 hex digits).
//!
//! Why: the UAs send in-dialog requests with the recorded route set
//! (RFC 3261 §12.2.1.1), so a request carrying our entry with a valid
//! `mr` for its Call-ID belongs to a call that this agent (or this agent
//! before a restart: the secret survives it) record-routed — one admitted
//! by `invite-rate` and `max-calls`. Nobody without the secret can make
//! one for another Call-ID; a party of the call sees its own. The secret
//! itself is loaded by the runtime (`runtime/secret.rs`).
//!
//! RFC 3261 §16.6 step 4 lets a proxy put anything it likes into its own
//! Record-Route URI's parameters; §16.4 gives them back to it in the Route
//! header unchanged.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// URI parameter carrying the signature.
pub const PARAM: &str = "mr";

/// Bytes of the HMAC kept: 128 bits, half the hash output, as RFC 2104 §5
/// recommends for a truncated HMAC.
const TAG_BYTES: usize = 16;

/// Shortest secret accepted, bytes.
pub const MIN_SECRET: usize = 32;

/// Domain separation: this key signs nothing else, but a later use of the
/// same secret must not be able to produce these tags.
const CONTEXT: &[u8] = b"media-relay record-route v1\0";

/// The agent's Record-Route signing key.
#[derive(Clone)]
pub struct RouteKey(Vec<u8>);

impl std::fmt::Debug for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.write_str("RouteKey(..)")
    }
}

impl RouteKey {
    /// A key from secret bytes; `None` when shorter than [`MIN_SECRET`].
    pub fn new(secret: &[u8]) -> Option<Self> {
        (secret.len() >= MIN_SECRET).then(|| Self(secret.to_vec()))
    }

    fn mac(&self, call_id: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(CONTEXT);
        mac.update(call_id.as_bytes());
        mac
    }

    /// The `mr` value for `call_id` (Call-IDs compare case-sensitively,
    /// §8.1.1.4: so does this).
    pub fn sign(&self, call_id: &str) -> String {
        let tag = self.mac(call_id).finalize().into_bytes();
        tag[..TAG_BYTES]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `value` is the `mr` of `call_id` (compared in constant time).
    pub fn verify(&self, call_id: &str, value: &str) -> bool {
        let Some(tag) = unhex(value) else {
            return false;
        };
        tag.len() == TAG_BYTES && self.mac(call_id).verify_truncated_left(&tag).is_ok()
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_per_call_and_key() {
        let k = RouteKey::new(&[7; 32]).unwrap();
        let other = RouteKey::new(&[8; 32]).unwrap();
        let s = k.sign("call-1@198.18.1.2");
        assert_eq!(s.len(), 32);
        assert!(k.verify("call-1@198.18.1.2", &s));
        assert!(k.verify("call-1@198.18.1.2", &s.to_uppercase()), "hex case");
        assert!(!k.verify("call-2@198.18.1.2", &s), "another call");
        assert!(!k.verify("CALL-1@198.18.1.2", &s), "Call-ID case matters");
        assert!(!other.verify("call-1@198.18.1.2", &s), "another key");
        assert!(!k.verify("call-1@198.18.1.2", &s[..30]), "truncated");
        assert!(!k.verify("call-1@198.18.1.2", ""));
        assert!(!k.verify("call-1@198.18.1.2", "zz"));
        assert!(RouteKey::new(&[1; 31]).is_none());
        assert_eq!(format!("{k:?}"), "RouteKey(..)");
    }
}
