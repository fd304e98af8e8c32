//! Users and groups.

use std::io;

/// The gid of group `name` (`getgrnam_r` into a fixed buffer; start-up only). `Ok(None)`:
/// no such group.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    let cname = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: group is plain data; all-zero is a valid out-parameter for getgrnam_r.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; the buffer's length is passed.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!result.is_null()).then_some(group.gr_gid))
}
