//! The benchmark's forwarding paths (`media_relay_tests::paths`) really
//! forward: for each of them, 3 calls, RTP both ways on every call, every
//! packet arriving from where the path should send it (the relay's port on
//! the far leg, or the other party for plain kernel forwarding). A path
//! that silently forwarded nothing would make the benchmark compare
//! nothing. Each path over IPv4 and over IPv6 (`paths::setup_family`).

use std::time::Duration;

use media_relay_tests::{
    Bed, BedOptions, TestDir,
    media::{drain, rtp, udp_socket},
    paths::{self, PathKind},
    root_test,
};

fn forwards(t: &TestDir, kind: PathKind, v6: bool) -> anyhow::Result<()> {
    const CALLS: u32 = 3;
    const PACKETS: u16 = 20;
    let bed = Bed::new(BedOptions {
        peer_xdp: kind == PathKind::XdpNative,
        static_neighbours: false,
    })?;
    // The userspace path drops what it held past its staleness bound
    // (5 ms by default): on a host loaded by other jobs one late wake-up
    // would read as "forwards nothing". Whether it forwards is asked here;
    // how late it may be, by the bench's latency part.
    let path = paths::setup_with(
        t,
        &bed,
        kind,
        CALLS,
        5000,
        6000,
        v6,
        &["--userspace-max-delay", "1000"],
    )?;
    let name = format!("{}{}", kind.name(), if v6 { " (IPv6)" } else { "" });
    let result = (|| -> anyhow::Result<()> {
        let timeout = Duration::from_millis(500);
        for (i, call) in path.calls.iter().enumerate() {
            anyhow::ensure!(
                call.a.is_ipv6() == v6 && call.a_to.is_ipv6() == v6 && call.b_to.is_ipv6() == v6,
                "{name}: call {i} in the wrong family: {call:?}"
            );
            let a = udp_socket(&bed.a, call.a, timeout)?;
            let b = udp_socket(&bed.b, call.b, timeout)?;
            // A to B, then B to A.
            for (from, to, sock_to, dst, ssrc) in [
                (&a, &b, call.a_to, call.b, 0xa000 + i as u32),
                (&b, &a, call.b_to, call.a, 0xb000 + i as u32),
            ] {
                for seq in 0..PACKETS {
                    from.send_to(&rtp(ssrc, seq), sock_to)?;
                }
                let got = drain(to, usize::from(PACKETS) + 5);
                anyhow::ensure!(
                    got.len() == usize::from(PACKETS),
                    "{}: call {i}: {} of {PACKETS} packets to {dst} arrived",
                    name,
                    got.len()
                );
                let want_from = if kind == PathKind::Kernel {
                    from.local_addr()?
                } else if ssrc >= 0xb000 {
                    call.a_to
                } else {
                    call.b_to
                };
                anyhow::ensure!(
                    got.iter().all(|(_, src)| *src == want_from),
                    "{}: call {i}: packets to {dst} came from {:?}, want {want_from}",
                    name,
                    got.iter().map(|(_, s)| *s).collect::<Vec<_>>()
                );
            }
        }
        Ok(())
    })();
    if result.is_err() {
        eprintln!("--- relay log ---\n{}", path.log_text());
    }
    result
}

macro_rules! path_test {
    ($name:ident, $kind:expr, $v6:expr) => {
        #[test]
        fn $name() -> anyhow::Result<()> {
            root_test(stringify!($name), |t| forwards(t, $kind, $v6))
        }
    };
}

path_test!(xdp_native_forwards, PathKind::XdpNative, false);
path_test!(xdp_generic_forwards, PathKind::XdpGeneric, false);
path_test!(userspace_forwards, PathKind::Userspace, false);
path_test!(kernel_forwards, PathKind::Kernel, false);
path_test!(rtpengine_forwards, PathKind::Rtpengine, false);
path_test!(xdp_native_forwards_v6, PathKind::XdpNative, true);
path_test!(xdp_generic_forwards_v6, PathKind::XdpGeneric, true);
path_test!(userspace_forwards_v6, PathKind::Userspace, true);
path_test!(kernel_forwards_v6, PathKind::Kernel, true);
path_test!(rtpengine_forwards_v6, PathKind::Rtpengine, true);
