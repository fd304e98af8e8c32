//! The guest kernels and the arm64 busybox: Debian's own packages, fetched once through the
//! private apt configuration ([`super::apt`]) and cached under `<cache>/`:
//!
//! - `kernels/<deb-arch>-<major.minor>/vmlinuz-<release>` (e.g. `kernels/amd64-5.10/`);
//! - `busybox/arm64/busybox` (Debian's `busybox-static:arm64`, unpacked with `dpkg -x`).
//!
//! A cached file is used as it is: a second run asks apt nothing. Only `boot/vmlinuz-*` is
//! taken out of a kernel package (`dpkg-deb --fsys-tarfile | tar`, the part of `dpkg -x` that is
//! needed), not its ~400 MiB of modules: the test needs nothing that is not built in (serial
//! console, devtmpfs, PID namespaces, AF_UNIX, io_uring, cgroup2).

use super::apt::Apt;
use crate::elf;
use crate::run::Failure;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A Debian kernel series: the package `linux-image-<series>*-<flavour>` of `suite`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Series {
    /// The suite that ships it (informational: the version prefix picks the package).
    pub suite: &'static str,
    /// Version prefix of the package name: `5.10.0-`, `6.1.`, `6.12.`.
    pub prefix: &'static str,
    /// `major.minor`, for the cache directory and the report.
    pub version: (u32, u32),
}

/// Fetches what the guest needs, through one [`Apt`] made when first needed.
pub struct Fetcher {
    cache: PathBuf,
    apt: Option<Apt>,
}

impl Fetcher {
    pub fn new(cache: &Path) -> Fetcher {
        Fetcher {
            cache: cache.to_path_buf(),
            apt: None,
        }
    }

    fn apt(&mut self) -> Result<&mut Apt, Failure> {
        if self.apt.is_none() {
            self.apt = Some(Apt::new(&self.cache)?);
        }
        Ok(self.apt.as_mut().expect("just set"))
    }

    /// The cached kernel of `series` for `deb_arch`, downloaded first when there is none.
    pub fn kernel(&mut self, series: &Series, deb_arch: &str) -> Result<PathBuf, Failure> {
        let dir = self.cache.join("kernels").join(format!(
            "{deb_arch}-{}.{}",
            series.version.0, series.version.1
        ));
        if let Some(found) = cached(&dir) {
            return Ok(found);
        }
        let (prefix, flavour) = (series.prefix, deb_arch.to_string());
        let apt = self.apt()?;
        let deb = apt.download(&|apt: &Apt| {
            Ok(format!(
                "{}:{flavour}",
                apt.newest_kernel(prefix, &flavour)?
            ))
        })?;
        let unpacked = deb.with_extension("d");
        mkdir(&unpacked)?;
        extract_vmlinuz(&deb, &unpacked)?;
        let boot = unpacked.join("boot");
        let vmlinuz = std::fs::read_dir(&boot)
            .map_err(|e| Failure::Failed(format!("{}: {e}", boot.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| file_name(p).starts_with("vmlinuz-"))
            .ok_or_else(|| Failure::Failed(format!("{}: no boot/vmlinuz-*", deb.display())))?;
        mkdir(&dir)?;
        let dest = dir.join(file_name(&vmlinuz));
        std::fs::rename(&vmlinuz, &dest)
            .map_err(|e| Failure::Failed(format!("move {}: {e}", vmlinuz.display())))?;
        apt.clean_download();
        eprintln!("cached {}", dest.display());
        Ok(dest)
    }

    /// A static busybox for `deb_arch` (`busybox-static:<deb_arch>`), cached.
    pub fn busybox(&mut self, deb_arch: &str, machine: u16) -> Result<PathBuf, Failure> {
        let dir = self.cache.join("busybox").join(deb_arch);
        let dest = dir.join("busybox");
        if dest.is_file() {
            return Ok(dest);
        }
        let package = format!("busybox-static:{deb_arch}");
        let apt = self.apt()?;
        let deb = apt.download(&|_: &Apt| Ok(package.clone()))?;
        let unpacked = deb.with_extension("d");
        let mut cmd = Command::new("dpkg");
        cmd.arg("-x").arg(&deb).arg(&unpacked);
        crate::run::status(cmd)?;
        let found = ["usr/bin/busybox", "bin/busybox"]
            .iter()
            .map(|p| unpacked.join(p))
            .find(|p| p.is_file())
            .ok_or_else(|| Failure::Failed(format!("{}: no busybox in it", deb.display())))?;
        check_static(&found, machine)?;
        mkdir(&dir)?;
        std::fs::rename(&found, &dest)
            .map_err(|e| Failure::Failed(format!("move {}: {e}", found.display())))?;
        apt.clean_download();
        eprintln!("cached {}", dest.display());
        Ok(dest)
    }
}

fn mkdir(dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir).map_err(|e| Failure::Failed(format!("{}: {e}", dir.display())))
}

/// Fails unless `path` is a fully static ELF binary for `machine`.
pub fn check_static(path: &Path, machine: u16) -> Result<(), Failure> {
    let bytes =
        std::fs::read(path).map_err(|e| Failure::Failed(format!("{}: {e}", path.display())))?;
    match elf::machine(&bytes) {
        Ok(m) if m == machine => {}
        Ok(m) => {
            return Err(Failure::Failed(format!(
                "{}: ELF machine {m}, expected {machine}",
                path.display()
            )))
        }
        Err(e) => return Err(Failure::Failed(format!("{}: {e}", path.display()))),
    }
    match elf::linkage(&bytes) {
        Ok(elf::Linkage::Static) => Ok(()),
        Ok(elf::Linkage::Dynamic(why)) => Err(Failure::Failed(format!(
            "{}: not a static binary: {why}",
            path.display()
        ))),
        Err(e) => Err(Failure::Failed(format!("{}: {e}", path.display()))),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn cached(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| file_name(p).starts_with("vmlinuz-") && p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// `dpkg-deb --fsys-tarfile DEB | tar -x -C DIR ./boot/vmlinuz-*`.
fn extract_vmlinuz(deb: &Path, dir: &Path) -> Result<(), Failure> {
    let shown = format!(
        "dpkg-deb --fsys-tarfile {} | tar -x -C {} --wildcards './boot/vmlinuz-*'",
        deb.display(),
        dir.display()
    );
    eprintln!("$ {shown}");
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Failure::Failed(format!("dpkg-deb: cannot run: {e}")))?;
    let tar_in = dpkg.stdout.take().expect("piped stdout");
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dir)
        .args(["--wildcards", "./boot/vmlinuz-*"])
        .stdin(tar_in)
        .status();
    let dpkg_status = dpkg.wait();
    match (tar, dpkg_status) {
        (Ok(t), Ok(d)) if t.success() && d.success() => Ok(()),
        (t, d) => Err(Failure::Failed(format!(
            "`{shown}` failed: tar {t:?}, dpkg-deb {d:?}"
        ))),
    }
}

/// `(major, minor)` of a kernel release (`6.1.0-44-amd64`, `6.12.117+deb13-arm64`, `6.15.2`).
pub fn release_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_of_a_release() {
        assert_eq!(release_version("6.1.0-44-amd64"), Some((6, 1)));
        assert_eq!(release_version("6.15.2"), Some((6, 15)));
        assert_eq!(release_version("6.12.117+deb13-arm64"), Some((6, 12)));
        assert_eq!(release_version("5.10.0-32-amd64"), Some((5, 10)));
        assert_eq!(release_version("bzImage"), None);
        assert_eq!(release_version("6"), None);
    }

    #[test]
    fn the_cache_holds_the_newest_vmlinuz_of_a_directory() {
        let dir = std::env::temp_dir().join(format!("xtask-vm-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(cached(&dir), None);
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "vmlinuz-6.12.107+deb13-amd64",
            "vmlinuz-6.12.117+deb13-amd64",
            "x",
        ] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        assert_eq!(
            cached(&dir).as_deref(),
            Some(dir.join("vmlinuz-6.12.117+deb13-amd64").as_path())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
