//! The few bpf(2) commands aya does not offer on pinned objects: opening a pin, swapping
//! the program of a pinned link in place (`BPF_LINK_UPDATE`), and the one-entry array that
//! marks the layout of the pinned maps.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// `union bpf_attr` as 32-bit words, zeroed: each command fills its head.
type Attr = [u32; 32];

/// bpf(2) with `attr`; the non-negative result or the error.
fn bpf(cmd: libc::c_long, attr: &Attr) -> io::Result<i64> {
    // SAFETY: the kernel reads at most `size_of::<Attr>()` bytes of `attr`, which lives for
    // the call; every pointer inside it was set by the caller to memory that outlives it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A descriptor the kernel just returned, owned from here on.
fn owned(fd: i64) -> OwnedFd {
    // SAFETY: `fd` is a fresh descriptor from bpf(2) that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn put_ptr(attr: &mut Attr, word: usize, ptr: u64) {
    attr[word] = ptr as u32;
    attr[word + 1] = (ptr >> 32) as u32;
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a pin path"))
}

/// Opens the object pinned at `path` (`BPF_OBJ_GET`).
pub(super) fn open_pin(path: &Path) -> io::Result<OwnedFd> {
    let p = c_path(path)?;
    let mut attr: Attr = [0; 32];
    put_ptr(&mut attr, 0, p.as_ptr() as u64);
    bpf(BPF_OBJ_GET, &attr).map(owned)
}

/// Swaps the program of the link pinned at `link_pin` for `prog` in one step
/// (`BPF_LINK_UPDATE`): the hook is never without a program.
pub(super) fn replace_link_program(link_pin: &Path, prog: BorrowedFd<'_>) -> io::Result<()> {
    let link = open_pin(link_pin)?;
    let mut attr: Attr = [0; 32];
    attr[0] = link.as_raw_fd() as u32;
    attr[1] = prog.as_raw_fd() as u32;
    bpf(BPF_LINK_UPDATE, &attr).map(|_| ())
}

/// Pins a one-entry array holding `value` at `path` (replacing nothing: fails if taken).
pub(super) fn pin_marker(path: &Path, value: u64) -> io::Result<()> {
    let mut attr: Attr = [0; 32];
    attr[..4].copy_from_slice(&[BPF_MAP_TYPE_ARRAY, 4, 8, 1]);
    let map = owned(bpf(BPF_MAP_CREATE, &attr)?);
    let key: u32 = 0;
    let mut attr: Attr = [0; 32];
    attr[0] = map.as_raw_fd() as u32;
    put_ptr(&mut attr, 2, &key as *const u32 as u64);
    put_ptr(&mut attr, 4, &value as *const u64 as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &attr)?;
    let p = c_path(path)?;
    let mut attr: Attr = [0; 32];
    put_ptr(&mut attr, 0, p.as_ptr() as u64);
    attr[2] = map.as_raw_fd() as u32;
    bpf(BPF_OBJ_PIN, &attr).map(|_| ())
}

/// (type, key size, value size, max entries) of the map behind `fd`
/// (`BPF_OBJ_GET_INFO_BY_FD`, the head of `struct bpf_map_info`).
fn map_shape(fd: BorrowedFd<'_>) -> io::Result<[u32; 4]> {
    let mut info = [0u32; 32];
    let mut attr: Attr = [0; 32];
    attr[0] = fd.as_raw_fd() as u32;
    attr[1] = std::mem::size_of_val(&info) as u32;
    put_ptr(&mut attr, 2, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &attr)?;
    Ok([info[0], info[2], info[3], info[4]])
}

/// (type, key size, value size, max entries) of the map pinned at `path`.
pub(super) fn pinned_map_shape(path: &Path) -> io::Result<[u32; 4]> {
    map_shape(open_pin(path)?.as_fd())
}

/// The value of the marker pinned at `path`; `None` when there is none or it is not one (a
/// map of another shape is not read: its value would not fit).
pub(super) fn read_marker(path: &Path) -> Option<u64> {
    let map = open_pin(path).ok()?;
    if map_shape(map.as_fd()).ok()? != [BPF_MAP_TYPE_ARRAY, 4, 8, 1] {
        return None;
    }
    let key: u32 = 0;
    let mut value: u64 = 0;
    let mut attr: Attr = [0; 32];
    attr[0] = map.as_raw_fd() as u32;
    put_ptr(&mut attr, 2, &key as *const u32 as u64);
    put_ptr(&mut attr, 4, &mut value as *mut u64 as u64);
    bpf(BPF_MAP_LOOKUP_ELEM, &attr).ok()?;
    Some(value)
}
