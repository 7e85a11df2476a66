//! The three-namespace test bed:
//!
//! ```text
//!  ns a                 ns relay                    ns b
//!  a0 ───── veth ───── ra        rb ───── veth ───── b0
//!  198.18.1.2          198.18.1.1  198.18.2.1        198.18.2.2
//!  2001:2:0:1::2       2001:2:0:1::1  2001:2:0:2::1  2001:2:0:2::2
//! ```
//!
//! Plus, in the relay namespace, 198.19.0.0/16 and 2001:2:0:ff00::/56
//! routed via b, so that any number of peer addresses share one next hop.
//!
//! XDP-on-veth traps handled here (see docs/toolchain.md): tx checksum
//! offload is off on every veth, so frames sent by local sockets carry full
//! checksums; for native mode, the far ends run an `xdp_pass` program so
//! that `XDP_TX`/`XDP_REDIRECT` frames are delivered.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};
use media_user::dataplane::object;

use crate::netns::Netns;

pub const A_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const RA_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const RB_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub const B_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
pub const A_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 2);
pub const RA_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1);
pub const RB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 1);
pub const B_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 2);
/// Routed via b from the relay namespace.
pub const FAR_V4_NET: &str = "198.19.0.0/16";
pub const FAR_V6_NET: &str = "2001:2:0:ff00::/56";

pub const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 2];
pub const RA_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 1];
pub const RB_MAC: [u8; 6] = [0x02, 0, 0, 0, 2, 1];
pub const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 2, 2];

/// How to build the bed.
#[derive(Clone, Copy, Debug, Default)]
pub struct BedOptions {
    /// Attach `xdp_pass` to a0 and b0 (needed to receive native-mode
    /// `XDP_TX`/`XDP_REDIRECT` frames on veth).
    pub peer_xdp: bool,
    /// Permanent neighbour entries for a and b in the relay namespace
    /// (deterministic MACs for byte-exact tests) instead of learning them.
    pub static_neighbours: bool,
}

pub struct Bed {
    // Dropped first: the peers' XDP programs, then the namespaces.
    peer_programs: Vec<Ebpf>,
    pub a: Netns,
    pub relay: Netns,
    pub b: Netns,
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Bed {
    pub fn new(opts: BedOptions) -> anyhow::Result<Self> {
        let a = Netns::new("a")?;
        let relay = Netns::new("relay")?;
        let b = Netns::new("b")?;
        for (ns, dev, peer_ns, peer_dev, m, peer_m) in [
            (&relay, "ra", &a, "a0", RA_MAC, A_MAC),
            (&relay, "rb", &b, "b0", RB_MAC, B_MAC),
        ] {
            crate::netns::run(std::process::Command::new("ip").args([
                "link",
                "add",
                "name",
                dev,
                "netns",
                ns.name(),
                "address",
                &mac(m),
                "type",
                "veth",
                "peer",
                "name",
                peer_dev,
                "netns",
                peer_ns.name(),
                "address",
                &mac(peer_m),
            ]))
            .context("creating veth pair")?;
        }
        let addrs: [(&Netns, &str, Ipv4Addr, Ipv6Addr); 4] = [
            (&a, "a0", A_V4, A_V6),
            (&relay, "ra", RA_V4, RA_V6),
            (&relay, "rb", RB_V4, RB_V6),
            (&b, "b0", B_V4, B_V6),
        ];
        for (ns, dev, v4, v6) in addrs {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev])?;
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"])?;
            ns.ip(&["link", "set", dev, "up"])?;
            ns.exec("ethtool", &["-K", dev, "tx", "off"])?;
        }
        a.ip(&["route", "add", "default", "via", &RA_V4.to_string()])?;
        a.ip(&["-6", "route", "add", "default", "via", &RA_V6.to_string()])?;
        b.ip(&["route", "add", "default", "via", &RB_V4.to_string()])?;
        b.ip(&["-6", "route", "add", "default", "via", &RB_V6.to_string()])?;
        relay.ip(&["route", "add", FAR_V4_NET, "via", &B_V4.to_string()])?;
        relay.ip(&["-6", "route", "add", FAR_V6_NET, "via", &B_V6.to_string()])?;
        if opts.static_neighbours {
            for (ip, m, dev) in [
                (IpAddr::V4(A_V4), A_MAC, "ra"),
                (IpAddr::V6(A_V6), A_MAC, "ra"),
                (IpAddr::V4(B_V4), B_MAC, "rb"),
                (IpAddr::V6(B_V6), B_MAC, "rb"),
            ] {
                relay.ip(&[
                    "neigh",
                    "replace",
                    &ip.to_string(),
                    "lladdr",
                    &mac(m),
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ])?;
            }
        }
        // IPv6 on a fresh link answers neighbour solicitations only once its
        // link-local address has left DAD (about 2 s); wait for that so the
        // first datagram of a test is not delayed by a retransmitted NS.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        for ns in [&a, &relay, &b] {
            while !ns
                .ip(&["-6", "addr", "show", "tentative"])?
                .trim()
                .is_empty()
            {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "IPv6 addresses in {} still tentative after 5 s",
                    ns.name()
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        let mut bed = Self {
            peer_programs: Vec::new(),
            a,
            relay,
            b,
        };
        if opts.peer_xdp {
            let pa = bed.a.enter(|| attach_pass("a0"))?;
            let pb = bed.b.enter(|| attach_pass("b0"))?;
            bed.peer_programs.push(pa);
            bed.peer_programs.push(pb);
        }
        Ok(bed)
    }
}

/// Load the test-bed object and attach `xdp_pass` (native) to `dev` in the
/// current namespace.
pub fn attach_pass(dev: &str) -> anyhow::Result<Ebpf> {
    let mut ebpf = Ebpf::load(object::TESTBED).context("loading the test-bed XDP object")?;
    let p: &mut Xdp = ebpf
        .program_mut("xdp_pass")
        .context("xdp_pass in the test-bed object")?
        .try_into()?;
    p.load()?;
    p.attach(dev, XdpMode::Driver)
        .with_context(|| format!("attaching xdp_pass to {dev}"))?;
    Ok(ebpf)
}

/// A `media-relay run` configuration for the bed with the SIP agent: media
/// on `ra` and `rb`, the agent's trunk side on `ra`, its PBX side on `rb`,
/// the PBX at b, one default trunk ("carrier") at a. `top` goes before the
/// tables (daemon keys such as `port-min`), `sip` into `[sip]`
/// (`max-calls`, `media`, …).
pub fn agent_config(top: &str, sip: &str) -> String {
    format!(
        r#"{top}
[[interface]]
netdev = "ra"
[[interface]]
netdev = "rb"

[sip]
trunk-listen = "{RA_V4}:5060"
pbx-listen = "{RB_V4}:5060"
pbx = "{B_V4}:5060"
{sip}

[[sip.trunk]]
name = "carrier"
sources = ["{A_V4}"]
target = "{A_V4}:5060"
default = true
"#
    )
}

/// Where the bed's kernels count packets they did not deliver: per veth
/// end, the driver's drop and error counters (`ethtool -S`: XDP redirects
/// into a peer that failed, ring overflows) and the link's dropped
/// packets; per namespace, IP discards and UDP's receive errors; on the
/// host (the ARP table's statistics are not per namespace), packets
/// dropped while their neighbour was being resolved. Read before and
/// after a run, [`drops_since`] says where packets a test missed went.
pub type Counters = std::collections::BTreeMap<String, u64>;

impl Bed {
    /// The drop counters now (see [`Counters`]); a counter that cannot be
    /// read is left out.
    pub fn drop_counters(&self) -> Counters {
        let mut c = Counters::new();
        for (role, ns, dev) in [
            ("a", &self.a, "a0"),
            ("relay", &self.relay, "ra"),
            ("relay", &self.relay, "rb"),
            ("b", &self.b, "b0"),
        ] {
            if let Ok(out) = ns.exec("ethtool", &["-S", dev]) {
                for (k, v) in out.lines().filter_map(|l| l.trim().split_once(": ")) {
                    if (k.contains("drop") || k.contains("err"))
                        && let Ok(v) = v.trim().parse()
                    {
                        c.insert(format!("{role} {dev} {k}"), v);
                    }
                }
            }
            if let Ok(out) = ns.ip(&["-j", "-s", "link", "show", "dev", dev])
                && let Ok(j) = serde_json::from_str::<serde_json::Value>(&out)
            {
                for dir in ["rx", "tx"] {
                    for k in ["dropped", "errors"] {
                        if let Some(v) = j[0]["stats64"][dir][k].as_u64() {
                            c.insert(format!("{role} {dev} {dir}_{k}"), v);
                        }
                    }
                }
            }
        }
        for (role, ns) in [("a", &self.a), ("relay", &self.relay), ("b", &self.b)] {
            for (file, wanted) in [
                (
                    "/proc/net/snmp",
                    &[
                        "Ip:InDiscards",
                        "Ip:InAddrErrors",
                        "Udp:NoPorts",
                        "Udp:InErrors",
                        "Udp:RcvbufErrors",
                        "Udp:InCsumErrors",
                    ][..],
                ),
                (
                    "/proc/net/snmp6",
                    &["Udp6NoPorts", "Udp6InErrors", "Udp6RcvbufErrors"][..],
                ),
            ] {
                if let Ok(out) = ns.exec("cat", &[file]) {
                    for (k, v) in snmp(&out) {
                        if wanted.contains(&k.as_str()) {
                            c.insert(format!("{role} {k}"), v);
                        }
                    }
                }
            }
        }
        if let Ok(s) = std::fs::read_to_string("/proc/net/stat/arp_cache") {
            let mut lines = s.lines();
            let head: Vec<&str> = lines
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect();
            if let Some(i) = head.iter().position(|h| *h == "unresolved_discards") {
                let total = lines
                    .filter_map(|l| l.split_whitespace().nth(i))
                    .filter_map(|v| u64::from_str_radix(v, 16).ok())
                    .sum();
                c.insert(
                    "host (every namespace) arp unresolved_discards".into(),
                    total,
                );
            }
        }
        c
    }
}

/// `name value` pairs of `/proc/net/snmp` (a header line of names, then
/// one of values, per protocol: `Udp:InErrors`) or `/proc/net/snmp6`
/// (one `Udp6InErrors value` per line).
fn snmp(text: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let names: Vec<&str> = lines[i].split_whitespace().collect();
        match names.first() {
            Some(p) if p.ends_with(':') && i + 1 < lines.len() => {
                let values: Vec<&str> = lines[i + 1].split_whitespace().collect();
                for (n, v) in names.iter().zip(&values).skip(1) {
                    if let Ok(v) = v.parse() {
                        out.push((format!("{p}{n}"), v));
                    }
                }
                i += 2;
            }
            _ => {
                if let [n, v] = names[..]
                    && let Ok(v) = v.parse()
                {
                    out.push((n.to_owned(), v));
                }
                i += 1;
            }
        }
    }
    out
}

/// The counters that grew since `before`: one `name +delta` a line, or a
/// line saying none did.
pub fn drops_since(before: &Counters, now: &Counters) -> String {
    let grew: Vec<String> = now
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| format!("  {k} +{d}"))
        })
        .collect();
    if grew.is_empty() {
        "no kernel drop counter of the bed grew".to_owned()
    } else {
        format!(
            "kernel drop counters of the bed that grew:\n{}",
            grew.join("\n")
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn snmp_tables_of_both_shapes_are_read() {
        let v4 = "Ip: Forwarding InDiscards\nIp: 1 7\nUdp: InDatagrams InErrors\nUdp: 12 3\n";
        let got = super::snmp(v4);
        assert!(got.contains(&("Ip:InDiscards".to_owned(), 7)), "{got:?}");
        assert!(got.contains(&("Udp:InErrors".to_owned(), 3)), "{got:?}");
        let v6 = "Udp6InDatagrams                 \t5\nUdp6InErrors 2\n";
        let got = super::snmp(v6);
        assert_eq!(
            got,
            vec![
                ("Udp6InDatagrams".to_owned(), 5),
                ("Udp6InErrors".to_owned(), 2)
            ]
        );
    }

    #[test]
    fn only_counters_that_grew_are_named() {
        let before = super::Counters::from([("a x".to_owned(), 1), ("b y".to_owned(), 4)]);
        let now = super::Counters::from([
            ("a x".to_owned(), 1),
            ("b y".to_owned(), 6),
            ("c z".to_owned(), 2),
        ]);
        assert_eq!(
            super::drops_since(&before, &now),
            "kernel drop counters of the bed that grew:\n  b y +2\n  c z +2"
        );
        assert_eq!(
            super::drops_since(&now, &now),
            "no kernel drop counter of the bed grew"
        );
    }
}
