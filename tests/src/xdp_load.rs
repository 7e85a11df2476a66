//! Load for the benchmarks: the `xdp_gen` live-frame generator in one
//! namespace and the `xdp_sink` counter in another (see docs/toolchain.md,
//! "Generating load"). Where the kernel refuses live frames, the generator
//! sends the same frames with AF_PACKET instead ([`crate::packet_gen`]).

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use media_user::dataplane::object;

use crate::{
    frame::xdp_md,
    netns::Netns,
    packet_gen::{PacketSender, Spread},
};

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

    /// Count `n` ports from `first`, `step` apart, from now on.
    pub fn set_ports(&mut self, first: u16, n: u32, step: u32) -> anyhow::Result<()> {
        set_ports(&mut self.ebpf, first, n, step)
    }

    pub fn packets(&self) -> anyhow::Result<u64> {
        tally(&self.ebpf, 0)
    }
}

/// Transmits one prepared frame out of a veth many times (BPF_PROG_TEST_RUN
/// live frames), spreading it over destination ports (or over a list of
/// source and destination port pairs), flat out ([`Generator::blast`]) or
/// paced to a rate ([`Generator::pace`]).
pub struct Generator {
    ebpf: Ebpf,
    ns_fd: std::fs::File,
    frame: Vec<u8>,
    md: [u8; 24],
    /// (namespace, device) where `xdp_gen` is parked, removed on drop.
    parked: (String, String),
    /// The device's index, and how the frames' ports are spread (what
    /// `xdp_gen` reads from its maps), for the AF_PACKET fallback.
    ifindex: u32,
    spread: Spread,
    /// Frames the fallback sent (its place in `spread`).
    sent: AtomicU64,
}

/// Set once a test run with live frames was refused (EPERM): every
/// generator of this process then sends with AF_PACKET.
static LIVE_REFUSED: AtomicBool = AtomicBool::new(false);

/// Whether `e` is the kernel refusing the test run (EPERM).
fn refused(e: &aya::programs::ProgramError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.raw_os_error() == Some(libc::EPERM);
        }
        source = s.source();
    }
    false
}

/// Set once a generator of this process has sent.
static USED: AtomicBool = AtomicBool::new(false);

/// How this process's generators send, for the reports.
pub fn generator() -> &'static str {
    if live_frames_refused() {
        "AF_PACKET sendmmsg: this kernel refuses BPF_PROG_TEST_RUN live frames (EPERM)"
    } else {
        "BPF_PROG_TEST_RUN live frames"
    }
}

/// [`generator`], if a generator of this process has sent anything.
pub fn generator_used() -> Option<&'static str> {
    USED.load(Ordering::Relaxed).then(generator)
}

/// Whether this process's generators send with AF_PACKET (the kernel
/// refused BPF_PROG_TEST_RUN live frames): their rate is lower, so a path
/// faster than the generator shows the generator's rate.
pub fn live_frames_refused() -> bool {
    LIVE_REFUSED.load(Ordering::Relaxed)
}

static PARKED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// `Template` of testbed-xdp: u32 length + 64 header bytes.
#[derive(Clone, Copy)]
#[repr(C)]
struct Template {
    len: u32,
    bytes: [u8; 64],
}

// SAFETY: #[repr(C)] u32 + bytes: no padding, any bit pattern is valid.
unsafe impl aya::Pod for Template {}

/// Most entries `PORT_LIST` holds.
pub const PORT_LIST_MAX: usize = 65536;

/// Paced sending: one burst (one BPF_PROG_TEST_RUN call) every this long,
/// at most.
///
/// Why not shorter: each call with live frames creates a page pool, and a
/// pool whose frames are still queued when the call returns (the userspace
/// paths: they sit in the relay's sockets until it reads them) is released
/// by a kernel worker on a 1 s retry, which walks every pool waiting the
/// same way — a cost that grows with the square of the calls per second,
/// on the generator's CPU. At one call every 0.25 ms that worker took 20
/// to 60 % of that CPU (`perf`: `page_pool_release_retry` →
/// `mem_allocator_disconnect`), time both userspace relays lost, and
/// after hours of it the kernel ran out of pool ids (`bpf_prog_test_run`:
/// ENOSPC). One call per millisecond is a sixteenth of that cost.
const PACE_INTERVAL: Duration = Duration::from_millis(1);
/// Burst size bounds: below this the syscall and live-frame setup cost
/// dominate; above it the bursts would overrun the veth rings.
const PACE_MIN_BURST: u32 = 16;
const PACE_MAX_BURST: u32 = 4096;

/// Ethernet + IP + UDP header bytes of `frame`: 62 for IPv6 (EtherType
/// 0x86dd), else 42 (IPv4 without options).
fn header_len(frame: &[u8]) -> usize {
    if frame.get(12..14) == Some(&[0x86, 0xdd][..]) {
        62
    } else {
        42
    }
}

impl Generator {
    /// Send `frame` (Ethernet + IPv4 or IPv6 + UDP) out of `dev` in `ns`, its
    /// destination port spread over `n` ports from the frame's own, `step`
    /// apart.
    pub fn new(ns: &Netns, dev: &str, frame: Vec<u8>, n: u32, step: u32) -> anyhow::Result<Self> {
        // The UDP destination port follows the IP header.
        let at = header_len(&frame) - 6;
        let first = u16::from_be_bytes([frame[at], frame[at + 1]]);
        let mut g = Self::load(ns, dev, frame)?;
        set_ports(&mut g.ebpf, first, n, step)?;
        g.spread = Spread::Step { first, n, step };
        Ok(g)
    }

    /// Send `frame` (Ethernet + IPv4 or IPv6 + UDP) out of `dev` in `ns`, its
    /// (source port, destination port) taken round-robin from `ports`:
    /// for relays whose ports are not evenly spaced, and for streams that
    /// must come from their own source port each.
    pub fn with_port_list(
        ns: &Netns,
        dev: &str,
        frame: Vec<u8>,
        ports: &[(u16, u16)],
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !ports.is_empty() && ports.len() <= PORT_LIST_MAX,
            "port list of {} entries (1..={PORT_LIST_MAX})",
            ports.len()
        );
        let mut g = Self::load(ns, dev, frame)?;
        {
            let mut list: Array<_, u32> =
                Array::try_from(g.ebpf.map_mut("PORT_LIST").context("PORT_LIST")?)?;
            for (i, (src, dst)) in ports.iter().enumerate() {
                list.set(i as u32, (u32::from(*src) << 16) | u32::from(*dst), 0)?;
            }
        }
        let mut p: Array<_, u32> = Array::try_from(g.ebpf.map_mut("PORTS").context("PORTS")?)?;
        p.set(3, ports.len() as u32, 0)?;
        g.spread = Spread::List(ports.to_vec());
        Ok(g)
    }

    /// Load `xdp_gen` for sending out of `dev` in `ns`.
    ///
    /// A test run with `repeat` > 1 adds the program to the kernel's XDP
    /// dispatcher and removes it afterwards, waiting for an RCU grace
    /// period each way (tens of ms on this VM) unless the program is
    /// already there. So the program is also attached (native mode) to a
    /// spare veth pair of its own, down, which never carries a frame: each
    /// test run then costs microseconds and the rate can be paced with
    /// short bursts.
    fn load(ns: &Netns, dev: &str, frame: Vec<u8>) -> anyhow::Result<Self> {
        let n = PARKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let park = format!("xg{n}");
        ns.ip(&[
            "link",
            "add",
            &park,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{park}p"),
        ])
        .context("creating the generator's spare veth")?;
        let parked = (ns.name().to_owned(), park.clone());
        let dev = dev.to_owned();
        let loaded = ns.enter(move || {
            let mut e = testbed("xdp_gen")?;
            let p: &mut Xdp = e.program_mut("xdp_gen").context("xdp_gen")?.try_into()?;
            p.attach(&park, XdpMode::Driver)
                .context("parking xdp_gen on its spare veth")?;
            Ok((e, media_user::host::ifindex(&dev)?))
        });
        let (mut ebpf, ifindex) = match loaded {
            Ok(l) => l,
            Err(e) => {
                let _ = ns.ip(&["link", "del", &parked.1]);
                return Err(e);
            }
        };
        let len = header_len(&frame);
        anyhow::ensure!(frame.len() >= len, "frame shorter than its headers");
        let mut t = Template {
            len: len as u32,
            bytes: [0; 64],
        };
        t.bytes[..len].copy_from_slice(&frame[..len]);
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
            parked,
            ifindex,
            spread: Spread::Step {
                first: 0,
                n: 1,
                step: 1,
            },
            sent: AtomicU64::new(0),
        })
    }

    fn program(&self) -> anyhow::Result<&Xdp> {
        Ok(self
            .ebpf
            .program("xdp_gen")
            .context("xdp_gen")?
            .try_into()?)
    }

    /// Run `f` with the program on a thread inside the generator's
    /// namespace; `f` gets a function sending `n` frames in one call.
    fn on_thread<T: Send>(
        &self,
        f: impl FnOnce(&dyn Fn(u32) -> anyhow::Result<()>) -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        let program = self.program()?;
        let (frame, md, ns) = (&self.frame, &self.md, &self.ns_fd);
        let (ifindex, spread, sent) = (self.ifindex, &self.spread, &self.sent);
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                // On veth the frames' whole path through the relay runs in
                // softirq on the sending CPU: always the same one.
                let _cpu = crate::cpu::Pinned::to(crate::cpu::GENERATOR);
                // Opened (in this namespace) on the first fallback send.
                let packets: std::cell::RefCell<Option<PacketSender>> = None.into();
                let send = |n: u32| -> anyhow::Result<()> {
                    USED.store(true, Ordering::Relaxed);
                    if !LIVE_REFUSED.load(Ordering::Relaxed) {
                        match program.test_run(TestRunOptions {
                            data_in: Some(frame),
                            ctx_in: Some(md),
                            repeat: n,
                            attrs: TestRunAttrs::new().xdp_live_frames(64),
                            ..TestRunOptions::default()
                        }) {
                            Ok(_) => return Ok(()),
                            Err(e) if refused(&e) => {
                                if !LIVE_REFUSED.swap(true, Ordering::Relaxed) {
                                    eprintln!(
                                        "\n*** NOTE: this kernel refuses BPF_PROG_TEST_RUN live frames (EPERM): the load \
                                         generator sends with AF_PACKET instead. Its rate is lower, so paths faster than it \
                                         show its rate (see the report's generator line) ***\n"
                                    );
                                }
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    let mut p = packets.borrow_mut();
                    if p.is_none() {
                        *p = Some(
                            PacketSender::open(ifindex, frame, header_len(frame) - 8)
                                .context("opening the AF_PACKET generator")?,
                        );
                    }
                    let p = p.as_mut().context("the AF_PACKET generator")?;
                    p.send(n, spread, sent).context("sending with AF_PACKET")
                };
                f(&send)
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Send `frames` as fast as possible; returns the seconds it took.
    pub fn blast(&self, frames: u32) -> anyhow::Result<f64> {
        self.on_thread(|send| {
            let t = Instant::now();
            send(frames)?;
            Ok(t.elapsed().as_secs_f64())
        })
    }

    /// Send flat out in runs of `chunk` frames until `secs` have passed or
    /// `max_frames` are sent; returns (frames sent, seconds it took).
    pub fn blast_for(&self, secs: f64, max_frames: u64, chunk: u32) -> anyhow::Result<(u64, f64)> {
        anyhow::ensure!(chunk > 0, "empty chunk");
        self.on_thread(|send| {
            let t = Instant::now();
            let mut sent = 0u64;
            while sent < max_frames && t.elapsed().as_secs_f64() < secs {
                let n = u64::from(chunk).min(max_frames - sent) as u32;
                send(n)?;
                sent += u64::from(n);
            }
            Ok((sent, t.elapsed().as_secs_f64()))
        })
    }

    /// Send `frames` at `pps`: bursts of on average `pps` × [`PACE_INTERVAL`] frames
    /// (16 to 4 096; each 0.5 to 1.5 times that, at random), each due when
    /// the frames before it are, sleeping in between. Returns the frames sent (fewer than `frames` only if the
    /// generator fell so far behind that the run would have taken more
    /// than twice its time plus 5 s) and the seconds they were offered
    /// over: the time until the next burst would have been due, or longer
    /// when the generator could not keep up (so sent / seconds is the rate
    /// really offered).
    ///
    /// The sending thread runs SCHED_FIFO (if allowed), like a NIC's
    /// interrupts: the load arrives on time however busy the relay keeps
    /// the CPUs, and a relay that cannot keep up loses packets instead of
    /// slowing the generator down. It sleeps between bursts, so it takes
    /// a CPU only for the time the bursts and the softirq work they cause
    /// take.
    pub fn pace(&self, frames: u64, pps: f64) -> anyhow::Result<(u64, f64)> {
        anyhow::ensure!(pps.is_finite() && pps >= 1.0, "bad rate {pps}");
        let burst =
            ((pps * PACE_INTERVAL.as_secs_f64()) as u32).clamp(PACE_MIN_BURST, PACE_MAX_BURST);
        // The run takes frames / pps; give up well after that.
        let limit = Duration::from_secs_f64(2.0 * frames as f64 / pps + 5.0);
        self.on_thread(|send| {
            // Sleep to the microsecond, not the default 50 µs timer slack.
            // SAFETY: prctl(2) on the calling thread only.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0, 0, 0) };
            let fifo = libc::sched_param { sched_priority: 10 };
            // SAFETY: sched_setscheduler(2) on the calling thread (0) only,
            // a thread of our own that ends with this run.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const fifo) };
            let start = Instant::now();
            let mut sent = 0u64;
            let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(start.elapsed().subsec_nanos());
            while sent < frames {
                let due = start + Duration::from_secs_f64(sent as f64 / pps);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                } else if now - start > limit {
                    break;
                }
                // Bursts of 0.5 to 1.5 times the mean size, at random: a
                // fixed period would be phase-locked to the scheduler tick,
                // which samples CPU time (no IRQ time accounting here), and
                // bias every CPU figure taken over the run.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let size = (u64::from(burst) / 2 + rng % u64::from(burst)).max(1);
                let n = size.min(frames - sent) as u32;
                send(n)?;
                sent += u64::from(n);
            }
            let nominal = sent as f64 / pps;
            Ok((sent, start.elapsed().as_secs_f64().max(nominal)))
        })
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        // Gone already if the namespace is.
        let _ = crate::netns::run(std::process::Command::new("ip").args([
            "-n",
            &self.parked.0,
            "link",
            "del",
            &self.parked.1,
        ]));
    }
}
