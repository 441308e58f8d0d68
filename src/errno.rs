//! TEMPORARY: replaced by the table-based version from the qemu-io primitives branch.
pub fn strerror(errno: i32) -> String {
    let mut buf = [0 as libc::c_char; 256];
    // SAFETY: buf is valid for its length; XSI strerror_r writes a NUL-terminated string.
    unsafe {
        libc::strerror_r(errno, buf.as_mut_ptr(), buf.len());
        std::ffi::CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
    }
}
