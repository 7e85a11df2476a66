//! Pinned maps: where they live and whether an existing pin can be adopted.
//!
//! aya reuses any map already pinned at a path without checking it, so the
//! layout of every existing pin is checked here first. The layout version
//! is part of the path (`media_ebpf::maps::LAYOUT_VERSION`): a daemon only
//! ever finds pins written by a compatible one, unless someone put them
//! there by hand.

use std::path::{Path, PathBuf};

use aya::maps::{MapInfo, MapType};
use media_ebpf::{Flow, FlowKey, FlowStats, Outcome, RtcpSeen, StreamQuality, maps};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PinError {
    #[error(
        "pinned map {path} does not match this version's layout ({what}: expected {expected}, \
         found {found}); stop every media-relay using it and remove it with `rm {path}` \
         (installed flows are lost)"
    )]
    Incompatible {
        path: PathBuf,
        what: &'static str,
        expected: String,
        found: String,
    },
    #[error("cannot read pinned map {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
}

/// What a pinned map must look like.
struct Expected {
    name: &'static str,
    map_type: MapType,
    key_size: u32,
    value_size: u32,
}

const fn size<T>() -> u32 {
    size_of::<T>() as u32
}

const EXPECTED: [Expected; 7] = [
    Expected {
        name: maps::FLOWS,
        map_type: MapType::Hash,
        key_size: size::<FlowKey>(),
        value_size: size::<Flow>(),
    },
    Expected {
        name: maps::FLOW_STATS,
        map_type: MapType::PerCpuArray,
        key_size: 4,
        value_size: size::<FlowStats>(),
    },
    Expected {
        name: maps::FLOW_QUALITY,
        map_type: MapType::Array,
        key_size: 4,
        value_size: size::<StreamQuality>(),
    },
    Expected {
        name: maps::FLOW_RTCP,
        map_type: MapType::Array,
        key_size: 4,
        value_size: size::<RtcpSeen>(),
    },
    Expected {
        name: maps::OUTCOMES,
        map_type: MapType::PerCpuArray,
        key_size: 4,
        value_size: 8,
    },
    Expected {
        name: maps::CONTROL,
        map_type: MapType::Array,
        key_size: 4,
        value_size: size::<maps::Control>(),
    },
    Expected {
        name: maps::EGRESS_DEVS,
        map_type: MapType::DevMapHash,
        key_size: 4,
        // bpf_devmap_val (ifindex + program fd/id); 4 on kernels < 5.8.
        value_size: 8,
    },
];

/// Capacities of already-pinned maps, by name. A map missing from an
/// existing pin directory (`FLOW_RTCP` under pins of a build that
/// predates it) is created at load, with the adopted capacity.
#[derive(Debug, Default)]
pub struct Existing {
    pub flows: Option<u32>,
    pub flow_stats: Option<u32>,
    pub flow_quality: Option<u32>,
    pub flow_rtcp: Option<u32>,
    pub outcomes: Option<u32>,
}

/// Check every map already pinned under `dir` against this build's layout.
pub fn check(dir: &Path) -> Result<Existing, PinError> {
    let mut existing = Existing::default();
    for e in &EXPECTED {
        let path = dir.join(e.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| PinError::Unreadable {
            path: path.clone(),
            source,
        })?;
        let incompatible = |what, expected: String, found: String| PinError::Incompatible {
            path: path.clone(),
            what,
            expected,
            found,
        };
        let map_type = info.map_type().map_err(|source| PinError::Unreadable {
            path: path.clone(),
            source,
        })?;
        if map_type != e.map_type {
            return Err(incompatible(
                "map type",
                format!("{:?}", e.map_type),
                format!("{map_type:?}"),
            ));
        }
        if info.key_size() != e.key_size {
            return Err(incompatible(
                "key size",
                e.key_size.to_string(),
                info.key_size().to_string(),
            ));
        }
        // DEVMAP_HASH values are 4 bytes on kernels without devmap programs.
        let value_ok = info.value_size() == e.value_size
            || (e.map_type == MapType::DevMapHash && info.value_size() == 4);
        if !value_ok {
            return Err(incompatible(
                "value size",
                e.value_size.to_string(),
                info.value_size().to_string(),
            ));
        }
        if e.name == maps::OUTCOMES && info.max_entries() != Outcome::COUNT {
            return Err(incompatible(
                "entries",
                Outcome::COUNT.to_string(),
                info.max_entries().to_string(),
            ));
        }
        match e.name {
            maps::FLOWS => existing.flows = Some(info.max_entries()),
            maps::FLOW_STATS => existing.flow_stats = Some(info.max_entries()),
            maps::FLOW_QUALITY => existing.flow_quality = Some(info.max_entries()),
            maps::FLOW_RTCP => existing.flow_rtcp = Some(info.max_entries()),
            maps::OUTCOMES => existing.outcomes = Some(info.max_entries()),
            _ => {}
        }
    }
    Ok(existing)
}
