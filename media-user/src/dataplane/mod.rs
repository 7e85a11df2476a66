//! The XDP data plane as the daemon owns it: load, pin, attach, flows,
//! counters, detach.

mod attach;
mod flows;
mod log;
pub mod object;
mod pins;
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
    pin_dir: PathBuf,
    ebpf: Ebpf,
    _log: Option<log::LogPump>,
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
        let adopted = existing.flows.is_some();

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .map_max_entries(maps::FLOWS, capacity)
            .map_max_entries(maps::FLOW_STATS, capacity)
            .map_max_entries(maps::FLOW_QUALITY, capacity)
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
            capacity,
            ncpus,
        )?;
        let outcomes = take::<PerCpuArray<MapData, u64>>(&mut ebpf, maps::OUTCOMES)?;
        let mut egress = take::<DevMapHash<MapData>>(&mut ebpf, maps::EGRESS_DEVS)?;
        // Interfaces are re-registered as they are attached.
        let stale: Vec<u32> = egress.keys().filter_map(Result::ok).collect();
        for k in stale {
            let _ = egress.remove(k);
        }
        info!(
            pin_dir = %pin_dir.display(),
            capacity,
            adopted_flows = flows.len(),
            adopted,
            "XDP data plane loaded"
        );
        Ok(Self {
            attachments: Vec::new(),
            flows,
            outcomes,
            egress,
            pin_dir,
            ebpf,
            _log: log,
        })
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
        let program = self.program_mut();
        let attachment = attach::attach(program, interface, ifindex, mode)?;
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

    /// Detach from every interface (also done on drop).
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

    /// Remove the pinned maps (and with them the installed flows, once this
    /// data plane is dropped). For tests and an explicit operator reset.
    pub fn unpin(&self) -> std::io::Result<()> {
        for name in [
            maps::FLOWS,
            maps::FLOW_STATS,
            maps::FLOW_QUALITY,
            maps::OUTCOMES,
            maps::EGRESS_DEVS,
        ] {
            match std::fs::remove_file(self.pin_dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let _ = std::fs::remove_dir(&self.pin_dir);
        if let Some(root) = self.pin_dir.parent() {
            let _ = std::fs::remove_dir(root);
        }
        Ok(())
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        if let Err(e) = self.detach_all() {
            warn!(error = %e, "detaching XDP on shutdown failed");
        }
    }
}
