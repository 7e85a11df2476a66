//! The XDP program's rare-path log records (aya-log), forwarded to
//! `tracing` under the `media_ebpf` target.

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;
use tracing::debug;

/// Drains the program's log ring buffer on the tokio runtime, if there is
/// one; without a runtime (tests calling the API directly) the logger is
/// only kept, and records stay in the ring buffer, which is harmless.
pub(super) enum LogPump {
    Task(tokio::task::JoinHandle<()>),
    Idle(
        #[expect(dead_code, reason = "kept to own the ring buffer")]
        Box<EbpfLogger<tracing_log::LogTracer>>,
    ),
}

impl LogPump {
    pub(super) fn start(ebpf: &mut Ebpf) -> Option<Self> {
        let logger = match EbpfLogger::init_with_logger(ebpf, tracing_log::LogTracer::new()) {
            Ok(l) => l,
            Err(e) => {
                // No log statements compiled in, or no ring buffer support.
                debug!(error = %e, "XDP log forwarding not started");
                return None;
            }
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Some(Self::Idle(Box::new(logger)));
        };
        let _guard = handle.enter();
        // SAFETY: the logger owns the ring buffer's fd for its whole life and
        // always reports that same fd; the AsyncFd owns the logger.
        let mut fd =
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                .ok()?;
        let task = handle.spawn(async move {
            loop {
                let Ok(mut guard) = fd.readable_mut().await else {
                    return;
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
        Some(Self::Task(task))
    }
}

impl Drop for LogPump {
    fn drop(&mut self) {
        if let Self::Task(task) = self {
            task.abort();
        }
    }
}
