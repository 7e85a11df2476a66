//! SIPp (Debian `sip-tester`, SIPp 3.6.1) as the carrier trunk and the PBX
//! of end-to-end SIP tests: the scenario files under `tests/sipp/`, a
//! runner that starts one SIPp inside a test namespace and reports its
//! outcome, and an RTP counter, because SIPp cannot count the RTP it
//! receives.
//!
//! # Scenarios
//!
//! One file per side and case, `<case>_uac.xml` (places the call, in the
//! namespace of the side that originates it) and `<case>_uas.xml` (answers
//! whatever arrives). Both work unchanged against each other directly and
//! through a record-routing proxy such as the SIP agent: the UAC sends to
//! the address on its command line ([`SippOptions::remote`], or
//! [`SippOptions::rsa`] for the next hop), in-dialog requests follow the
//! route set recorded from the first 200 (`rrs="true"`, `[routes]`,
//! `[next_url]`), and the UAS echoes `Record-Route`. Every SDP carries
//! `[media_ip]`/`[media_port]`, so the relay's rewriting shows, and media
//! is `g711a.pcap` ([`PCAP`]: 236 RTP packets of PCMA, one SSRC, 30 ms
//! apart, 7.05 s) played with `play_pcap_audio`.
//!
//! | case | flow | RTP per direction |
//! |---|---|---|
//! | `basic` | INVITE(SDP) 100 180 200(SDP) ACK, media, BYE 200 | 236 each way |
//! | `pbx_to_trunk` | `basic` with the roles swapped (UAC on the PBX side) | 236 each way |
//! | `busy` | INVITE 100 486 ACK | none |
//! | `cancel` | INVITE 100 180 CANCEL 200 487 ACK | none |
//! | `early_media` | INVITE 100 183(SDP) early media B→A, 200 ACK, media A→B, BYE | 236 each way |
//! | `hold` | `basic`, re-INVITE sendonly → recvonly, 1 s hold, re-INVITE sendrecv, media, BYE | 472 each way |
//! | `late_offer` | INVITE (no SDP) 200(offer) ACK(answer), media, BYE | 236 each way |
//! | `options` | OPTIONS `sip:<remote>` 200 (the agent answers itself) | none |
//! | `malformed` | OPTIONS with `CSeq: ABC OPTIONS` → 400 | none |
//! | `unknown_source` | INVITE → 403 ACK | none |
//! | `max_calls` | INVITE → 503 ACK | none |
//! | `load` | `basic` without RTP, call length `-d` ([`SippOptions::call_length`]) | none |
//! | `load_media` | `basic` with RTP for `-d` ms, one media port per call | ~33 per second of call |
//! | `flood` (UAC only) | `load`, or INVITE → 503 ACK when the agent rate-limits it; both count as success | none |
//!
//! `options`, `malformed`, `unknown_source` and `max_calls` exercise the
//! agent's own answers; their UAS files stand in for it when the scenarios
//! are validated without it.
//!
//! # SIPp facts these files and this runner rely on
//!
//! - `play_pcap_audio` sends from a raw socket (root) from `-mi` and the
//!   port that the call's last `[media_port]`/`[auto_media_port]` on an
//!   `m=audio` line of a *sent* message produced, to the c=/m= address of
//!   the last SDP the call *received* (in an INVITE, ACK, PRACK or any
//!   response). It computes the UDP checksum itself. A second play in the
//!   same call stops the first; the end of the call stops it too.
//! - `[last_Via:]` and `[last_Record-Route:]` give every value of the
//!   header joined with commas on one line (RFC 3261 7.3.1): the UAS's
//!   responses through a proxy carry `Via: <proxy>, <caller>` and
//!   `Record-Route: <rr1>, <rr2>`, and so do the UAC's `Route` headers. An
//!   empty `[last_…:]` or `[routes]` alone on its line drops the line.
//! - SIPp binds `-mp` and `-mp`+2 as UDP sockets but never reads them
//!   (unless `-rtp_echo`), and reports no received RTP; its screen's "RTP
//!   pckts sent" line is not in the final screen dump. Hence
//!   [`RtpCounter`].
//! - SIPp fails the whole scenario file at start when a call variable is
//!   referenced only once, and when a `[key]` has no `-key`: the files use
//!   no custom keys.
//! - Over TCP a call still running when its connection closes fails
//!   (`FailedTcpClosed`): the UAS files have no `timewait`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{netns::Netns, testdir::TestDir};

/// The RTP stream every scenario plays (Debian's `sip-tester` ships it).
pub const PCAP: &str = "/usr/share/sip-tester/g711a.pcap";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The directory of the scenario files (`tests/sipp/`).
pub fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sipp")
}

/// SIP transport (`-t u1` / `-t t1`: one socket for all calls).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
}

/// How to run one SIPp. Build with [`SippOptions::uac`] or
/// [`SippOptions::uas`] and adjust the public fields.
#[derive(Clone, Debug)]
pub struct SippOptions {
    /// A file under `tests/sipp/`, e.g. `"basic_uac.xml"`.
    pub scenario: String,
    /// SIP address: `-i`, `-p`, with `-bind_local` so that it is also the
    /// source address (the agent tells trunks from strangers by it).
    pub local: SocketAddr,
    /// For a UAC, where calls go: `[remote_ip]:[remote_port]` in the
    /// Request-URI and To, and the next hop unless `rsa` is set. `None`
    /// for a UAS.
    pub remote: Option<SocketAddr>,
    /// `-rsa`: send everything to this address instead of `remote` (a
    /// proxy in front of `remote`, which still names the target).
    pub rsa: Option<SocketAddr>,
    /// `-mi`: `[media_ip]`, and the address RTP is played from.
    pub media_ip: IpAddr,
    /// `-mp`: `[media_port]`, and the port RTP is played from.
    pub media_port: u16,
    /// `-s`: the user part of the Request-URI and To (`[service]`).
    pub service: String,
    /// `-m`: exit after this many calls.
    pub calls: u32,
    /// `-r`: calls per second (SIPp's default is 10).
    pub rate: Option<u32>,
    /// `-l`: at most this many simultaneous calls.
    pub limit: Option<u32>,
    /// `-d`: length of a `<pause/>` without its own (the load scenarios'
    /// call length).
    pub call_length: Duration,
    pub transport: Transport,
    /// `-timeout … -timeout_error`: SIPp gives up (and fails) after this.
    pub timeout: Duration,
    /// `-recv_timeout`: a call waiting longer than this for a message
    /// fails (early_media waits 7.5 s for its 200).
    pub recv_timeout: Duration,
    /// `-trace_msg`: log every SIP message (kept with the other logs when
    /// a check fails).
    pub trace_msg: bool,
    /// Further SIPp arguments, e.g. `["-key", "name", "value"]`.
    pub extra: Vec<String>,
}

impl SippOptions {
    /// A UAC placing `calls` calls of `scenario` from `local` to `remote`.
    pub fn uac(
        scenario: &str,
        local: SocketAddr,
        remote: SocketAddr,
        media_ip: IpAddr,
        media_port: u16,
    ) -> Self {
        Self {
            remote: Some(remote),
            ..Self::uas(scenario, local, media_ip, media_port)
        }
    }

    /// A UAS answering at `local`.
    pub fn uas(scenario: &str, local: SocketAddr, media_ip: IpAddr, media_port: u16) -> Self {
        Self {
            scenario: scenario.to_owned(),
            local,
            remote: None,
            rsa: None,
            media_ip,
            media_port,
            service: "pbx".to_owned(),
            calls: 1,
            rate: None,
            limit: None,
            call_length: Duration::ZERO,
            transport: Transport::Udp,
            timeout: Duration::from_secs(60),
            recv_timeout: Duration::from_secs(20),
            trace_msg: true,
            extra: Vec::new(),
        }
    }
}

/// A running SIPp, killed (by PID) on drop if still running.
pub struct Sipp {
    child: Option<Child>,
    scenario: String,
    calls: u32,
    logs: PathBuf,
}

/// `[v6]:port` or `v4:port`, as SIPp parses a remote host.
fn host_port(a: SocketAddr) -> String {
    a.to_string()
}

impl Sipp {
    /// Start `sipp` in `ns` (`ip netns exec`, which execs SIPp: the child's
    /// PID is SIPp's). Logs go to a fresh directory in the test's `dir`. A
    /// UAS (no `remote`) is waited for until its SIP socket is bound, so a
    /// UAC started next (over TCP in particular) finds it.
    pub fn start(dir: &TestDir, ns: &Netns, opts: &SippOptions) -> anyhow::Result<Self> {
        let scenario = scenario_dir().join(&opts.scenario);
        anyhow::ensure!(scenario.exists(), "no scenario {}", scenario.display());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let logs = dir.create_dir(&format!("sipp-{}", opts.scenario.trim_end_matches(".xml")))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name(), "sipp"]);
        if let Some(remote) = opts.remote {
            cmd.arg(host_port(remote));
        }
        // SIPp's UDP control socket (`-cp`, default 8888, bound in the
        // namespace): explicit and distinct per SIPp of this process, so two
        // SIPps in one namespace never race for it.
        let control_port = 9000 + n % 1000;
        cmd.arg("-sf")
            .arg(&scenario)
            .args(["-cp", &control_port.to_string()])
            .args(["-i", &opts.local.ip().to_string()])
            .args(["-p", &opts.local.port().to_string()])
            .arg("-bind_local")
            .args(["-mi", &opts.media_ip.to_string()])
            .args(["-mp", &opts.media_port.to_string()])
            .args(["-s", &opts.service])
            .args(["-m", &opts.calls.to_string()])
            .args([
                "-t",
                match opts.transport {
                    Transport::Udp => "u1",
                    Transport::Tcp => "t1",
                },
            ])
            .args(["-d", &opts.call_length.as_millis().to_string()])
            .args(["-timeout", &format!("{}s", opts.timeout.as_secs().max(1))])
            .arg("-timeout_error")
            .args(["-recv_timeout", &opts.recv_timeout.as_millis().to_string()])
            .arg("-nostdin")
            .arg("-trace_stat")
            .arg("-stf")
            .arg(logs.join("stat.csv"))
            .args(["-fd", "1"])
            .arg("-trace_err")
            .arg("-error_file")
            .arg(logs.join("errors.log"))
            .arg("-trace_screen")
            .arg("-screen_file")
            .arg(logs.join("screen.log"));
        if let Some(rsa) = opts.rsa {
            cmd.args(["-rsa", &host_port(rsa)]);
        }
        if let Some(rate) = opts.rate {
            cmd.args(["-r", &rate.to_string()]);
        }
        if let Some(limit) = opts.limit {
            cmd.args(["-l", &limit.to_string()]);
        }
        if opts.trace_msg {
            cmd.arg("-trace_msg")
                .arg("-message_file")
                .arg(logs.join("messages.log"));
        }
        cmd.args(&opts.extra)
            .stdin(Stdio::null())
            // SIPp redraws its curses-like screen on stdout.
            .stdout(std::fs::File::create(logs.join("stdout.log"))?)
            .stderr(std::fs::File::create(logs.join("stderr.log"))?);
        let child = cmd
            .spawn()
            .context("starting sipp (Debian package sip-tester)")?;
        let mut sipp = Self {
            child: Some(child),
            scenario: opts.scenario.clone(),
            calls: opts.calls,
            logs,
        };
        if opts.remote.is_none() {
            sipp.wait_listening(opts.local, opts.transport)?;
        }
        Ok(sipp)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Where this SIPp's logs are.
    pub fn logs(&self) -> &Path {
        &self.logs
    }

    /// Wait (at most 5 s) until SIPp has bound `local`: its `/proc/<pid>/net`
    /// is its namespace's once it is SIPp (`ip netns exec` enters the
    /// namespace before it execs).
    fn wait_listening(&mut self, local: SocketAddr, transport: Transport) -> anyhow::Result<()> {
        let pid = self.pid();
        let table = match (transport, local.is_ipv4()) {
            (Transport::Udp, true) => "udp",
            (Transport::Udp, false) => "udp6",
            (Transport::Tcp, true) => "tcp",
            (Transport::Tcp, false) => "tcp6",
        };
        let port = format!(":{:04X}", local.port());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "sipp {} exited at start ({status}): {}",
                    self.scenario,
                    self.log_tail()
                );
            }
            let is_sipp = std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.ends_with("sipp"));
            if is_sipp {
                let bound = std::fs::read_to_string(format!("/proc/{pid}/net/{table}"))
                    .unwrap_or_default()
                    .lines()
                    .skip(1)
                    .any(|l| {
                        let mut f = l.split_whitespace();
                        let local = f.nth(1).unwrap_or("");
                        let state = f.nth(1).unwrap_or("");
                        // TCP must be listening (0A); any UDP socket will do.
                        local.ends_with(&port) && (transport == Transport::Udp || state == "0A")
                    });
                if bound {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "sipp {} did not bind {local} within 5 s: {}",
                    self.scenario,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_tail(&self) -> String {
        let mut s = String::new();
        for f in ["stderr.log", "errors.log"] {
            let text = std::fs::read_to_string(self.logs.join(f)).unwrap_or_default();
            if !text.trim().is_empty() {
                let _ = write!(s, "\n[{f}]\n{}", tail(&text, 4000));
            }
        }
        s
    }

    /// Wait at most `deadline` for SIPp to exit, then read its outcome. On
    /// timeout SIPp is killed (SIGKILL, by PID) and this fails with its
    /// logs.
    pub fn wait(mut self, deadline: Duration) -> anyhow::Result<SippResult> {
        let mut child = self.child.take().context("already waited")?;
        let end = Instant::now() + deadline;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "sipp {} still running after {deadline:?}, killed; logs in {}{}{}",
                    self.scenario,
                    self.logs.display(),
                    self.log_tail(),
                    screen_summary(&self.logs),
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let exit_code = match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(c), _) => c,
            (None, Some(sig)) => 128 + sig,
            (None, None) => -1,
        };
        let stats = parse_stat_csv(&self.logs.join("stat.csv")).unwrap_or_default();
        let counter = |k: &str| stats.get(k).and_then(|v| v.parse::<u64>().ok());
        let read = |f: &str| std::fs::read_to_string(self.logs.join(f)).unwrap_or_default();
        Ok(SippResult {
            scenario: std::mem::take(&mut self.scenario),
            calls: self.calls,
            exit_code,
            successful: counter("SuccessfulCall(C)").unwrap_or(0),
            failed: counter("FailedCall(C)").unwrap_or(0),
            errors: format!("{}{}", read("errors.log"), read("stderr.log")),
            screen: read("screen.log"),
            stats,
            logs: std::mem::take(&mut self.logs),
        })
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "sipp {} killed unwaited; logs in {}",
                self.scenario,
                self.logs.display()
            );
        }
    }
}

/// The last `max` bytes of `s` (on a char boundary).
fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The scenario table of the final screen (messages, retransmissions,
/// timeouts, unexpected messages per step): the quickest way to see where
/// a call went wrong.
fn screen_summary(logs: &Path) -> String {
    let screen = std::fs::read_to_string(logs.join("screen.log")).unwrap_or_default();
    let first = screen.split("Statistics Screen").next().unwrap_or("");
    if first.trim().is_empty() {
        String::new()
    } else {
        format!("\n[screen]\n{}", tail(first, 6000))
    }
}

/// The last row of SIPp's statistics file (`-trace_stat`), by column name.
/// SIPp writes a row every `-fd` second and a final one at exit.
fn parse_stat_csv(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().context("empty statistics file")?;
    let last = lines.next_back().context("no statistics row")?;
    Ok(header
        .split(';')
        .zip(last.split(';'))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// What a finished SIPp reports. Its logs stay in the test's directory
/// (removed with it when the test passes, kept when it fails).
#[derive(Debug)]
pub struct SippResult {
    pub scenario: String,
    /// `-m`, the calls asked for.
    pub calls: u32,
    /// SIPp's exit code: 0 all calls succeeded, 1 at least one failed, 97
    /// exit on internal command, 99 normal exit without calls processed,
    /// 255 (-1) fatal error, 254 (-2) fatal error binding a socket; 128+n
    /// when killed by signal n.
    pub exit_code: i32,
    /// `SuccessfulCall(C)` of the final statistics row.
    pub successful: u64,
    /// `FailedCall(C)`: failures of all kinds (see the `Failed…(C)` columns
    /// in `stats`).
    pub failed: u64,
    /// The final statistics row by column, e.g. `FailedUnexpectedMessage(C)`,
    /// `FailedTimeoutOnRecv(C)`, `OutOfCallMsgs(C)`, `DeadCallMsgs(C)`,
    /// `Retransmissions(C)`, `CallLength(C)`; empty if SIPp died before
    /// writing one.
    pub stats: BTreeMap<String, String>,
    /// The error log (`-trace_err`: unexpected messages, warnings, failed
    /// regexp checks) and SIPp's stderr, for assertion messages.
    pub errors: String,
    /// The final screens (`-trace_screen`): per-step message counts.
    pub screen: String,
    logs: PathBuf,
}

impl SippResult {
    /// A cumulative counter of the final statistics row, e.g.
    /// `counter("FailedUnexpectedMessage")`.
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.stats.get(&format!("{name}(C)"))?.parse().ok()
    }

    /// The log directory (`stat.csv`, `errors.log`, `screen.log`,
    /// `messages.log`, `stdout.log`, `stderr.log`).
    pub fn logs(&self) -> &Path {
        &self.logs
    }

    /// The meaning of [`SippResult::exit_code`].
    pub fn exit_meaning(&self) -> &'static str {
        match self.exit_code {
            0 => "all calls successful",
            1 => "at least one call failed",
            97 => "exit on internal command",
            99 => "normal exit without calls processed",
            255 => "fatal error",
            254 => "fatal error binding a socket",
            c if c > 128 => "killed by a signal",
            _ => "unknown exit code",
        }
    }

    /// Fail unless SIPp exited 0 with every one of its `-m` calls
    /// successful and none failed. The error carries the non-zero failure
    /// counters, the error log and the scenario screen, and the path of the
    /// logs.
    pub fn ensure_all_succeeded(&self) -> anyhow::Result<()> {
        if self.exit_code == 0 && self.failed == 0 && self.successful == u64::from(self.calls) {
            return Ok(());
        }
        let failures: Vec<String> = self
            .stats
            .iter()
            .filter(|(k, v)| {
                (k.starts_with("Failed") || k.starts_with("OutOfCall") || k.starts_with("DeadCall"))
                    && k.ends_with("(C)")
                    && v.as_str() != "0"
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        bail!(
            "sipp {}: exit {} ({}), {} of {} calls successful, {} failed [{}]; logs in {}\n[errors]\n{}{}",
            self.scenario,
            self.exit_code,
            self.exit_meaning(),
            self.successful,
            self.calls,
            self.failed,
            failures.join(" "),
            self.logs.display(),
            tail(&self.errors, 4000),
            screen_summary(&self.logs),
        )
    }
}

/// Run one UAS/UAC pair: start the UAS in `uas_ns`, then the UAC in
/// `uac_ns`, and wait for both within `deadline`. Returns `(UAS result,
/// UAC result)` as they are; check them with
/// [`SippResult::ensure_all_succeeded`]. When the UAC failed, the UAS gets
/// only 3 more seconds (it may be waiting for a call that will never come)
/// before it is killed and this fails; otherwise it gets what is left of
/// `deadline` (at least 3 s).
pub fn run_pair(
    dir: &TestDir,
    uas_ns: &Netns,
    uas: &SippOptions,
    uac_ns: &Netns,
    uac: &SippOptions,
    deadline: Duration,
) -> anyhow::Result<(SippResult, SippResult)> {
    let end = Instant::now() + deadline;
    let server = Sipp::start(dir, uas_ns, uas)?;
    let client = Sipp::start(dir, uac_ns, uac)?;
    let uac_result = client.wait(end.saturating_duration_since(Instant::now()))?;
    let grace = if uac_result.exit_code == 0 {
        end.saturating_duration_since(Instant::now())
    } else {
        Duration::from_secs(3)
    };
    let uas_result = server.wait(grace.max(Duration::from_secs(3)))?;
    Ok((uas_result, uac_result))
}

/// The number of packets in a classic pcap file (e.g. [`PCAP`]: 236), so
/// tests can expect exactly what SIPp will play.
pub fn pcap_packet_count(path: &str) -> anyhow::Result<u64> {
    let data = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    anyhow::ensure!(data.len() >= 24, "{path}: too short for a pcap file");
    let magic = u32::from_le_bytes(data[0..4].try_into()?);
    let little = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        _ => bail!("{path}: not a classic pcap file"),
    };
    let mut at = 24;
    let mut n = 0;
    while at + 16 <= data.len() {
        let b: [u8; 4] = data[at + 8..at + 12].try_into()?;
        let caplen = if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        };
        at += 16 + caplen as usize;
        anyhow::ensure!(at <= data.len(), "{path}: truncated record");
        n += 1;
    }
    Ok(n)
}

/// RTP seen arriving at a namespace, counted by an [`RtpCounter`].
#[derive(Clone, Debug, Default)]
pub struct RtpCount {
    /// RTP packets (version 2, not RTCP by RFC 5761's payload type rule).
    pub packets: u64,
    /// RTP packets per destination port.
    pub by_port: BTreeMap<u16, u64>,
    /// Their sources (address and port).
    pub sources: BTreeSet<SocketAddr>,
    pub ssrcs: BTreeSet<u32>,
    pub payload_types: BTreeSet<u8>,
    /// RTCP packets (RFC 5761: second byte 192..=223) to the same ports.
    pub rtcp: u64,
    /// Counted packets whose UDP checksum is wrong (0 expected: SIPp's raw
    /// sender computes it, and the relay must keep it right).
    pub bad_checksums: u64,
}

/// Counts the RTP that arrives at a range of UDP ports of a namespace,
/// on any interface, with an `AF_PACKET` socket: SIPp itself cannot say
/// what it received. Packets are seen before any local UDP socket (SIPp's
/// unread media socket, or none) gets them; only packets addressed to the
/// host (`PACKET_HOST`), not the namespace's own outgoing ones, count.
pub struct RtpCounter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<RtpCount>>>,
}

impl RtpCounter {
    /// Start counting RTP to `ports` in `ns`. Counting starts before this
    /// returns.
    pub fn start(ns: &Netns, ports: RangeInclusive<u16>) -> anyhow::Result<Self> {
        let fd = ns.enter(|| {
            // SAFETY: socket(2) with constant arguments; the result is
            // checked before it is owned.
            let raw = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                    i32::from((libc::ETH_P_ALL as u16).to_be()),
                )
            };
            anyhow::ensure!(
                raw >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: `raw` is a fresh descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            crate::sockopt::big_rcvbuf(&fd, 16 << 20)?;
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            // SAFETY: valid socket; the option value is a timeval of the size given.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const tv).cast(),
                    size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            anyhow::ensure!(rc == 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
            Ok(fd)
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || count_loop(&fd, &ports, &flag));
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop counting (after reading what is already queued) and return
    /// the counts.
    pub fn stop(mut self) -> anyhow::Result<RtpCount> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .context("already stopped")?
            .join()
            .map_err(|_| anyhow::anyhow!("RTP counter thread panicked"))?
    }
}

impl Drop for RtpCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn count_loop(
    fd: &OwnedFd,
    ports: &RangeInclusive<u16>,
    stop: &AtomicBool,
) -> anyhow::Result<RtpCount> {
    let mut count = RtpCount::default();
    let mut buf = vec![0u8; 65536];
    // Bounds the final drain should packets keep coming after the stop.
    let mut drained = 0u32;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping {
            drained += 1;
            if drained > 1_000_000 {
                return Ok(count);
            }
        }
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: valid socket, buffer and address of the sizes given.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                // Once stopping, only drain what is already queued.
                if stopping { libc::MSG_DONTWAIT } else { 0 },
                (&raw mut sll).cast(),
                &raw mut len,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) if !stopping => continue,
                Some(libc::EAGAIN) => return Ok(count),
                Some(libc::EINTR) => continue,
                _ => return Err(e).context("reading the AF_PACKET socket"),
            }
        }
        if sll.sll_pkttype != libc::PACKET_HOST {
            continue;
        }
        let n = usize::try_from(n)?;
        count_packet(&buf[..n], ports, &mut count);
    }
}

/// Account one IP packet (as an `AF_PACKET`/`SOCK_DGRAM` socket returns it).
fn count_packet(ip: &[u8], ports: &RangeInclusive<u16>, count: &mut RtpCount) {
    let Some(&first) = ip.first() else { return };
    let (src, udp, pseudo) = match first >> 4 {
        4 if ip.len() >= 20 => {
            let ihl = usize::from(first & 0x0f) * 4;
            let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
            if ip[9] != 17 || fragment != 0 || ip.len() < ihl + 8 {
                return;
            }
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
            let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
            let udp = &ip[ihl..total.max(ihl)];
            let mut pseudo = ip[12..20].to_vec();
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
            (src, udp, pseudo)
        }
        6 if ip.len() >= 48 => {
            if ip[6] != 17 {
                return;
            }
            let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let udp = &ip[40..(40 + payload).min(ip.len())];
            let src: [u8; 16] = ip[8..24].try_into().expect("16 bytes");
            let mut pseudo = ip[8..40].to_vec();
            pseudo.extend_from_slice(&(udp.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
            (IpAddr::V6(Ipv6Addr::from(src)), udp, pseudo)
        }
        _ => return,
    };
    if udp.len() < 8 {
        return;
    }
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let payload = &udp[8..];
    if !ports.contains(&dport) || payload.len() < 12 || payload[0] >> 6 != 2 {
        return;
    }
    let stored = u16::from_be_bytes([udp[6], udp[7]]);
    if !(src.is_ipv4() && stored == 0) && internet_checksum(&[&pseudo, udp]) != 0 {
        count.bad_checksums += 1;
    }
    if (192..=223).contains(&payload[1]) {
        count.rtcp += 1;
        return;
    }
    count.packets += 1;
    *count.by_port.entry(dport).or_default() += 1;
    count.sources.insert(SocketAddr::new(src, sport));
    count.ssrcs.insert(u32::from_be_bytes(
        payload[8..12].try_into().expect("4 bytes"),
    ));
    count.payload_types.insert(payload[1] & 0x7f);
}

/// The RFC 1071 one's-complement sum over `parts` (0 when a received
/// checksum is right).
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(*last) << 8;
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
