//! A `newc` cpio archive writer (the format the kernel unpacks as an initramfs), written
//! here rather than by the `cpio` program so that the archive needs no root-owned staging
//! directory and holds device nodes (`/dev/console`) without mknod.
//!
//! Format (kernel `Documentation/driver-api/early-userspace/buffer-format.rst`): per entry a
//! 110-byte ASCII header (`070701` and 13 eight-digit hex fields), the NUL-terminated name
//! padded to 4 bytes, the data padded to 4 bytes; the archive ends with `TRAILER!!!`.

use std::fmt::Write as _;

const MAGIC: &str = "070701";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
/// Name of the end-of-archive entry.
const TRAILER: &str = "TRAILER!!!";

/// An archive being built in memory (an initramfs is a few MiB).
pub struct Archive {
    bytes: Vec<u8>,
    next_ino: u32,
}

impl Archive {
    pub fn new() -> Archive {
        Archive {
            bytes: Vec::new(),
            next_ino: 1,
        }
    }

    /// A directory (`path` without a leading `/`, parents first).
    pub fn dir(&mut self, path: &str, mode: u32) {
        self.entry(path, S_IFDIR | (mode & 0o7777), 2, (0, 0), &[]);
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, S_IFREG | (mode & 0o7777), 1, (0, 0), data);
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    /// A character device node.
    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[]);
    }

    /// Appends the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.next_ino = 0;
        self.entry(TRAILER, 0, 1, (0, 0), &[]);
        self.bytes
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let ino = self.next_ino;
        self.next_ino += 1;
        let name_size = name.len() + 1;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(data.len()).expect("initramfs member under 4 GiB"),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            u32::try_from(name_size).expect("short name"),
            0, // check
        ];
        let mut header = String::with_capacity(110);
        header.push_str(MAGIC);
        for f in fields {
            let _ = write!(header, "{f:08x}");
        }
        self.bytes.extend_from_slice(header.as_bytes());
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.bytes.len() % 4 != 0 {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::PathBuf;
    use std::process::{Command, Stdio};

    fn sample() -> Vec<u8> {
        let mut a = Archive::new();
        a.dir("bin", 0o755);
        a.dir("dev", 0o755);
        a.file("bin/hello", 0o755, b"#!/bin/sh\necho hi\n");
        a.file("odd", 0o644, b"12345");
        a.file("empty", 0o600, b"");
        a.symlink("bin/sh", "busybox");
        a.char_dev("dev/console", 0o600, 5, 1);
        a.finish()
    }

    #[test]
    fn layout_is_aligned_and_ends_with_the_trailer() {
        let bytes = sample();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let tail = String::from_utf8_lossy(&bytes[bytes.len() - 32..]).to_string();
        assert!(tail.contains("TRAILER!!!"), "{tail:?}");
    }

    /// An independent reader (GNU cpio, or busybox's) unpacks what we wrote, with modes,
    /// link targets and device numbers intact.
    #[test]
    fn cpio_unpacks_it() {
        let Some(cpio) = [
            "/usr/bin/cpio",
            "/bin/cpio",
            "/bin/busybox",
            "/usr/bin/busybox",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists()) else {
            eprintln!("SKIPPED: neither cpio nor busybox is installed (apt-get install cpio)");
            return;
        };
        let dir = PathBuf::from(format!("/tmp/xtask-cpio-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(cpio);
        if cpio.ends_with("busybox") {
            cmd.arg("cpio");
        }
        let mut child = cmd
            .args(["-i", "-d", "-m"])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&sample()).unwrap();
        assert!(child.wait().unwrap().success(), "{cpio} -i failed");
        let check = || {
            let hello = dir.join("bin/hello");
            assert_eq!(std::fs::read(&hello).unwrap(), b"#!/bin/sh\necho hi\n");
            assert_eq!(
                std::fs::metadata(&hello).unwrap().permissions().mode() & 0o777,
                0o755
            );
            assert_eq!(std::fs::read(dir.join("odd")).unwrap(), b"12345");
            assert_eq!(std::fs::read(dir.join("empty")).unwrap(), b"");
            assert_eq!(
                std::fs::read_link(dir.join("bin/sh")).unwrap(),
                PathBuf::from("busybox")
            );
            let console = std::fs::symlink_metadata(dir.join("dev/console")).unwrap();
            assert!(console.file_type().is_char_device());
            assert_eq!(console.rdev(), libc_makedev(5, 1));
        };
        let result = std::panic::catch_unwind(check);
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    }

    /// glibc's `makedev` for small numbers.
    fn libc_makedev(major: u64, minor: u64) -> u64 {
        ((major & 0xfff) << 8) | (minor & 0xff)
    }
}
