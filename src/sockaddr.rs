//! `sockaddr_un` for a Unix socket: a filesystem path, or an abstract name written `@name`
//! (as systemd writes `NOTIFY_SOCKET`). One checked builder for every socket holden binds,
//! connects or sends to.

use std::io;

/// Builds the address of `name`: `/path` (or a relative path) as is, with its NUL; `@name` as
/// an abstract socket (leading NUL, no terminator). Refuses an empty name, a NUL inside, and a
/// name that does not fit `sun_path`.
pub fn unix(name: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let room = addr.sun_path.len();
    let invalid = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket address {:?}: {why}", String::from_utf8_lossy(name)),
        )
    };
    if name.is_empty() {
        return Err(invalid("empty".into()));
    }
    if name.contains(&0) {
        return Err(invalid("contains a NUL byte".into()));
    }
    let abstract_name = name[0] == b'@';
    // A path needs its terminating NUL; an abstract name does not.
    let len = name.len() + usize::from(!abstract_name);
    if len > room {
        return Err(invalid(format!(
            "longer than the {} bytes allowed",
            room - 1
        )));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    if abstract_name {
        addr.sun_path[0] = 0;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + len;
    Ok((addr, len as libc::socklen_t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_bytes(addr: &libc::sockaddr_un, len: libc::socklen_t) -> Vec<u8> {
        let n = len as usize - std::mem::size_of::<libc::sa_family_t>();
        addr.sun_path[..n].iter().map(|&c| c as u8).collect()
    }

    #[test]
    fn a_path_keeps_its_nul_and_an_abstract_name_starts_with_one() {
        let (addr, len) = unix(b"/run/holden/x.sock").unwrap();
        assert_eq!(path_bytes(&addr, len), b"/run/holden/x.sock\0");
        let (addr, len) = unix(b"@holden").unwrap();
        assert_eq!(path_bytes(&addr, len), b"\0holden");
    }

    #[test]
    fn empty_nul_and_overlong_names_are_refused() {
        assert!(unix(b"").is_err());
        assert!(unix(b"/a\0b").is_err());
        let room = 108;
        assert!(unix(&vec![b'a'; room - 1]).is_ok());
        assert!(unix(&vec![b'a'; room]).is_err());
        let mut abstract_name = vec![b'a'; room];
        abstract_name[0] = b'@';
        assert!(unix(&abstract_name).is_ok());
        let err = unix(&vec![b'a'; room]).unwrap_err().to_string();
        assert!(err.contains("longer than the 107 bytes"), "{err}");
    }
}
