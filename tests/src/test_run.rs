//! BPF_PROG_TEST_RUN on the loaded relay program: the relay's program in
//! the test bed (generic mode, static neighbours, so FIB lookups resolve)
//! and one run of it on a crafted frame.

use aya::programs::{TestRun as _, TestRunOptions};
use media_user::dataplane::XdpMode;

use crate::{Bed, BedOptions, Relay, cpu::Pinned, frame::xdp_md};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// One row of a test-run table.
pub struct Case {
    pub what: &'static str,
    pub input: Vec<u8>,
    pub action: u32,
    /// `None`: the frame must come out untouched.
    pub output: Option<Vec<u8>>,
    /// The outcome counter the run must move.
    pub outcome: &'static str,
}

pub struct Fixture {
    pub relay: Relay,
    pub bed: Bed,
    /// `ra`'s ifindex: where the frames arrive.
    pub ra: u32,
    /// The test's thread (and the threads it starts) stays on one CPU: the
    /// program's per-CPU records then read as one flow's packets do in
    /// production, where the NIC hashes a flow's 5-tuple to one queue (the
    /// last RTP header is taken from the CPU that forwarded last, and
    /// rtcp-mux RTCP forwarded on another CPU after it would hide it).
    _cpu: Pinned,
}

impl Fixture {
    pub fn new() -> anyhow::Result<Self> {
        let bed = Bed::new(BedOptions {
            peer_xdp: false,
            static_neighbours: true,
        })?;
        let relay = Relay::start(&bed, XdpMode::Generic, 4096)?;
        let ra = bed.relay.enter(|| Ok(media_user::host::ifindex("ra")?))?;
        Ok(Self {
            relay,
            bed,
            ra,
            _cpu: Pinned::to(0),
        })
    }

    /// Run the program once on `frame` arriving on `ra`; returns the
    /// action and the frame as the program left it.
    pub fn run(&self, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        let md = xdp_md(frame.len(), self.ra);
        let program = self.relay.program();
        self.bed.relay.enter(|| {
            let mut out = vec![0u8; frame.len() + 256];
            let r = program.test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&md),
                ..TestRunOptions::default()
            })?;
            out.truncate(r.data_size_out as usize);
            Ok((r.return_value, out))
        })
    }

    /// Run row `c`: a wrong action or output is added to `failures`;
    /// returns how many times the row's outcome was counted meanwhile.
    pub fn check(&self, c: &Case, failures: &mut Vec<String>) -> anyhow::Result<u64> {
        let before = self.relay.outcomes()?;
        let (action, out) = self.run(&c.input)?;
        let after = self.relay.outcomes()?;
        let expected = c.output.as_ref().unwrap_or(&c.input);
        if action != c.action {
            failures.push(format!(
                "{}: action {action}, expected {}",
                c.what, c.action
            ));
        }
        if &out != expected {
            failures.push(format!(
                "{}: output differs\n   got  {out:02x?}\n   want {expected:02x?}",
                c.what
            ));
        }
        Ok(after[c.outcome] - before[c.outcome])
    }
}
