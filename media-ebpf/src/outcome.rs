//! What the XDP program did with a packet, one per-CPU counter each.

/// Index into the `OUTCOMES` per-CPU array. Every packet the program sees
/// increments exactly one of these.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Rewritten and sent back out of the interface it arrived on (`XDP_TX`).
    Transmitted = 0,
    /// Rewritten and redirected to another interface (`XDP_REDIRECT`).
    Redirected,
    /// Not Ethernet+IPv4/IPv6 (ARP, VLAN-tagged, ...): passed to the stack.
    NotIp,
    /// IP but not UDP (TCP, ICMP, IPv6 extension headers, ...): passed.
    NotUdp,
    /// IPv4 fragment: passed; the stack reassembles.
    Fragment,
    /// IPv4 header with options: passed.
    IpOptions,
    /// Headers truncated or lengths inconsistent (also IPv6 UDP checksum 0):
    /// passed untouched; the stack decides.
    Malformed,
    /// UDP to an address/port with no installed flow: passed to the stack
    /// (a socket bound by the daemon, or whatever else owns the port).
    NoFlow,
    /// Source address/port differs from the flow's expected peer: dropped.
    SourceRejected,
    /// Source mismatch while the stream is learning its peer's address, or
    /// a mismatch carrying the stream's SSRC: passed to the daemon, which
    /// decides whether to latch.
    SourceToDaemon,
    /// TTL / hop limit 1 or 0: dropped. The relay forwards as a router
    /// does in both of its paths (the userspace path sends with the
    /// arriving hop limit − 1 too), so a routing loop between relays dies
    /// out instead of circling.
    TtlExceeded,
    /// The FIB knows the route but not the neighbour's MAC: passed; the
    /// stack resolves it and the next packets go through XDP.
    NeighbourMiss,
    /// No route, forwarding disabled on the ingress interface, MTU exceeded
    /// or another FIB failure: passed to the stack.
    FibFailed,
    /// The route leaves by an interface the relay is not attached to: passed.
    EgressNotAllowed,
    /// A flow bridging IPv4↔IPv6 that XDP leaves to the userspace path:
    /// an IPv4 datagram without a UDP checksum (IPv6 needs one, computed
    /// over the payload), no headroom to grow the header, or a flow of no
    /// known family. Passed (bridged flows are otherwise forwarded in XDP
    /// and counted as `Transmitted`/`Redirected`).
    FamilyChange,
    /// IPv4 header checksum wrong (RFC 791 §3.1, verified as RFC 1071 sums
    /// it): passed untouched; the stack drops and counts it. Rewriting
    /// would otherwise re-validate a corrupt header incrementally.
    BadIpChecksum,
    /// No daemon is running (it crashed, stopped or is being replaced) and
    /// the packet, to one of the relay's media ports, would have needed it
    /// (no flow, learning, a hand-over): dropped, not passed to a port that
    /// has no socket (which would answer the peer with ICMP port
    /// unreachable). Installed flows keep forwarding meanwhile.
    DaemonAbsent,
}

impl Outcome {
    /// Number of outcomes, the size of the `OUTCOMES` map.
    pub const COUNT: u32 = 17;

    /// Every outcome, in index order.
    pub const ALL: [Outcome; Self::COUNT as usize] = [
        Outcome::Transmitted,
        Outcome::Redirected,
        Outcome::NotIp,
        Outcome::NotUdp,
        Outcome::Fragment,
        Outcome::IpOptions,
        Outcome::Malformed,
        Outcome::NoFlow,
        Outcome::SourceRejected,
        Outcome::SourceToDaemon,
        Outcome::TtlExceeded,
        Outcome::NeighbourMiss,
        Outcome::FibFailed,
        Outcome::EgressNotAllowed,
        Outcome::FamilyChange,
        Outcome::BadIpChecksum,
        Outcome::DaemonAbsent,
    ];

    /// Stable snake_case name, used in logs, the CLI and metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Transmitted => "transmitted",
            Outcome::Redirected => "redirected",
            Outcome::NotIp => "not_ip",
            Outcome::NotUdp => "not_udp",
            Outcome::Fragment => "fragment",
            Outcome::IpOptions => "ip_options",
            Outcome::Malformed => "malformed",
            Outcome::NoFlow => "no_flow",
            Outcome::SourceRejected => "source_rejected",
            Outcome::SourceToDaemon => "source_to_daemon",
            Outcome::TtlExceeded => "ttl_exceeded",
            Outcome::NeighbourMiss => "neighbour_miss",
            Outcome::FibFailed => "fib_failed",
            Outcome::EgressNotAllowed => "egress_not_allowed",
            Outcome::FamilyChange => "family_change",
            Outcome::BadIpChecksum => "bad_ip_checksum",
            Outcome::DaemonAbsent => "daemon_absent",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Outcome;

    #[test]
    fn all_is_in_index_order_and_names_are_unique() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
        let mut names: Vec<_> = Outcome::ALL.iter().map(|o| o.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Outcome::COUNT as usize);
    }
}
