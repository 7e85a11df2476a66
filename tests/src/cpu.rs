//! Where load generators and sinks run.

use nix::{
    sched::{CpuSet, sched_getaffinity, sched_setaffinity},
    unistd::Pid,
};

/// The CPU load generators send from. On veth a frame's whole way through
/// the relay (XDP, or the stack's forwarding) runs in softirq on the CPU
/// that sent it.
pub const GENERATOR: usize = 0;
/// The CPU sinks receive on.
pub const SINK: usize = 1;

/// The calling thread pinned to one CPU until this is dropped, when its
/// previous affinity comes back. The benchmark gives the generator and the
/// sink a CPU each, the same one in every run, so that differences between
/// runs are the path's and not where the scheduler happened to put them.
pub struct Pinned {
    previous: Option<CpuSet>,
}

impl Pinned {
    /// Pin to `cpu`; a no-op (nothing pinned) when the machine has no such
    /// CPU or the kernel refuses.
    pub fn to(cpu: usize) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let previous = sched_getaffinity(Pid::from_raw(0)).ok();
        let mut set = CpuSet::new();
        let pinned =
            cpu < cpus && set.set(cpu).is_ok() && sched_setaffinity(Pid::from_raw(0), &set).is_ok();
        Self {
            previous: previous.filter(|_| pinned),
        }
    }

    /// Whether the thread is pinned.
    pub fn is_pinned(&self) -> bool {
        self.previous.is_some()
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(set) = self.previous.take() {
            let _ = sched_setaffinity(Pid::from_raw(0), &set);
        }
    }
}

/// The calling thread `SCHED_FIFO` until this is dropped, when it goes back
/// to the normal policy (needs root; best effort). Generators and sinks
/// play hosts of their own: a busy-host job must not delay them, and the
/// thread that ran one must not stay real-time afterwards.
pub struct Realtime {
    entered: bool,
}

impl Realtime {
    pub fn enter(priority: i32) -> Self {
        let param = libc::sched_param {
            sched_priority: priority,
        };
        // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
        let entered =
            unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) == 0 };
        Self { entered }
    }

    pub fn is_entered(&self) -> bool {
        self.entered
    }
}

impl Drop for Realtime {
    fn drop(&mut self) {
        if self.entered {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: as in `enter`.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &raw const param) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_and_restores() {
        let before = sched_getaffinity(Pid::from_raw(0)).unwrap();
        {
            let p = Pinned::to(0);
            if p.is_pinned() {
                let now = sched_getaffinity(Pid::from_raw(0)).unwrap();
                assert!(now.is_set(0).unwrap());
            }
        }
        let after = sched_getaffinity(Pid::from_raw(0)).unwrap();
        assert_eq!(before, after);
        assert!(!Pinned::to(100_000).is_pinned());
    }
}
