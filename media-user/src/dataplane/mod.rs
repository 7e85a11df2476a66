//! The XDP data plane as the daemon owns it: load, pin, attach, flows,
//! counters, the daemon's heartbeat, teardown.
//!
//! Everything that forwarding needs lives in bpffs and outlives the
//! process: the maps (under `<pin-root>/<layout version>/`), and the XDP
//! attachments as pinned bpf_links (`<pin-root>/links/`). Dropping a
//! `DataPlane` — the daemon exiting, crashing, being replaced — leaves the
//! program forwarding the installed flows. Only [`DataPlane::teardown`]
//! (`media-relay teardown`) detaches and removes them.

mod attach;
mod batch;
mod flows;
pub mod lock;
mod log;
pub mod object;
mod pins;
pub mod port_counters;
pub mod sessions;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

pub use attach::{AttachError, Attachment, XdpMode};
use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, xdp::DevMapHash},
    programs::{ProgramError, Xdp},
};
pub use flows::{FlowCounters, FlowError, FlowTable, SLOT_GRACE};
use media_ebpf::maps::Control;
use media_ebpf::{Outcome, maps};
pub use pins::PinError;
use thiserror::Error;
use tracing::{info, warn};

use crate::host::{self, HostError};

#[derive(Debug, Error)]
pub enum DataPlaneError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(
        "the kernel refused the XDP program ({source}); run with RUST_LOG=debug for the \
         verifier log"
    )]
    Verifier {
        #[source]
        source: ProgramError,
    },
    #[error("loading the XDP object failed: {0}")]
    Load(#[from] EbpfError),
    #[error("data-plane map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error(transparent)]
    Flow(#[from] FlowError),
    #[error("registering the interface for redirects: {source}")]
    Egress {
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    #[error("reading the CPU count: {0}")]
    Cpus(std::io::Error),
    #[error("creating {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{flows} flows of calls in progress are pinned under {dir} by a build with pinned-map layout \
         {found}; this build uses layout {ours} and cannot adopt them; `media-relay teardown --pin-root \
         {root}` removes them (it ends those calls) — or run the build that made them"
    )]
    OtherLayout {
        dir: PathBuf,
        root: PathBuf,
        found: String,
        ours: &'static str,
        flows: usize,
    },
}

/// How to load the data plane.
#[derive(Clone, Debug)]
pub struct Options {
    /// bpffs directory under which `<LAYOUT_VERSION>/` holds the pins.
    pub pin_root: PathBuf,
    /// Capacity of the flow table (flows, not calls).
    pub max_flows: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pin_root: PathBuf::from(maps::PIN_ROOT),
            max_flows: maps::DEFAULT_MAX_FLOWS,
        }
    }
}

/// The loaded relay program, its maps and its attachments.
pub struct DataPlane {
    // Field order matters on drop: attachments (links) go before the
    // program that owns them.
    attachments: Vec<Attachment>,
    flows: FlowTable,
    outcomes: PerCpuArray<MapData, u64>,
    egress: DevMapHash<MapData>,
    control: Array<MapData, Control>,
    pin_root: PathBuf,
    pin_dir: PathBuf,
    /// Per-stream quality accounting in the program (see
    /// [`set_quality_telemetry`](Self::set_quality_telemetry)).
    quality_telemetry: bool,
    ebpf: Ebpf,
    _log: Option<log::LogPump>,
}

/// CLOCK_MONOTONIC in ns: `bpf_ktime_get_ns()`'s clock.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        (t.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(t.tv_nsec() as u64)
    })
}

/// Pins of another layout version under `root` that hold flows: state of
/// calls in progress that this build cannot read. Empty ones are stale
/// (their daemons left nothing running) and are removed.
fn other_layouts(root: &Path) -> Result<(), DataPlaneError> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_version = name.len() > 1
            && name.starts_with('v')
            && name[1..].chars().all(|c| c.is_ascii_digit());
        if !is_version || name == maps::LAYOUT_VERSION {
            continue;
        }
        let dir = e.path();
        let flows = MapData::from_pin(dir.join(maps::FLOWS))
            .ok()
            .map_or(0, |m| {
                // Count keys without knowing the old key type: the raw
                // map's key iteration needs none.
                let info = m.info().ok();
                let key_size = info.map_or(0, |i| i.key_size());
                raw_key_count(&m, key_size)
            });
        if flows > 0 {
            return Err(DataPlaneError::OtherLayout {
                dir,
                root: root.to_owned(),
                found: name,
                ours: maps::LAYOUT_VERSION,
                flows,
            });
        }
        warn!(dir = %dir.display(), "removing stale pins of layout {name} (no flows)");
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// Keys of a map of unknown layout (`BPF_MAP_GET_NEXT_KEY` with buffers of
/// `key_size`).
fn raw_key_count(m: &MapData, key_size: u32) -> usize {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    if key_size == 0 || key_size > 256 {
        return 0;
    }
    let fd = m.fd().as_fd().as_raw_fd();
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut n = 0;
    let mut first = true;
    // Bounded: a pinned map holds at most its max_entries.
    for _ in 0..(1 << 22) {
        let mut attr = [0u64; 4];
        attr[0] = fd as u64;
        attr[1] = if first { 0 } else { key.as_ptr() as u64 };
        attr[2] = next.as_mut_ptr() as u64;
        // SAFETY: bpf(BPF_MAP_GET_NEXT_KEY) with a zeroed attr holding the
        // map fd and pointers to two buffers of the map's key size, alive
        // for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                4, // BPF_MAP_GET_NEXT_KEY
                attr.as_mut_ptr(),
                size_of_val(&attr) as u32,
            )
        };
        if rc != 0 {
            break;
        }
        n += 1;
        std::mem::swap(&mut key, &mut next);
        first = false;
    }
    n
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataPlaneError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DataPlaneError::Map {
        name,
        source: MapError::InvalidName {
            name: name.to_owned(),
        },
    })?;
    T::try_from(map).map_err(|source| DataPlaneError::Map { name, source })
}

impl DataPlane {
    /// Check the host, load the program (adopting compatible pinned maps)
    /// and wire its log to `tracing`. Nothing is attached yet.
    pub fn load(opts: &Options) -> Result<Self, DataPlaneError> {
        host::check_privileges()?;
        let pin_dir = opts.pin_root.join(maps::LAYOUT_VERSION);
        host::ensure_bpffs(&pin_dir)?;
        other_layouts(&opts.pin_root)?;
        let existing = pins::check(&pin_dir)?;

        let mut capacity = opts.max_flows.max(1);
        if let Some(pinned) = existing.flows {
            if pinned != capacity {
                warn!(
                    pinned,
                    configured = capacity,
                    pin_dir = %pin_dir.display(),
                    "adopting the pinned flow table with its capacity; remove the pins while no \
                     call is up to apply the new --max-flows"
                );
            }
            capacity = pinned;
        }
        if let Some(stats) = existing.flow_stats {
            capacity = capacity.min(stats);
        }
        if let Some(quality) = existing.flow_quality {
            capacity = capacity.min(quality);
        }
        if let Some(rtcp) = existing.flow_rtcp {
            capacity = capacity.min(rtcp);
        }
        let adopted = existing.flows.is_some();

        let stamp = object::stamp();
        let mut ebpf = EbpfLoader::new()
            .override_global(object::STAMP_SYMBOL, &stamp, true)
            .default_map_pin_directory(&pin_dir)
            .map_max_entries(maps::FLOWS, capacity)
            .map_max_entries(maps::FLOW_STATS, capacity)
            .map_max_entries(maps::FLOW_QUALITY, capacity)
            .map_max_entries(maps::FLOW_RTCP, capacity)
            .load(object::RELAY)?;
        {
            let program: &mut Xdp = ebpf
                .program_mut(object::RELAY_PROGRAM)
                .ok_or_else(|| {
                    DataPlaneError::Load(EbpfError::ProgramError(ProgramError::InvalidName {
                        name: object::RELAY_PROGRAM.to_owned(),
                    }))
                })?
                .try_into()
                .map_err(|source| DataPlaneError::Verifier { source })?;
            if let Err(source) = program.load() {
                if let ProgramError::LoadError { verifier_log, .. } = &source {
                    tracing::debug!(%verifier_log, "verifier log");
                }
                return Err(DataPlaneError::Verifier { source });
            }
        }
        // After the program load: the logger takes the log ring buffer map
        // out of `ebpf`, and the program must have been relocated against it.
        let log = log::LogPump::start(&mut ebpf);

        let ncpus = aya::util::nr_cpus().map_err(|(_, e)| DataPlaneError::Cpus(e))?;
        let flows = FlowTable::adopt(
            take::<HashMap<MapData, _, _>>(&mut ebpf, maps::FLOWS)?,
            take::<PerCpuArray<MapData, _>>(&mut ebpf, maps::FLOW_STATS)?,
            take::<Array<MapData, _>>(&mut ebpf, maps::FLOW_QUALITY)?,
            take::<Array<MapData, _>>(&mut ebpf, maps::FLOW_RTCP)?,
            capacity,
            ncpus,
        )?;
        let outcomes = take::<PerCpuArray<MapData, u64>>(&mut ebpf, maps::OUTCOMES)?;
        let control = take::<Array<MapData, Control>>(&mut ebpf, maps::CONTROL)?;
        // Kept as the previous run left it while this one attaches (the
        // adopted program redirects through it meanwhile); entries of
        // interfaces no longer attached go in `forget_other_egress`.
        let egress = take::<DevMapHash<MapData>>(&mut ebpf, maps::EGRESS_DEVS)?;
        info!(
            pin_dir = %pin_dir.display(),
            capacity,
            adopted_flows = flows.len(),
            adopted,
            program_stamp = format!("{stamp:016x}"),
            "XDP data plane loaded"
        );
        let links = opts.pin_root.join(maps::LINKS_DIR);
        std::fs::create_dir_all(&links).map_err(|source| DataPlaneError::Dir {
            path: links.clone(),
            source,
        })?;
        Ok(Self {
            attachments: Vec::new(),
            flows,
            outcomes,
            egress,
            control,
            pin_root: opts.pin_root.clone(),
            pin_dir,
            quality_telemetry: true,
            ebpf,
            _log: log,
        })
    }

    fn links_dir(&self) -> PathBuf {
        self.pin_root.join(maps::LINKS_DIR)
    }

    /// Tell the program that a daemon runs (for `valid_for` from now) and
    /// which port range is its: called every tick. Past the time, packets
    /// that would need a daemon are dropped instead of reaching ports with
    /// no socket. `every_port_held`: each port of the daemon's calls has a
    /// flow, so packets for the range without one are for no call and
    /// are dropped too ([`maps::CONTROL_UNHELD_DROP`]).
    pub fn heartbeat(
        &mut self,
        valid_for: std::time::Duration,
        ports: (u16, u16),
        every_port_held: bool,
    ) {
        let mut flags = 0;
        if every_port_held {
            flags |= maps::CONTROL_UNHELD_DROP;
        }
        if !self.quality_telemetry {
            flags |= maps::CONTROL_NO_QUALITY;
        }
        let c = Control {
            daemon_until_ns: monotonic_ns().saturating_add(valid_for.as_nanos() as u64),
            port_min: ports.0,
            port_max: ports.1,
            flags,
        };
        if let Err(e) = self.control.set(0, c, 0) {
            warn!(error = %e, "writing the daemon heartbeat failed");
        }
    }

    /// Switch the program's per-stream quality accounting (`FLOW_QUALITY`,
    /// `FLOW_RTCP`) on or off ([`maps::CONTROL_NO_QUALITY`]); counters
    /// (packets, bytes, last seen) are kept either way. On by default;
    /// the daemon's `quality-telemetry` option. Written to the program at
    /// once and with every [`heartbeat`](Self::heartbeat).
    pub fn set_quality_telemetry(&mut self, on: bool) {
        self.quality_telemetry = on;
        if let Ok(mut c) = self.control.get(&0, 0) {
            c.flags = if on {
                c.flags & !maps::CONTROL_NO_QUALITY
            } else {
                c.flags | maps::CONTROL_NO_QUALITY
            };
            if let Err(e) = self.control.set(0, c, 0) {
                warn!(error = %e, "writing the quality telemetry switch failed");
            }
        }
    }

    /// Whether the program accounts per-stream quality (see
    /// [`set_quality_telemetry`](Self::set_quality_telemetry)).
    pub fn quality_telemetry(&self) -> bool {
        self.quality_telemetry
    }

    /// Tell the program that no daemon runs (a clean stop): from now on
    /// packets that would need one are dropped.
    pub fn absent(&mut self) {
        if let Ok(mut c) = self.control.get(&0, 0) {
            c.daemon_until_ns = 0;
            let _ = self.control.set(0, c, 0);
        }
    }

    /// Drop redirect entries of interfaces this data plane is not attached
    /// to (once every configured interface is attached: an earlier run's
    /// entries serve the adopted calls until then).
    pub fn forget_other_egress(&mut self) {
        let attached: Vec<u32> = self.attachments.iter().map(|a| a.ifindex).collect();
        let stale: Vec<u32> = self
            .egress
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !attached.contains(k))
            .collect();
        for k in stale {
            let _ = self.egress.remove(k);
        }
    }

    /// Interfaces an earlier run left the program attached to (pinned
    /// links).
    pub fn pinned_interfaces(&self) -> Vec<String> {
        attach::pinned_interfaces(&self.links_dir())
    }

    /// Detach from an interface an earlier run attached to and this run is
    /// not configured for.
    pub fn release_interface(&mut self, interface: &str) -> Result<(), DataPlaneError> {
        attach::unpin_other(&self.links_dir(), interface)?;
        Ok(())
    }

    /// Attach to `interface` in `mode` (see [`XdpMode`]) and allow
    /// redirects to it. Enables forwarding on it, which the FIB lookup needs.
    pub fn attach(
        &mut self,
        interface: &str,
        mode: XdpMode,
    ) -> Result<&Attachment, DataPlaneError> {
        let ifindex = host::ifindex(interface)?;
        if self.attachments.iter().any(|a| a.ifindex == ifindex) {
            return Err(AttachError::AlreadyAttached {
                interface: interface.to_owned(),
            }
            .into());
        }
        host::enable_forwarding(interface)?;
        let links = self.links_dir();
        let program = self.program_mut();
        let attachment = attach::attach(program, &links, interface, ifindex, mode)?;
        self.egress
            .insert(ifindex, ifindex, None, 0)
            .map_err(|source| DataPlaneError::Egress { source })?;
        self.attachments.push(attachment);
        Ok(self.attachments.last().expect("just pushed"))
    }

    /// Detach from `interface`.
    pub fn detach(&mut self, interface: &str) -> Result<(), DataPlaneError> {
        let Some(i) = self
            .attachments
            .iter()
            .position(|a| a.interface == interface)
        else {
            return Err(AttachError::NotAttached {
                interface: interface.to_owned(),
            }
            .into());
        };
        let a = self.attachments.remove(i);
        let _ = self.egress.remove(a.ifindex);
        let program = self.program_mut();
        attach::detach(program, a)?;
        Ok(())
    }

    /// Detach from every interface, for good (pins removed).
    pub fn detach_all(&mut self) -> Result<(), DataPlaneError> {
        while let Some(a) = self.attachments.first() {
            let name = a.interface.clone();
            self.detach(&name)?;
        }
        Ok(())
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    pub fn flows_mut(&mut self) -> &mut FlowTable {
        &mut self.flows
    }

    /// Where the maps are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The loaded relay program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(object::RELAY_PROGRAM)
            .expect("loaded in DataPlane::load")
            .try_into()
            .expect("the relay program is XDP")
    }

    fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(object::RELAY_PROGRAM)
            .expect("loaded in DataPlane::load")
            .try_into()
            .expect("the relay program is XDP")
    }

    /// Per-outcome packet counts, summed over CPUs.
    pub fn outcomes(&self) -> Result<BTreeMap<&'static str, u64>, DataPlaneError> {
        let mut out = BTreeMap::new();
        for o in Outcome::ALL {
            let v = self
                .outcomes
                .get(&(o as u32), 0)
                .map_err(|source| DataPlaneError::Map {
                    name: maps::OUTCOMES,
                    source,
                })?;
            out.insert(o.name(), v.iter().sum());
        }
        Ok(out)
    }

    /// Detach from every interface and remove every pin (the maps, the
    /// flows in them, the call records, the links): forwarding stops, and
    /// an earlier run's calls are gone. `media-relay teardown`, and tests.
    pub fn teardown(mut self) -> Result<(), DataPlaneError> {
        self.detach_all()?;
        let links = self.links_dir();
        for iface in attach::pinned_interfaces(&links) {
            attach::unpin_other(&links, &iface)?;
        }
        remove_pins(&self.pin_root)?;
        Ok(())
    }
}

/// Remove `root`'s pins (every layout version, the links, the call
/// records) and the directories. What `media-relay teardown` does after
/// detaching; also usable when nothing can be loaded.
pub fn remove_pins(root: &Path) -> Result<(), DataPlaneError> {
    if !root.exists() {
        return Ok(());
    }
    std::fs::remove_dir_all(root).map_err(|source| DataPlaneError::Dir {
        path: root.to_owned(),
        source,
    })
}

// No Drop: the pinned links keep the program attached after the process
// is gone (that is the point); the descriptors just close.
