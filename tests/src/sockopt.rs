//! Socket options the test bed sets on its own sockets.

use std::os::fd::AsFd;

use anyhow::Context as _;
use nix::sys::socket::{setsockopt, sockopt};

/// A receive buffer of `bytes` on `fd`: `SO_RCVBUFFORCE` (root, past
/// `net.core.rmem_max`), else `SO_RCVBUF` (capped by `rmem_max`). Test
/// sinks read in bursts behind a relay that forwards in bursts; a buffer
/// that overflows would count the sink's own drops as the relay's loss.
pub fn big_rcvbuf(fd: &impl AsFd, bytes: usize) -> anyhow::Result<()> {
    setsockopt(fd, sockopt::RcvBufForce, &bytes)
        .or_else(|_| setsockopt(fd, sockopt::RcvBuf, &bytes))
        .with_context(|| format!("setting a {bytes}-byte receive buffer"))
}
