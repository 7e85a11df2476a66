//! media-relay's XDP data plane.
//!
//! parse → flow lookup → source check → TTL → next hop (FIB) → rewrite with
//! incremental checksums (between IPv4 and IPv6 for a bridging flow, see
//! `bridge`) → `XDP_TX` / `XDP_REDIRECT`. Anything the program
//! does not fully understand is passed to the stack untouched (or, for a
//! source-check failure, dropped), and every packet is counted under exactly
//! one [`Outcome`](media_ebpf::Outcome). The packet is only written once
//! every check has passed, so nothing leaves half-rewritten.
//!
//! On the host this binary is an empty stub; its logic is in the modules
//! below, which only build for the BPF target, and in the `media_ebpf`
//! library, which is unit-tested on the host.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod bridge;
#[cfg(target_arch = "bpf")]
mod fib;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod relay;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach this.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// Which build of the program is attached: written by the loader (the
/// daemon's version, or a test's stamp standing for an upgrade), read by
/// nothing on the packet path. `bpftool map dump` of the program's
/// `.rodata` shows it.
#[cfg(target_arch = "bpf")]
#[unsafe(no_mangle)]
static PROGRAM_STAMP: u64 = 0;
