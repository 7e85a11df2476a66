//! Incremental Internet checksum updates (RFC 1624).
//!
//! When a 16-bit word `m` of checksummed data becomes `m'`, the checksum
//! `HC` becomes `HC' = ~(~HC + ~m + m')` in one's complement arithmetic
//! (RFC 1624, section 3, eqn. 3). Eqn. 3 — not eqn. 2 — is the form that
//! never yields the `0x0000`/`0xFFFF` ambiguity the RFC discusses in
//! section 4, so the result equals a full recomputation bit for bit.
//!
//! The one's complement sum does not depend on byte order (RFC 1071
//! §2(B)): words and checksum may be taken in network order (as the tests
//! and userspace do) or as raw native-endian loads of the wire bytes (as the
//! XDP program does, saving byte swaps), as long as one `Delta` and the
//! checksum it is applied to use the same order. [`Delta`] accumulates `~m + m'` for
//! every changed word (addresses, ports, TTL) and [`Delta::apply`] folds it
//! into a checksum once, so a packet rewrite costs one fold whatever the
//! number of changed fields.
//!
//! UDP adds one rule (RFC 768): a computed checksum of zero is sent as
//! `0xFFFF`, and over IPv4 a checksum of zero means "none" and stays zero
//! ([`udp_update`]).

/// Sum of `~old + new` over every changed 16-bit word.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u32);

impl Delta {
    /// No change yet.
    #[must_use]
    pub const fn new() -> Self {
        Self(0)
    }

    /// Word `old` became `new`.
    #[inline(always)]
    #[must_use]
    pub const fn word(self, old: u16, new: u16) -> Self {
        // At most a few dozen words are ever added: no u32 overflow.
        Self(self.0 + (!old) as u32 + new as u32)
    }

    /// The 4 bytes (two words) `old` became `new`.
    #[inline(always)]
    #[must_use]
    pub const fn bytes4(self, old: &[u8; 4], new: &[u8; 4]) -> Self {
        self.word(be(old[0], old[1]), be(new[0], new[1]))
            .word(be(old[2], old[3]), be(new[2], new[3]))
    }

    /// The 16 bytes (eight words) `old` became `new`.
    #[inline(always)]
    #[must_use]
    pub const fn bytes16(self, old: &[u8; 16], new: &[u8; 16]) -> Self {
        let mut d = self;
        let mut i = 0;
        while i < 16 {
            d = d.word(be(old[i], old[i + 1]), be(new[i], new[i + 1]));
            i += 2;
        }
        d
    }

    /// The 2 bytes (one word) `old` became `new`.
    #[inline(always)]
    #[must_use]
    pub const fn bytes2(self, old: &[u8; 2], new: &[u8; 2]) -> Self {
        self.word(be(old[0], old[1]), be(new[0], new[1]))
    }

    /// Word `old` left the checksummed data with no word taking its place
    /// (IPv4↔IPv6 bridging: the pseudo-header's addresses change size).
    #[inline(always)]
    #[must_use]
    pub const fn removed(self, old: u16) -> Self {
        Self(self.0 + (!old) as u32)
    }

    /// Word `new` joined the checksummed data (see [`Delta::removed`]).
    #[inline(always)]
    #[must_use]
    pub const fn added(self, new: u16) -> Self {
        Self(self.0 + new as u32)
    }

    /// Apply the accumulated change to checksum `check` (RFC 1624 eqn. 3).
    #[inline(always)]
    #[must_use]
    pub const fn apply(self, check: u16) -> u16 {
        !fold(self.0 + (!check) as u32)
    }
}

#[inline(always)]
const fn be(hi: u8, lo: u8) -> u16 {
    ((hi as u16) << 8) | lo as u16
}

/// Fold a 32-bit one's complement sum to 16 bits (end-around carry).
#[inline(always)]
#[must_use]
pub const fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Whether a header whose 16-bit words (its checksum field included) sum
/// to `sum` carries a valid Internet checksum: the folded sum is all ones
/// (RFC 1071 §1). Byte-order independent, like the sum.
#[inline(always)]
#[must_use]
pub const fn header_ok(sum: u32) -> bool {
    fold(sum) == 0xffff
}

/// Update a UDP checksum. Over IPv4 a zero checksum means "not computed"
/// and stays zero (`zero_means_none`); a computed zero is sent as `0xFFFF`
/// (RFC 768). Over IPv6 the checksum is mandatory (RFC 8200 §8.1).
#[inline(always)]
#[must_use]
pub const fn udp_update(check: u16, delta: Delta, zero_means_none: bool) -> u16 {
    if zero_means_none && check == 0 {
        return 0;
    }
    match delta.apply(check) {
        0 => 0xffff,
        c => c,
    }
}

/// Full Internet checksum of `data` (RFC 1071), for tests and for the
/// userspace side. `initial` is a running 32-bit sum (e.g. a pseudo-header).
#[must_use]
pub fn sum_words(data: &[u8], initial: u32) -> u32 {
    let mut sum = u64::from(initial);
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(be(c[0], c[1]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(be(*last, 0));
    }
    while sum > 0xffff_ffff {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    sum as u32
}

/// `!fold(sum_words(data, initial))`: the checksum to store.
#[must_use]
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    !fold(sum_words(data, initial))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn ipv4_header_checksums_verify() {
        // RFC 1071-style example header (20 bytes) with its checksum.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let c = checksum(&h, 0);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(header_ok(sum_words(&h, 0)));
        h[15] ^= 1;
        assert!(!header_ok(sum_words(&h, 0)));
    }

    fn ipv4_header(src: [u8; 4], dst: [u8; 4], ttl: u8, id: u16) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&48u16.to_be_bytes());
        h[4..6].copy_from_slice(&id.to_be_bytes());
        h[8] = ttl;
        h[9] = 17;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        let c = checksum(&h, 0);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    /// UDP checksum over an IPv4 pseudo-header (RFC 768), mapped 0 → 0xFFFF.
    fn udp4(src: [u8; 4], dst: [u8; 4], udp: &[u8]) -> u16 {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&u16::try_from(udp.len()).unwrap().to_be_bytes());
        match checksum(udp, sum_words(&pseudo, 0)) {
            0 => 0xffff,
            c => c,
        }
    }

    #[test]
    fn rfc1624_example() {
        // RFC 1624 §4 example: HC = 0xDD2F, m = 0x5555 → m' = 0x3285.
        assert_eq!(Delta::new().word(0x5555, 0x3285).apply(0xdd2f), 0x0000);
    }

    #[test]
    fn udp_zero_stays_zero_over_ipv4() {
        let d = Delta::new().word(1, 2);
        assert_eq!(udp_update(0, d, true), 0);
        assert_ne!(udp_update(0, d, false), 0);
    }

    /// UDP checksum over an IPv6 pseudo-header (RFC 8200 §8.1), mapped
    /// 0 → 0xFFFF.
    fn udp6(src: [u8; 16], dst: [u8; 16], udp: &[u8]) -> u16 {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&u32::try_from(udp.len()).unwrap().to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
        match checksum(udp, sum_words(&pseudo, 0)) {
            0 => 0xffff,
            c => c,
        }
    }

    fn words(b: &[u8]) -> impl Iterator<Item = u16> + '_ {
        b.chunks_exact(2).map(|c| be(c[0], c[1]))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// IPv4 → IPv6 and back (bridging): the old addresses' words
        /// removed, the new ones added, ports replaced; the length and
        /// protocol terms of the two pseudo-headers sum alike.
        #[test]
        fn udp_bridged_rewrite_equals_full_recompute(
            src4 in any::<[u8; 4]>(), dst4 in any::<[u8; 4]>(),
            src6 in any::<[u8; 16]>(), dst6 in any::<[u8; 16]>(),
            sp in any::<[u8; 2]>(), dp in any::<[u8; 2]>(),
            nsp in any::<[u8; 2]>(), ndp in any::<[u8; 2]>(),
            payload in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut udp = Vec::new();
            udp.extend_from_slice(&sp);
            udp.extend_from_slice(&dp);
            udp.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
            udp.extend_from_slice(&[0, 0]);
            udp.extend_from_slice(&payload);
            let mut out = udp.clone();
            out[0..2].copy_from_slice(&nsp);
            out[2..4].copy_from_slice(&ndp);
            let ports = |d: Delta| d.bytes2(&sp, &nsp).bytes2(&dp, &ndp);

            let old4 = udp4(src4, dst4, &udp);
            let mut d = ports(Delta::new());
            for w in words(&src4).chain(words(&dst4)) {
                d = d.removed(w);
            }
            for w in words(&src6).chain(words(&dst6)) {
                d = d.added(w);
            }
            prop_assert_eq!(udp_update(old4, d, false), udp6(src6, dst6, &out));

            let old6 = udp6(src6, dst6, &udp);
            let mut d = ports(Delta::new());
            for w in words(&src6).chain(words(&dst6)) {
                d = d.removed(w);
            }
            for w in words(&src4).chain(words(&dst4)) {
                d = d.added(w);
            }
            prop_assert_eq!(udp_update(old6, d, false), udp4(src4, dst4, &out));
        }

        #[test]
        fn ipv4_header_rewrite_equals_full_recompute(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
            nsrc in any::<[u8; 4]>(), ndst in any::<[u8; 4]>(),
            ttl in 2u8.., id in any::<u16>(),
        ) {
            let h = ipv4_header(src, dst, ttl, id);
            let old_check = u16::from_be_bytes([h[10], h[11]]);
            let d = Delta::new()
                .bytes4(&src, &nsrc)
                .bytes4(&dst, &ndst)
                .word(u16::from_be_bytes([ttl, 17]), u16::from_be_bytes([ttl - 1, 17]));
            let expect = ipv4_header(nsrc, ndst, ttl - 1, id);
            prop_assert_eq!(d.apply(old_check), u16::from_be_bytes([expect[10], expect[11]]));
        }

        #[test]
        fn udp_ipv4_rewrite_equals_full_recompute(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
            nsrc in any::<[u8; 4]>(), ndst in any::<[u8; 4]>(),
            sp in any::<[u8; 2]>(), dp in any::<[u8; 2]>(),
            nsp in any::<[u8; 2]>(), ndp in any::<[u8; 2]>(),
            payload in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut udp = Vec::new();
            udp.extend_from_slice(&sp);
            udp.extend_from_slice(&dp);
            udp.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
            udp.extend_from_slice(&[0, 0]);
            udp.extend_from_slice(&payload);
            let old = udp4(src, dst, &udp);
            let d = Delta::new()
                .bytes4(&src, &nsrc).bytes4(&dst, &ndst)
                .bytes2(&sp, &nsp).bytes2(&dp, &ndp);
            udp[0..2].copy_from_slice(&nsp);
            udp[2..4].copy_from_slice(&ndp);
            prop_assert_eq!(udp_update(old, d, true), udp4(nsrc, ndst, &udp));
        }
    }
}
