//! Reading a whole hash map in batches (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6+):
//! one system call per [`BATCH`] entries instead of two per entry, which is
//! what keeps `conns` and `status` quick with a million tracked connections.
//! aya 0.14 has no batch API, so this issues the call itself.

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::ops::ControlFlow;
use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::Pod;
use aya::maps::{HashMap, IterableMap as _, MapData};
use std::borrow::Borrow;

/// Entries asked for per call.
pub const BATCH: u32 = 4096;

/// `BPF_MAP_LOOKUP_BATCH` in the kernel's `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of the kernel's `union bpf_attr`.
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

/// Whether `e` says the kernel cannot batch this map (`EINVAL`, or the
/// kernel-internal `ENOTSUPP`), so a walk of single lookups must do.
pub fn unsupported(e: &io::Error) -> bool {
    const ENOTSUPP: i32 = 524;
    matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(ENOTSUPP))
}

/// Hands `each` a hash map's entries a batch at a time: [`for_each_batch`],
/// or a walk of single lookups where the kernel cannot batch.
pub fn walk<T: Borrow<MapData>, K: Pod, V: Pod>(
    map: &HashMap<T, K, V>,
    mut each: impl FnMut(&[(K, V)]) -> ControlFlow<()>,
) -> io::Result<()> {
    match for_each_batch(map.map(), &mut each) {
        Err(e) if unsupported(&e) => {
            let mut batch = Vec::with_capacity(BATCH as usize);
            for kv in map.iter().filter_map(Result::ok) {
                batch.push(kv);
                if batch.len() == batch.capacity() {
                    if each(&batch).is_break() {
                        return Ok(());
                    }
                    batch.clear();
                }
            }
            let _ = each(&batch);
            Ok(())
        }
        other => other,
    }
}

/// Every (key, value) of a hash map, read in batches. Entries added or
/// removed while it reads may or may not be seen, as with any map walk.
pub fn read_all<K: Pod, V: Pod>(map: &MapData) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    for_each_batch(map, |batch: &[(K, V)]| {
        out.extend_from_slice(batch);
        ControlFlow::Continue(())
    })?;
    Ok(out)
}

/// Hands `each` the entries of a hash map a batch (up to [`BATCH`]) at a
/// time, as they are read, so what the caller keeps is its own choice; it
/// stops when `each` says so.
pub fn for_each_batch<K: Pod, V: Pod>(
    map: &MapData,
    mut each: impl FnMut(&[(K, V)]) -> ControlFlow<()>,
) -> io::Result<()> {
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let mut size = BATCH;
    let mut keys: Vec<MaybeUninit<K>> = Vec::new();
    let mut values: Vec<MaybeUninit<V>> = Vec::new();
    let mut pairs: Vec<(K, V)> = Vec::with_capacity(BATCH as usize);
    // The kernel's position token (a bucket index for hash maps).
    let mut token = [0u64; 1];
    let mut next = [0u64; 1];
    let mut first = true;
    loop {
        keys.resize_with(size as usize, MaybeUninit::uninit);
        values.resize_with(size as usize, MaybeUninit::uninit);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: size,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` describes buffers of `size` keys and values that
        // outlive the call; the kernel writes at most `count` of each.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        let done = match &err {
            None => false,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && attr.count == 0 => {
                // One bucket holds more than `size` entries: ask for more.
                size = size.saturating_mul(2);
                continue;
            }
            Some(_) => return Err(err.expect("matched Some")),
        };
        pairs.clear();
        for i in 0..attr.count as usize {
            // SAFETY: the kernel filled the first `count` slots.
            pairs.push(unsafe { (keys[i].assume_init(), values[i].assume_init()) });
        }
        if each(&pairs).is_break() || done {
            return Ok(());
        }
        token = next;
        first = false;
    }
}
