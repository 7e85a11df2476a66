//! Reading a whole BPF hash map in a few system calls
//! (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6): a restart at scale reads hundreds
//! of thousands of flows and record chunks, which iterating costs two
//! system calls each (next key, then lookup).

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

/// `enum bpf_cmd`'s `BPF_MAP_LOOKUP_BATCH`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call: a hash map bucket never holds this many.
const PER_CALL: usize = 4096;

/// `union bpf_attr`'s `batch` member (the kernel accepts a shorter
/// attribute than the whole union, the rest read as zero).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of the hash map `map` whose keys are `K` and values `V`
/// (the sizes the map was created with, as aya's typed maps check). An
/// error (a kernel without batch lookups: `EINVAL`) leaves the caller to
/// iterate instead.
pub(crate) fn read_all<K: Pod, V: Pod>(map: &MapData) -> io::Result<Vec<(K, V)>> {
    let fd = map.fd().as_fd().as_raw_fd();
    let (key_size, value_size) = (size_of::<K>(), size_of::<V>());
    let mut keys = vec![0u8; key_size * PER_CALL];
    let mut values = vec![0u8; value_size * PER_CALL];
    // The hash map's position token (a bucket index, u32), in and out;
    // none on the first call.
    let mut position = 0u64;
    let mut next = 0u64;
    let mut out = Vec::new();
    for call in 0.. {
        let mut attr = BatchAttr {
            in_batch: if call == 0 {
                0
            } else {
                (&raw const position) as u64
            },
            out_batch: (&raw mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: PER_CALL as u32,
            map_fd: u32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
            ..BatchAttr::default()
        };
        // SAFETY: bpf(2) with an attribute of the size passed; the kernel
        // writes at most `count` keys and values into buffers of that many
        // (`K`/`V` are the map's own key and value sizes) and the
        // position token into `next`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let error = (r < 0).then(io::Error::last_os_error);
        // ENOENT: the last entries (maybe none) are in this answer.
        let last = error
            .as_ref()
            .is_some_and(|e| e.raw_os_error() == Some(libc::ENOENT));
        if let Some(e) = error
            && !last
        {
            return Err(e);
        }
        let n = (attr.count as usize).min(PER_CALL);
        out.reserve(n);
        for i in 0..n {
            // SAFETY: within the buffers (i < PER_CALL); Pod types are
            // valid for any bytes; unaligned reads of byte buffers.
            let (k, v) = unsafe {
                (
                    std::ptr::read_unaligned(keys.as_ptr().add(i * key_size).cast::<K>()),
                    std::ptr::read_unaligned(values.as_ptr().add(i * value_size).cast::<V>()),
                )
            };
            out.push((k, v));
        }
        if last {
            break;
        }
        position = next;
    }
    Ok(out)
}
