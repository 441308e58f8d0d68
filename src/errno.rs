//! Linux errno numbers and glibc's `strerror` texts.
//!
//! QEMU prints `strerror(-ret)` in many messages (`read failed: Input/output error`), so our output
//! depends on glibc's exact wording. The table is static so results do not depend on the host libc.

/// The errno values the engine uses by name (Linux numbering, same as `libc` on Linux).
pub const EPERM: i32 = 1;
pub const ENOENT: i32 = 2;
pub const EIO: i32 = 5;
pub const E2BIG: i32 = 7;
pub const EBADF: i32 = 9;
pub const EAGAIN: i32 = 11;
pub const ENOMEM: i32 = 12;
pub const EACCES: i32 = 13;
pub const EBUSY: i32 = 16;
pub const EEXIST: i32 = 17;
pub const ENODEV: i32 = 19;
pub const EISDIR: i32 = 21;
pub const EINVAL: i32 = 22;
pub const EFBIG: i32 = 27;
pub const ENOSPC: i32 = 28;
pub const EROFS: i32 = 30;
pub const ERANGE: i32 = 34;
pub const ENOSYS: i32 = 38;
pub const ENOTSUP: i32 = 95;
pub const ECANCELED: i32 = 125;
pub const ENOMEDIUM: i32 = 123;

/// glibc 2.36+ messages indexed by errno; `None` marks numbers Linux leaves unassigned
/// (41 = old EWOULDBLOCK slot, 58 = old EDEADLOCK slot), which glibc reports as unknown.
static MESSAGES: [Option<&str>; 134] = [
    Some("Success"),                                           // 0
    Some("Operation not permitted"),                           // 1
    Some("No such file or directory"),                         // 2
    Some("No such process"),                                   // 3
    Some("Interrupted system call"),                           // 4
    Some("Input/output error"),                                // 5
    Some("No such device or address"),                         // 6
    Some("Argument list too long"),                            // 7
    Some("Exec format error"),                                 // 8
    Some("Bad file descriptor"),                               // 9
    Some("No child processes"),                                // 10
    Some("Resource temporarily unavailable"),                  // 11
    Some("Cannot allocate memory"),                            // 12
    Some("Permission denied"),                                 // 13
    Some("Bad address"),                                       // 14
    Some("Block device required"),                             // 15
    Some("Device or resource busy"),                           // 16
    Some("File exists"),                                       // 17
    Some("Invalid cross-device link"),                         // 18
    Some("No such device"),                                    // 19
    Some("Not a directory"),                                   // 20
    Some("Is a directory"),                                    // 21
    Some("Invalid argument"),                                  // 22
    Some("Too many open files in system"),                     // 23
    Some("Too many open files"),                               // 24
    Some("Inappropriate ioctl for device"),                    // 25
    Some("Text file busy"),                                    // 26
    Some("File too large"),                                    // 27
    Some("No space left on device"),                           // 28
    Some("Illegal seek"),                                      // 29
    Some("Read-only file system"),                             // 30
    Some("Too many links"),                                    // 31
    Some("Broken pipe"),                                       // 32
    Some("Numerical argument out of domain"),                  // 33
    Some("Numerical result out of range"),                     // 34
    Some("Resource deadlock avoided"),                         // 35
    Some("File name too long"),                                // 36
    Some("No locks available"),                                // 37
    Some("Function not implemented"),                          // 38
    Some("Directory not empty"),                               // 39
    Some("Too many levels of symbolic links"),                 // 40
    None,                                                      // 41
    Some("No message of desired type"),                        // 42
    Some("Identifier removed"),                                // 43
    Some("Channel number out of range"),                       // 44
    Some("Level 2 not synchronized"),                          // 45
    Some("Level 3 halted"),                                    // 46
    Some("Level 3 reset"),                                     // 47
    Some("Link number out of range"),                          // 48
    Some("Protocol driver not attached"),                      // 49
    Some("No CSI structure available"),                        // 50
    Some("Level 2 halted"),                                    // 51
    Some("Invalid exchange"),                                  // 52
    Some("Invalid request descriptor"),                        // 53
    Some("Exchange full"),                                     // 54
    Some("No anode"),                                          // 55
    Some("Invalid request code"),                              // 56
    Some("Invalid slot"),                                      // 57
    None,                                                      // 58
    Some("Bad font file format"),                              // 59
    Some("Device not a stream"),                               // 60
    Some("No data available"),                                 // 61
    Some("Timer expired"),                                     // 62
    Some("Out of streams resources"),                          // 63
    Some("Machine is not on the network"),                     // 64
    Some("Package not installed"),                             // 65
    Some("Object is remote"),                                  // 66
    Some("Link has been severed"),                             // 67
    Some("Advertise error"),                                   // 68
    Some("Srmount error"),                                     // 69
    Some("Communication error on send"),                       // 70
    Some("Protocol error"),                                    // 71
    Some("Multihop attempted"),                                // 72
    Some("RFS specific error"),                                // 73
    Some("Bad message"),                                       // 74
    Some("Value too large for defined data type"),             // 75
    Some("Name not unique on network"),                        // 76
    Some("File descriptor in bad state"),                      // 77
    Some("Remote address changed"),                            // 78
    Some("Can not access a needed shared library"),            // 79
    Some("Accessing a corrupted shared library"),              // 80
    Some(".lib section in a.out corrupted"),                   // 81
    Some("Attempting to link in too many shared libraries"),   // 82
    Some("Cannot exec a shared library directly"),             // 83
    Some("Invalid or incomplete multibyte or wide character"), // 84
    Some("Interrupted system call should be restarted"),       // 85
    Some("Streams pipe error"),                                // 86
    Some("Too many users"),                                    // 87
    Some("Socket operation on non-socket"),                    // 88
    Some("Destination address required"),                      // 89
    Some("Message too long"),                                  // 90
    Some("Protocol wrong type for socket"),                    // 91
    Some("Protocol not available"),                            // 92
    Some("Protocol not supported"),                            // 93
    Some("Socket type not supported"),                         // 94
    Some("Operation not supported"),                           // 95
    Some("Protocol family not supported"),                     // 96
    Some("Address family not supported by protocol"),          // 97
    Some("Address already in use"),                            // 98
    Some("Cannot assign requested address"),                   // 99
    Some("Network is down"),                                   // 100
    Some("Network is unreachable"),                            // 101
    Some("Network dropped connection on reset"),               // 102
    Some("Software caused connection abort"),                  // 103
    Some("Connection reset by peer"),                          // 104
    Some("No buffer space available"),                         // 105
    Some("Transport endpoint is already connected"),           // 106
    Some("Transport endpoint is not connected"),               // 107
    Some("Cannot send after transport endpoint shutdown"),     // 108
    Some("Too many references: cannot splice"),                // 109
    Some("Connection timed out"),                              // 110
    Some("Connection refused"),                                // 111
    Some("Host is down"),                                      // 112
    Some("No route to host"),                                  // 113
    Some("Operation already in progress"),                     // 114
    Some("Operation now in progress"),                         // 115
    Some("Stale file handle"),                                 // 116
    Some("Structure needs cleaning"),                          // 117
    Some("Not a XENIX named type file"),                       // 118
    Some("No XENIX semaphores available"),                     // 119
    Some("Is a named type file"),                              // 120
    Some("Remote I/O error"),                                  // 121
    Some("Disk quota exceeded"),                               // 122
    Some("No medium found"),                                   // 123
    Some("Wrong medium type"),                                 // 124
    Some("Operation canceled"),                                // 125
    Some("Required key not available"),                        // 126
    Some("Key has expired"),                                   // 127
    Some("Key has been revoked"),                              // 128
    Some("Key was rejected by service"),                       // 129
    Some("Owner died"),                                        // 130
    Some("State not recoverable"),                             // 131
    Some("Operation not possible due to RF-kill"),             // 132
    Some("Memory page has hardware error"),                    // 133
];

/// glibc's `strerror(errno)`: the message, or `Unknown error N` for unassigned and negative numbers.
pub fn strerror(errno: i32) -> String {
    usize::try_from(errno)
        .ok()
        .and_then(|i| MESSAGES.get(i).copied().flatten())
        .map_or_else(|| format!("Unknown error {errno}"), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What this machine's libc says, via the thread-safe XSI/GNU `strerror_r`.
    fn libc_strerror(errno: i32) -> String {
        let mut buf = [0 as libc::c_char; 256];
        // SAFETY: buf is writable for its full length and strerror_r NUL-terminates within it.
        let rc = unsafe { libc::strerror_r(errno, buf.as_mut_ptr(), buf.len()) };
        // The XSI variant still writes "Unknown error N" when it returns EINVAL.
        assert!(
            rc == 0 || rc == libc::EINVAL,
            "strerror_r({errno}) returned {rc}"
        );
        // SAFETY: strerror_r wrote a NUL-terminated string into buf.
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn table_matches_host_glibc() {
        for errno in 0..=140 {
            assert_eq!(strerror(errno), libc_strerror(errno), "errno {errno}");
        }
    }

    #[test]
    fn well_known_messages() {
        assert_eq!(strerror(0), "Success");
        assert_eq!(strerror(EIO), "Input/output error");
        assert_eq!(strerror(ENOSPC), "No space left on device");
        assert_eq!(strerror(ENOTSUP), "Operation not supported");
        assert_eq!(strerror(ENOMEDIUM), "No medium found");
        assert_eq!(strerror(41), "Unknown error 41");
        assert_eq!(strerror(134), "Unknown error 134");
        assert_eq!(strerror(-5), "Unknown error -5");
        assert_eq!(strerror(i32::MIN), "Unknown error -2147483648");
    }

    #[test]
    fn constants_match_libc() {
        let pairs = [
            (EPERM, libc::EPERM),
            (ENOENT, libc::ENOENT),
            (EIO, libc::EIO),
            (E2BIG, libc::E2BIG),
            (EBADF, libc::EBADF),
            (EAGAIN, libc::EAGAIN),
            (ENOMEM, libc::ENOMEM),
            (EACCES, libc::EACCES),
            (EBUSY, libc::EBUSY),
            (EEXIST, libc::EEXIST),
            (ENODEV, libc::ENODEV),
            (EISDIR, libc::EISDIR),
            (EINVAL, libc::EINVAL),
            (EFBIG, libc::EFBIG),
            (ENOSPC, libc::ENOSPC),
            (EROFS, libc::EROFS),
            (ERANGE, libc::ERANGE),
            (ENOSYS, libc::ENOSYS),
            (ENOTSUP, libc::ENOTSUP),
            (ECANCELED, libc::ECANCELED),
            (ENOMEDIUM, libc::ENOMEDIUM),
        ];
        for (ours, theirs) in pairs {
            assert_eq!(ours, theirs);
        }
    }
}
