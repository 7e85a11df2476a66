//! Bounds-checked access to packet headers, and word-wise field access.
//!
//! Addresses and ports are moved 16 bits at a time, as raw native-endian
//! loads of the wire bytes. Byte-array copies would compile to byte loads
//! (BPF has no unaligned loads), whose register spills blow the 512-byte
//! stack. XDP frames start at an even address and every field accessed this
//! way sits at an even offset from it, so the loads are aligned; the
//! checksum arithmetic is byte-order independent (see `media_ebpf::csum`).

use core::mem;

use aya_ebpf::programs::XdpContext;
use media_ebpf::csum::Delta;

/// A pointer to a `T` at `offset` bytes into the packet, if the packet is
/// long enough to hold it. The explicit comparison against `data_end` is
/// what lets the verifier accept the later dereference.
#[inline(always)]
pub fn header<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Big-endian u16 from two wire bytes.
#[inline(always)]
pub const fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// The raw 16-bit word at `p`.
///
/// # Safety
/// `p` is 2-byte aligned and points at two readable bytes.
#[inline(always)]
pub unsafe fn word(p: *const u8) -> u16 {
    // SAFETY: guaranteed by the caller.
    unsafe { p.cast::<u16>().read() }
}

/// Overwrite `N` words at `dst` with those at `src`, adding the change to
/// the checksum delta `d`.
///
/// # Safety
/// Both pointers are 2-byte aligned and valid for `2 * N` bytes.
#[inline(always)]
pub unsafe fn replace<const N: usize>(dst: *mut u8, src: *const u8, mut d: Delta) -> Delta {
    let dst = dst.cast::<u16>();
    let src = src.cast::<u16>();
    let mut i = 0;
    while i < N {
        // SAFETY: guaranteed by the caller, i < N.
        unsafe {
            let new = src.add(i).read();
            d = d.word(dst.add(i).read(), new);
            dst.add(i).write(new);
        }
        i += 1;
    }
    d
}

/// Copy `N` words from `src` to `dst`.
///
/// # Safety
/// As for [`replace`].
#[inline(always)]
pub unsafe fn copy<const N: usize>(dst: *mut u8, src: *const u8) {
    let dst = dst.cast::<u16>();
    let src = src.cast::<u16>();
    let mut i = 0;
    while i < N {
        // SAFETY: guaranteed by the caller, i < N.
        unsafe { dst.add(i).write(src.add(i).read()) };
        i += 1;
    }
}

/// Whether the `N` words at `a` and `b` are equal.
///
/// # Safety
/// As for [`replace`].
#[inline(always)]
pub unsafe fn same<const N: usize>(a: *const u8, b: *const u8) -> bool {
    let a = a.cast::<u16>();
    let b = b.cast::<u16>();
    let mut i = 0;
    while i < N {
        // SAFETY: guaranteed by the caller, i < N.
        if unsafe { a.add(i).read() != b.add(i).read() } {
            return false;
        }
        i += 1;
    }
    true
}

/// The 32-bit sum of the `N` raw words at `p` (fold it with
/// `media_ebpf::csum::fold`).
///
/// # Safety
/// `p` is 2-byte aligned and valid for `2 * N` bytes.
#[inline(always)]
pub unsafe fn sum<const N: usize>(p: *const u8) -> u32 {
    let p = p.cast::<u16>();
    let mut s = 0u32;
    let mut i = 0;
    while i < N {
        // SAFETY: guaranteed by the caller, i < N.
        s += u32::from(unsafe { p.add(i).read() });
        i += 1;
    }
    s
}

/// Zero `slot` in place with explicit 32-bit stores and return it.
///
/// `mem::zeroed()` and zero-filled array literals compile to calls to a
/// byte-loop `memset` on BPF; volatile stores cannot be merged back into
/// one, and working in place avoids a copy that LLVM would turn into one.
///
/// # Safety
/// `T` is valid when all-zero, 4-aligned, and its size a multiple of 4.
#[inline(always)]
pub unsafe fn zero<T>(slot: &mut mem::MaybeUninit<T>) -> &mut T {
    let p = slot.as_mut_ptr().cast::<u32>();
    let mut i = 0;
    while i < mem::size_of::<T>() / 4 {
        // SAFETY: in bounds (i < size / 4) and aligned per the caller.
        unsafe { p.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte was written with zero, a valid `T` per the caller.
    unsafe { slot.assume_init_mut() }
}

/// Add the removal of the `N` words at `p` to the checksum delta `d`
/// (bridging: words of a pseudo-header address that has no counterpart in
/// the other family's).
///
/// # Safety
/// `p` is 2-byte aligned and valid for `2 * N` bytes.
#[inline(always)]
pub unsafe fn removed<const N: usize>(p: *const u8, mut d: Delta) -> Delta {
    let p = p.cast::<u16>();
    let mut i = 0;
    while i < N {
        // SAFETY: guaranteed by the caller, i < N.
        d = d.removed(unsafe { p.add(i).read() });
        i += 1;
    }
    d
}

/// Add the `N` words at `p`, new in the checksummed data, to `d`.
///
/// # Safety
/// As for [`removed`].
#[inline(always)]
pub unsafe fn added<const N: usize>(p: *const u8, mut d: Delta) -> Delta {
    let p = p.cast::<u16>();
    let mut i = 0;
    while i < N {
        // SAFETY: guaranteed by the caller, i < N.
        d = d.added(unsafe { p.add(i).read() });
        i += 1;
    }
    d
}
