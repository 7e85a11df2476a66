//! The small part of STUN (RFC 8489) public address discovery needs:
//! Binding requests out, Binding responses in.
//!
//! A request is the 20-byte header plus FINGERPRINT (so a server or
//! middlebox can tell it from other traffic on the port). A response is
//! accepted only with the magic cookie, the transaction id of a request of
//! ours, a consistent length and, when it carries one, a correct
//! FINGERPRINT; its mapped address is XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS
//! from an RFC 3489 server. Everything else is an error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

pub const MAGIC_COOKIE: u32 = 0x2112_a442;
pub const HEADER_LEN: usize = 20;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;
const MAPPED_ADDRESS: u16 = 0x0001;
const ERROR_CODE: u16 = 0x0009;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
const FINGERPRINT: u16 = 0x8028;
/// RFC 8489 §14.7: the CRC-32 is XORed with this.
const FINGERPRINT_XOR: u32 = 0x5354_554e;

pub type TransactionId = [u8; 12];

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum StunError {
    #[error("{len} bytes: shorter than a STUN header")]
    Short { len: usize },
    #[error("not a STUN message (first bits or magic cookie wrong)")]
    NotStun,
    #[error("message length {declared} disagrees with the datagram's {actual} bytes")]
    Length { declared: usize, actual: usize },
    #[error("unexpected message type {0:#06x}")]
    Type(u16),
    #[error("attribute {attr:#06x} runs past the end of the message")]
    Truncated { attr: u16 },
    #[error("FINGERPRINT mismatch")]
    Fingerprint,
    #[error("malformed address attribute {attr:#06x}")]
    Address { attr: u16 },
    #[error("the server answered with error {code} {reason:?}")]
    ErrorResponse { code: u16, reason: String },
    #[error("the response carries no mapped address")]
    NoAddress,
}

/// A Binding request with transaction id `id` and FINGERPRINT.
pub fn binding_request(id: &TransactionId) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER_LEN + 8);
    m.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
    m.extend_from_slice(&8u16.to_be_bytes());
    m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m.extend_from_slice(id);
    let crc = crc32fast::hash(&m) ^ FINGERPRINT_XOR;
    m.extend_from_slice(&FINGERPRINT.to_be_bytes());
    m.extend_from_slice(&4u16.to_be_bytes());
    m.extend_from_slice(&crc.to_be_bytes());
    m
}

/// A decoded message: its type, transaction id and the attributes this
/// client uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: u16,
    pub id: TransactionId,
    pub xor_mapped: Option<SocketAddr>,
    pub mapped: Option<SocketAddr>,
    pub error: Option<(u16, String)>,
    pub fingerprint: bool,
}

/// The transaction id of a datagram that looks like STUN (to match it to
/// a request before decoding it in full).
pub fn transaction_id(buf: &[u8]) -> Option<TransactionId> {
    if buf.len() < HEADER_LEN || buf[4..8] != MAGIC_COOKIE.to_be_bytes() {
        return None;
    }
    buf[8..20].try_into().ok()
}

/// Decode any STUN message (RFC 8489 §5, §14): unknown attributes are
/// skipped; FINGERPRINT, when present, must be last and correct.
pub fn decode(buf: &[u8]) -> Result<Message, StunError> {
    if buf.len() < HEADER_LEN {
        return Err(StunError::Short { len: buf.len() });
    }
    if buf[0] & 0xc0 != 0 || buf[4..8] != MAGIC_COOKIE.to_be_bytes() {
        return Err(StunError::NotStun);
    }
    let kind = u16::from_be_bytes([buf[0], buf[1]]);
    let declared = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if declared % 4 != 0 || HEADER_LEN + declared != buf.len() {
        return Err(StunError::Length {
            declared,
            actual: buf.len(),
        });
    }
    let mut id = [0u8; 12];
    id.copy_from_slice(&buf[8..20]);
    let mut m = Message {
        kind,
        id,
        xor_mapped: None,
        mapped: None,
        error: None,
        fingerprint: false,
    };
    let mut at = HEADER_LEN;
    while at < buf.len() {
        if m.fingerprint {
            // Nothing may follow FINGERPRINT.
            return Err(StunError::Fingerprint);
        }
        let attr = u16::from_be_bytes([buf[at], buf[at + 1]]);
        let len = usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]]));
        let start = at + 4;
        let end = start + len;
        let padded = start + len.div_ceil(4) * 4;
        if padded > buf.len() {
            return Err(StunError::Truncated { attr });
        }
        let value = &buf[start..end];
        match attr {
            XOR_MAPPED_ADDRESS => m.xor_mapped = Some(address(attr, value, Some(&id))?),
            MAPPED_ADDRESS => m.mapped = Some(address(attr, value, None)?),
            ERROR_CODE => {
                if value.len() < 4 {
                    return Err(StunError::Truncated { attr });
                }
                let code = u16::from(value[2] & 0x07) * 100 + u16::from(value[3]);
                m.error = Some((code, String::from_utf8_lossy(&value[4..]).into_owned()));
            }
            FINGERPRINT => {
                if value.len() != 4 {
                    return Err(StunError::Fingerprint);
                }
                // The CRC covers the message up to the attribute, with the
                // header's length as it is (the attribute included).
                let want = crc32fast::hash(&buf[..at]) ^ FINGERPRINT_XOR;
                if value != want.to_be_bytes() {
                    return Err(StunError::Fingerprint);
                }
                m.fingerprint = true;
            }
            _ => {}
        }
        at = padded;
    }
    Ok(m)
}

/// (XOR-)MAPPED-ADDRESS (RFC 8489 §14.1, §14.2); `xor` is the
/// transaction id when the value is XORed.
fn address(attr: u16, v: &[u8], xor: Option<&TransactionId>) -> Result<SocketAddr, StunError> {
    let bad = || StunError::Address { attr };
    if v.len() < 4 {
        return Err(bad());
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut port = u16::from_be_bytes([v[2], v[3]]);
    if xor.is_some() {
        port ^= u16::from_be_bytes([cookie[0], cookie[1]]);
    }
    let ip = match (v[1], v.len()) {
        (0x01, 8) => {
            let mut a = [v[4], v[5], v[6], v[7]];
            if xor.is_some() {
                for (b, k) in a.iter_mut().zip(cookie) {
                    *b ^= k;
                }
            }
            IpAddr::V4(Ipv4Addr::from(a))
        }
        (0x02, 20) => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&v[4..20]);
            if let Some(id) = xor {
                let key = cookie.iter().chain(id.iter());
                for (b, k) in a.iter_mut().zip(key) {
                    *b ^= k;
                }
            }
            IpAddr::V6(Ipv6Addr::from(a))
        }
        _ => return Err(bad()),
    };
    Ok(SocketAddr::new(ip, port))
}

/// The mapped address a Binding response for request `id` reports.
pub fn binding_response(buf: &[u8], id: &TransactionId) -> Result<SocketAddr, StunError> {
    let m = decode(buf)?;
    if m.id != *id {
        return Err(StunError::NotStun);
    }
    match m.kind {
        BINDING_SUCCESS => m.xor_mapped.or(m.mapped).ok_or(StunError::NoAddress),
        BINDING_ERROR => {
            let (code, reason) = m.error.unwrap_or((0, String::new()));
            Err(StunError::ErrorResponse { code, reason })
        }
        other => Err(StunError::Type(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: TransactionId = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    /// RFC 5769 §2.1: Sample Request.
    const REQUEST: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74,
        0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e,
        0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36,
        0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
        0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5,
        0x7a, 0x3b, 0xcf,
    ];

    /// RFC 5769 §2.2: Sample IPv4 Response (192.0.2.1 port 32853).
    const RESPONSE_V4: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    /// RFC 5769 §2.3: Sample IPv6 Response
    /// (2001:db8:1234:5678:11:2233:4455:6677 port 32853).
    const RESPONSE_V6: [u8; 92] = [
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01,
        0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9,
        0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
        0x0b, 0x4c,
    ];

    #[test]
    fn rfc5769_request_decodes_with_its_fingerprint() {
        let m = decode(&REQUEST).unwrap();
        assert_eq!(m.kind, BINDING_REQUEST);
        assert_eq!(m.id, ID);
        assert!(m.fingerprint, "FINGERPRINT present and correct");
        assert_eq!(transaction_id(&REQUEST), Some(ID));
    }

    #[test]
    fn rfc5769_ipv4_response() {
        let m = decode(&RESPONSE_V4).unwrap();
        assert!(m.fingerprint);
        assert_eq!(
            binding_response(&RESPONSE_V4, &ID).unwrap(),
            "192.0.2.1:32853".parse().unwrap()
        );
    }

    #[test]
    fn rfc5769_ipv6_response() {
        let m = decode(&RESPONSE_V6).unwrap();
        assert!(m.fingerprint);
        assert_eq!(
            binding_response(&RESPONSE_V6, &ID).unwrap(),
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap()
        );
    }

    #[test]
    fn a_flipped_bit_fails_the_fingerprint() {
        for i in [9, 30, 45] {
            let mut r = RESPONSE_V4;
            r[i] ^= 0x10;
            assert!(decode(&r).is_err(), "byte {i}");
        }
    }

    #[test]
    fn another_transaction_is_refused() {
        let mut other = ID;
        other[0] ^= 1;
        assert_eq!(
            binding_response(&RESPONSE_V4, &other),
            Err(StunError::NotStun)
        );
    }

    #[test]
    fn our_request_is_well_formed() {
        let id = [7u8; 12];
        let r = binding_request(&id);
        assert_eq!(r.len(), 28);
        let m = decode(&r).unwrap();
        assert_eq!((m.kind, m.id, m.fingerprint), (BINDING_REQUEST, id, true));
    }

    /// An RFC 3489 server's MAPPED-ADDRESS, no fingerprint.
    #[test]
    fn mapped_address_is_the_fallback() {
        let mut r = vec![0x01, 0x01, 0x00, 0x0c];
        r.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        r.extend_from_slice(&ID);
        r.extend_from_slice(&[
            0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x13, 0x88, 198, 18, 50, 1,
        ]);
        assert_eq!(
            binding_response(&r, &ID).unwrap(),
            "198.18.50.1:5000".parse().unwrap()
        );
    }

    #[test]
    fn error_responses_and_garbage_are_errors_not_panics() {
        // Declared longer than the datagram.
        let mut r = RESPONSE_V4.to_vec();
        r.truncate(r.len() - 4);
        assert!(matches!(
            binding_response(&r, &ID),
            Err(StunError::Length { .. })
        ));
        // Every prefix and every single-byte corruption of the vectors.
        for v in [&REQUEST[..], &RESPONSE_V4[..], &RESPONSE_V6[..]] {
            for n in 0..v.len() {
                let _ = decode(&v[..n]);
            }
            for i in 0..v.len() {
                let mut c = v.to_vec();
                c[i] ^= 0xff;
                let _ = decode(&c);
            }
        }
        let mut e = vec![0x01, 0x11, 0x00, 0x0c];
        e.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        e.extend_from_slice(&ID);
        e.extend_from_slice(&[0x00, 0x09, 0x00, 0x08, 0, 0, 4, 0, b'B', b'a', b'd', b'!']);
        assert_eq!(
            binding_response(&e, &ID),
            Err(StunError::ErrorResponse {
                code: 400,
                reason: "Bad!".into()
            })
        );
        assert_eq!(decode(&[0u8; 4]), Err(StunError::Short { len: 4 }));
    }
}
