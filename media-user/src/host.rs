//! Facts about the host the daemon depends on, each checked up front so
//! that a missing one is reported as one clear line with the fix.

use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

use thiserror::Error;
use tracing::{info, warn};

/// Capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;
/// `BPF_FS_MAGIC` (linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Error)]
pub enum HostError {
    #[error(
        "media-relay needs root, or CAP_BPF and CAP_NET_ADMIN (CAP_SYS_ADMIN on kernels \
         before 5.8), to load and attach XDP programs; missing: {missing}. Run it as root \
         or with `setcap cap_bpf,cap_net_admin,cap_perfmon+ep`"
    )]
    NotPrivileged { missing: String },
    #[error(
        "{path} is not a bpffs mount and mounting one failed ({source}); run \
         `mount -t bpf bpf {path}` (inside `ip netns exec` too: it remounts /sys)"
    )]
    NoBpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unknown interface {name:?}: see `ip link` for the interfaces of this host")]
    UnknownInterface { name: String },
    #[error("could not set sysctl {path}: {source}")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Effective capabilities of this process, from /proc/self/status.
fn effective_caps() -> io::Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| io::Error::other("no CapEff line in /proc/self/status"))
}

/// Check that this process may load and attach XDP programs.
pub fn check_privileges() -> Result<(), HostError> {
    let caps = effective_caps().unwrap_or(0);
    let has = |c: u32| caps & (1 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(HostError::NotPrivileged {
            missing: missing.join(", "),
        })
    }
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Make sure the bpffs that will hold `pin_dir` is mounted (mounting it at
/// its usual place if needed) and create `pin_dir`.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), HostError> {
    let mount_point = Path::new("/sys/fs/bpf");
    let under_default = pin_dir.starts_with(mount_point);
    let fs_root = if under_default {
        mount_point
    } else {
        pin_dir.ancestors().find(|a| is_bpffs(a)).unwrap_or(pin_dir)
    };
    if !is_bpffs(fs_root) {
        if !under_default {
            return Err(HostError::NoBpffs {
                path: pin_dir.to_owned(),
                source: io::Error::other("not on a bpffs"),
            });
        }
        nix::mount::mount(
            Some("bpf"),
            mount_point,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| HostError::NoBpffs {
            path: mount_point.to_owned(),
            source: e.into(),
        })?;
        info!(path = %mount_point.display(), "mounted bpffs");
    }
    fs::create_dir_all(pin_dir).map_err(|source| HostError::NoBpffs {
        path: pin_dir.to_owned(),
        source,
    })
}

/// The ifindex of interface `name` in this network namespace.
pub fn ifindex(name: &str) -> Result<u32, HostError> {
    let unknown = || HostError::UnknownInterface {
        name: name.to_owned(),
    };
    let c = CString::new(name).map_err(|_| unknown())?;
    // SAFETY: `c` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(unknown()),
        i => Ok(i),
    }
}

fn write_sysctl(path: &Path, value: &str) -> Result<bool, HostError> {
    let current = fs::read_to_string(path).map_err(|source| HostError::Sysctl {
        path: path.to_owned(),
        source,
    })?;
    if current.trim() == value {
        return Ok(false);
    }
    fs::write(path, value).map_err(|source| HostError::Sysctl {
        path: path.to_owned(),
        source,
    })?;
    Ok(true)
}

/// Enable forwarding on `interface`, which `bpf_fib_lookup` requires of the
/// ingress interface (see media-ebpf's `fib.rs`). On IPv6 this would also
/// make the interface ignore router advertisements (`accept_ra=1` means
/// "only when not forwarding"), which would lose a SLAAC default route on
/// cloud instances, so `accept_ra=1` becomes 2 ("even when forwarding").
pub fn enable_forwarding(interface: &str) -> Result<(), HostError> {
    let v4 = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{interface}/forwarding"));
    if write_sysctl(&v4, "1")? {
        info!(interface, sysctl = %v4.display(), "enabled IPv4 forwarding for XDP next-hop lookups");
    }
    let v6 = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{interface}"));
    if v6.exists() {
        let ra = v6.join("accept_ra");
        if fs::read_to_string(&ra).is_ok_and(|v| v.trim() == "1") {
            write_sysctl(&ra, "2")?;
            info!(
                interface,
                "accept_ra 1 -> 2 so that router advertisements still count"
            );
        }
        let fwd = v6.join("forwarding");
        if write_sysctl(&fwd, "1")? {
            info!(interface, sysctl = %fwd.display(), "enabled IPv6 forwarding for XDP next-hop lookups");
        }
    } else {
        warn!(
            interface,
            "IPv6 is disabled on this interface; IPv6 flows will not be forwarded"
        );
    }
    Ok(())
}

/// `net.ipv4.ip_local_reserved_ports` (IPv6 follows it): ports the kernel
/// never hands out as ephemeral ports (a client's `bind(0)` or
/// `connect()`), though they may still be bound explicitly.
const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// The kernel's list with `lo..=hi` added or removed (comma-separated
/// ports and `a-b` ranges).
fn reserved_with(current: &str, lo: u16, hi: u16, add: bool) -> String {
    let ours = if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    };
    let mut items: Vec<&str> = current
        .trim()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != ours)
        .collect();
    if add {
        items.push(&ours);
    }
    items.join(",")
}

/// `net.ipv4.ip_local_port_range`: where the kernel picks ephemeral ports
/// (IPv6 too).
const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// Other programs (the SIP agent's TCP connections, resolvers, anything
/// that connects out) keep at least this many ephemeral ports: a media
/// range covering more of them is not reserved.
const MIN_EPHEMERAL_LEFT: u32 = 4096;

/// What reserving the media range would do to the ephemeral ports.
#[derive(Debug, PartialEq, Eq)]
enum Reservation {
    /// The ranges do not overlap: no ephemeral bind can pick a media port.
    NotNeeded,
    Reserve,
    /// It would leave other programs only `left` of the `of` ephemeral
    /// ports.
    TooMuch {
        left: u32,
        of: u32,
    },
}

fn reservation(media: (u16, u16), ephemeral: (u16, u16)) -> Reservation {
    let (lo, hi) = (u32::from(media.0), u32::from(media.1));
    let (elo, ehi) = (u32::from(ephemeral.0), u32::from(ephemeral.1));
    let of = ehi.saturating_sub(elo) + 1;
    let covered = (hi.min(ehi) + 1).saturating_sub(lo.max(elo));
    if covered == 0 {
        Reservation::NotNeeded
    } else if of - covered < MIN_EPHEMERAL_LEFT {
        Reservation::TooMuch {
            left: of - covered,
            of,
        }
    } else {
        Reservation::Reserve
    }
}

/// Keep the media port range `lo..=hi` out of the kernel's ephemeral
/// ports, so that while the daemon is away (a crash, a restart, an
/// upgrade) and its sockets are closed, no other program is given one of
/// its calls' ports by chance. Not done (with a warning) where it would
/// starve other programs of ephemeral ports. Best effort: returns whether
/// the media ports are safe from ephemeral binds.
pub fn reserve_ports(lo: u16, hi: u16) -> bool {
    let ephemeral = fs::read_to_string(PORT_RANGE).ok().and_then(|s| {
        let mut it = s.split_whitespace().map(str::parse::<u16>);
        Some((it.next()?.ok()?, it.next()?.ok()?))
    });
    let Some(ephemeral) = ephemeral else {
        return false;
    };
    match reservation((lo, hi), ephemeral) {
        Reservation::NotNeeded => {
            info!(ports = %format!("{lo}-{hi}"), ephemeral = %format!("{}-{}", ephemeral.0, ephemeral.1), "media ports are outside the kernel's ephemeral ports: nothing to reserve");
            return true;
        }
        Reservation::TooMuch { left, of } => {
            tracing::warn!(
                ports = %format!("{lo}-{hi}"),
                ephemeral = %format!("{}-{}", ephemeral.0, ephemeral.1),
                left,
                of,
                "media ports not reserved: they cover the kernel's ephemeral ports, reserving them would leave other programs {left} of {of}; while the daemon restarts another program may be given a call's port. Move port-min/port-max out of the ephemeral range (net.ipv4.ip_local_port_range) or narrow them"
            );
            return false;
        }
        Reservation::Reserve => {}
    }
    let Ok(current) = fs::read_to_string(RESERVED_PORTS) else {
        return false;
    };
    let new = reserved_with(&current, lo, hi, true);
    match fs::write(RESERVED_PORTS, &new) {
        Ok(()) => {
            info!(ports = %format!("{lo}-{hi}"), "media ports reserved from the kernel's ephemeral ports");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not reserve the media ports from ephemeral use (net.ipv4.ip_local_reserved_ports)");
            false
        }
    }
}

/// Undo [`reserve_ports`] (`media-relay teardown`).
pub fn release_ports(lo: u16, hi: u16) {
    if let Ok(current) = fs::read_to_string(RESERVED_PORTS) {
        let _ = fs::write(RESERVED_PORTS, reserved_with(&current, lo, hi, false));
    }
}

/// Descriptors beyond one per media port: the SIP agent's TCP connections,
/// the ng and metrics sockets, BPF maps and links, the log.
const NOFILE_HEADROOM: u64 = 4096;

/// Raise the descriptor limit (`RLIMIT_NOFILE`) to what the media port
/// range needs: one socket per port, plus headroom. The soft limit goes up
/// to the hard one freely; the hard one only with `CAP_SYS_RESOURCE` (the
/// unit sets `LimitNOFILE=` instead). Returns the limit in force; below
/// the need, a warning says how many calls fit.
pub fn raise_nofile(ports: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let need = ports + NOFILE_HEADROOM;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if soft >= need {
        return soft;
    }
    let raised = if hard >= need {
        setrlimit(Resource::RLIMIT_NOFILE, need, hard).map(|()| need)
    } else {
        // Raising the hard limit needs CAP_SYS_RESOURCE; else the most
        // the hard limit allows.
        setrlimit(Resource::RLIMIT_NOFILE, need, need)
            .map(|()| need)
            .or_else(|_| setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map(|()| hard))
    };
    let now = raised.unwrap_or(soft);
    if now < need {
        let calls = now.saturating_sub(NOFILE_HEADROOM) / 4;
        tracing::warn!(
            limit = now,
            need,
            calls,
            "the file descriptor limit (RLIMIT_NOFILE) holds sockets for about {calls} two-party calls, not the whole port range: raise LimitNOFILE= (or ulimit -n) to {need}"
        );
    } else {
        info!(
            limit = now,
            "file descriptor limit raised for the media port range"
        );
    }
    now
}

/// The kernel's PM QoS interface for CPU wake-up latency: while a process
/// holds it open with a value written, no idle CPU enters a state that
/// takes longer than that many microseconds to leave (0: idle CPUs poll).
pub const CPU_DMA_LATENCY: &str = "/dev/cpu_dma_latency";

/// A CPU wake-up latency request, in force while this value lives (the
/// kernel drops it when the file is closed, also when the process dies).
#[derive(Debug)]
pub struct CpuWakeLatency {
    _file: fs::File,
    pub us: u32,
}

/// Ask the kernel to keep every CPU within `us` microseconds of running
/// (`cpu-wake-latency`). On a VM whose vCPUs halt at once when idle
/// (`haltpoll.guest_halt_poll_ns=0`, or no polling at all), every packet
/// or message that wakes a thread otherwise waits for the hypervisor to
/// run the vCPU again: the tails of latency move by hundreds of
/// microseconds. Costs an idle core's power (or a burstable instance's
/// CPU credit): for dedicated hosts.
pub fn hold_cpu_wake_latency(us: u32) -> io::Result<CpuWakeLatency> {
    use std::io::Write as _;
    let value = i32::try_from(us).map_err(|_| io::Error::other("above i32::MAX µs"))?;
    let mut file = fs::OpenOptions::new().write(true).open(CPU_DMA_LATENCY)?;
    file.write_all(&value.to_ne_bytes())?;
    Ok(CpuWakeLatency { _file: file, us })
}

/// The wake-up latency in force now, over every process's requests
/// (microseconds; 2 000 000 000 when nobody asks).
pub fn cpu_wake_latency_now() -> io::Result<i32> {
    use std::io::Read as _;
    let mut buf = [0_u8; 4];
    fs::File::open(CPU_DMA_LATENCY)?.read_exact(&mut buf)?;
    Ok(i32::from_ne_bytes(buf))
}

#[cfg(test)]
mod reserved_tests {
    use super::{Reservation, reservation, reserved_with};

    #[test]
    fn a_range_is_reserved_only_where_it_matters_and_never_all_of_them() {
        let eph = (32768, 60999);
        assert_eq!(reservation((10000, 30000), eph), Reservation::NotNeeded);
        assert_eq!(reservation((61000, 65000), eph), Reservation::NotNeeded);
        assert_eq!(reservation((30000, 40000), eph), Reservation::Reserve);
        assert_eq!(reservation((30000, 32768), eph), Reservation::Reserve);
        assert_eq!(
            reservation((2000, 65000), eph),
            Reservation::TooMuch { left: 0, of: 28232 }
        );
        assert_eq!(
            reservation((32768, 57000), eph),
            Reservation::TooMuch {
                left: 3999,
                of: 28232
            }
        );
        assert_eq!(reservation((32768, 56903), eph), Reservation::Reserve);
    }

    #[test]
    fn the_range_is_added_once_and_removed_alone() {
        assert_eq!(reserved_with("\n", 30000, 40000, true), "30000-40000");
        assert_eq!(
            reserved_with("8080,9000-9010\n", 30000, 40000, true),
            "8080,9000-9010,30000-40000"
        );
        assert_eq!(
            reserved_with("8080,30000-40000", 30000, 40000, true),
            "8080,30000-40000"
        );
        assert_eq!(
            reserved_with("8080,30000-40000,9000", 30000, 40000, false),
            "8080,9000"
        );
    }
}
