//! Next hop through the kernel's FIB (`bpf_fib_lookup`).
//!
//! The lookup is made from the ingress interface's point of view (flags 0),
//! like a router's: `BPF_FIB_LOOKUP_OUTPUT` would pin the route to the
//! ingress interface (`flowi4_oif`) and break relaying between two
//! interfaces. This requires forwarding to be enabled on the ingress
//! interface (`net.ipv4.conf.<if>.forwarding`, `net.ipv6.conf.<if>.forwarding`),
//! see `bpf_ipv4_fib_lookup()` in net/core/filter.c; the daemon enables it
//! on the interfaces it attaches to.

use core::mem;

use aya_ebpf::{
    EbpfContext as _, bindings::bpf_fib_lookup as FibParams, helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use media_ebpf::Flow;

use crate::packet::zero;

/// `AF_INET` / `AF_INET6`.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `BPF_FIB_LKUP_RET_SUCCESS` / `BPF_FIB_LKUP_RET_NO_NEIGH` (uapi/linux/bpf.h).
const RET_SUCCESS: i64 = 0;
const RET_NO_NEIGH: i64 = 7;

/// Where to send a rewritten packet.
pub struct NextHop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

pub enum FibError {
    /// The route is known but the neighbour is not resolved yet.
    NoNeighbour,
    /// No route, forwarding disabled, MTU exceeded, or another failure.
    Failed,
}

/// The four 32-bit words of a 16-byte address field of an 8-aligned `Flow`.
#[inline(always)]
fn addr_words(a: &[u8; 16]) -> [u32; 4] {
    let p = a.as_ptr().cast::<u32>();
    // SAFETY: `Flow` is 8-byte aligned and its address fields sit at offsets
    // 0 and 16, so these are aligned, in-bounds reads.
    unsafe { [p.read(), p.add(1).read(), p.add(2).read(), p.add(3).read()] }
}

/// Route the packet `flow` is about to send: from `flow.src_*` to
/// `flow.dst_*`, `tot_len` bytes of IP packet, with IPv4 `tos` or IPv6
/// `flowinfo` (traffic class + flow label, as on the wire).
#[inline(always)]
pub fn lookup(
    ctx: &XdpContext,
    flow: &Flow,
    ipv6: bool,
    tot_len: u16,
    tos: u8,
    flowinfo: u32,
) -> Result<NextHop, FibError> {
    let src = addr_words(&flow.src_addr);
    let dst = addr_words(&flow.dst_addr);
    let mut slot = mem::MaybeUninit::<FibParams>::uninit();
    // SAFETY: bpf_fib_lookup is a C struct of integers (valid all-zero),
    // 4-aligned, 64 bytes.
    let p = unsafe { zero(&mut slot) };
    p.family = if ipv6 { AF_INET6 } else { AF_INET };
    p.l4_protocol = 17;
    p.sport = u16::from_ne_bytes(flow.src_port);
    p.dport = u16::from_ne_bytes(flow.dst_port);
    p.__bindgen_anon_1.tot_len = tot_len;
    p.ifindex = ctx.ingress_ifindex() as u32;
    // IPv4 addresses go in the first word of the address unions.
    if ipv6 {
        p.__bindgen_anon_2.flowinfo = flowinfo;
        p.__bindgen_anon_3.ipv6_src = src;
        p.__bindgen_anon_4.ipv6_dst = dst;
    } else {
        p.__bindgen_anon_2.tos = tos;
        p.__bindgen_anon_3.ipv4_src = src[0];
        p.__bindgen_anon_4.ipv4_dst = dst[0];
    }
    // SAFETY: `p` is a valid, exclusively borrowed bpf_fib_lookup of the size
    // passed; `ctx` is the program's context.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &raw mut *p,
            mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc {
        RET_SUCCESS => Ok(NextHop {
            ifindex: p.ifindex,
            smac: p.smac,
            dmac: p.dmac,
        }),
        RET_NO_NEIGH => Err(FibError::NoNeighbour),
        _ => Err(FibError::Failed),
    }
}
