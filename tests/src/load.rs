//! Load for the benchmarks: the `xdp_gen` live-frame generator in one
//! namespace and the `xdp_sink` counter in another (see docs/toolchain.md,
//! "Generating load").

use std::time::Instant;

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use media_user::dataplane::object;

use crate::{frame::xdp_md, netns::Netns};

/// The test-bed object with `program` loaded.
fn testbed(program: &str) -> anyhow::Result<Ebpf> {
    let mut ebpf = Ebpf::load(object::TESTBED)?;
    let p: &mut Xdp = ebpf.program_mut(program).context("program")?.try_into()?;
    p.load()?;
    Ok(ebpf)
}

fn set_ports(ebpf: &mut Ebpf, first: u16, n: u32, step: u32) -> anyhow::Result<()> {
    let mut ports: Array<_, u32> = Array::try_from(ebpf.map_mut("PORTS").context("PORTS")?)?;
    ports.set(0, u32::from(first), 0)?;
    ports.set(1, n, 0)?;
    ports.set(2, step, 0)?;
    Ok(())
}

fn tally(ebpf: &Ebpf, i: u32) -> anyhow::Result<u64> {
    let t: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.map("TALLY").context("TALLY")?)?;
    Ok(t.get(&i, 0)?.iter().sum())
}

/// Counts (and drops) UDP packets to a port range at a veth, in XDP.
pub struct Sink {
    ebpf: Ebpf,
}

impl Sink {
    /// Attach to `dev` in `ns` (native mode, which also lets native
    /// `XDP_REDIRECT` frames be delivered there).
    pub fn attach(ns: &Netns, dev: &str, first: u16, n: u32, step: u32) -> anyhow::Result<Self> {
        let dev = dev.to_owned();
        let mut ebpf = ns.enter(move || {
            let mut e = testbed("xdp_sink")?;
            let p: &mut Xdp = e.program_mut("xdp_sink").context("xdp_sink")?.try_into()?;
            p.attach(&dev, XdpMode::Driver)?;
            Ok(e)
        })?;
        set_ports(&mut ebpf, first, n, step)?;
        Ok(Self { ebpf })
    }

    pub fn packets(&self) -> anyhow::Result<u64> {
        tally(&self.ebpf, 0)
    }
}

/// Transmits one prepared frame out of a veth many times (BPF_PROG_TEST_RUN
/// live frames), spreading it over destination ports.
pub struct Generator {
    ebpf: Ebpf,
    ns_fd: std::fs::File,
    frame: Vec<u8>,
    md: [u8; 24],
}

/// `Template` of testbed-xdp: u32 length + 64 header bytes.
#[derive(Clone, Copy)]
#[repr(C)]
struct Template {
    len: u32,
    bytes: [u8; 64],
}

// SAFETY: #[repr(C)] u32 + bytes: no padding, any bit pattern is valid.
unsafe impl aya::Pod for Template {}

impl Generator {
    /// Send `frame` (Ethernet + IPv4 + UDP) out of `dev` in `ns`, its
    /// destination port spread over `n` ports from the frame's own, `step`
    /// apart.
    pub fn new(ns: &Netns, dev: &str, frame: Vec<u8>, n: u32, step: u32) -> anyhow::Result<Self> {
        let dev = dev.to_owned();
        let (mut ebpf, ifindex) =
            ns.enter(move || Ok((testbed("xdp_gen")?, media_user::host::ifindex(&dev)?)))?;
        let first = u16::from_be_bytes([frame[36], frame[37]]);
        set_ports(&mut ebpf, first, n, step)?;
        let mut t = Template {
            len: 42,
            bytes: [0; 64],
        };
        t.bytes[..42].copy_from_slice(&frame[..42]);
        let mut m: Array<_, Template> =
            Array::try_from(ebpf.map_mut("TEMPLATE").context("TEMPLATE")?)?;
        m.set(0, t, 0)?;
        let md = xdp_md(frame.len(), ifindex);
        let ns_fd = std::fs::File::open(format!("/run/netns/{}", ns.name()))?;
        Ok(Self {
            ebpf,
            ns_fd,
            frame,
            md,
        })
    }

    fn program(&self) -> anyhow::Result<&Xdp> {
        Ok(self
            .ebpf
            .program("xdp_gen")
            .context("xdp_gen")?
            .try_into()?)
    }

    /// Send `frames` as fast as possible; returns the seconds it took.
    pub fn blast(&self, frames: u32) -> anyhow::Result<f64> {
        let program = self.program()?;
        let (frame, md, ns) = (&self.frame, &self.md, &self.ns_fd);
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                let t = Instant::now();
                program.test_run(TestRunOptions {
                    data_in: Some(frame),
                    ctx_in: Some(md),
                    repeat: frames,
                    attrs: TestRunAttrs::new().xdp_live_frames(64),
                    ..TestRunOptions::default()
                })?;
                Ok(t.elapsed().as_secs_f64())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}
