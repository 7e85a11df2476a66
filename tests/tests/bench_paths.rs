//! The benchmark's forwarding paths (`media_relay_tests::paths`) really
//! forward: for each of them, 3 calls, RTP both ways on every call, every
//! packet arriving from where the path should send it (the relay's port on
//! the far leg, or the other party for plain kernel forwarding). A path
//! that silently forwarded nothing would make the benchmark compare
//! nothing.

use std::time::Duration;

use media_relay_tests::{
    Bed, BedOptions,
    media::{drain, rtp, udp_socket},
    paths::{self, PathKind},
    require_root,
};

fn forwards(kind: PathKind) -> anyhow::Result<()> {
    const CALLS: u32 = 3;
    const PACKETS: u16 = 20;
    let bed = Bed::new(BedOptions {
        peer_xdp: kind == PathKind::XdpNative,
        static_neighbours: false,
    })?;
    let path = paths::setup(&bed, kind, CALLS, 5000, 6000)?;
    let result = (|| -> anyhow::Result<()> {
        let timeout = Duration::from_millis(500);
        for (i, call) in path.calls.iter().enumerate() {
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
                    kind.name(),
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
                    kind.name(),
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
    ($name:ident, $kind:expr) => {
        #[test]
        fn $name() -> anyhow::Result<()> {
            if !require_root(stringify!($name)) {
                return Ok(());
            }
            forwards($kind)
        }
    };
}

path_test!(xdp_native_forwards, PathKind::XdpNative);
path_test!(xdp_generic_forwards, PathKind::XdpGeneric);
path_test!(userspace_forwards, PathKind::Userspace);
path_test!(kernel_forwards, PathKind::Kernel);
path_test!(rtpengine_forwards, PathKind::Rtpengine);
