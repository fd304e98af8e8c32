//! The guest kernel: Debian's distribution kernel (`linux-image-amd64`, 6.1 on Debian 12),
//! fetched once with `apt-get download` and cached as `<cache>/vmlinuz-<version>`.
//!
//! Only `boot/vmlinuz-*` is taken out of the package (`dpkg-deb --fsys-tarfile | tar`), not
//! its ~400 MiB of modules: the test needs nothing that is not built in (serial console,
//! devtmpfs, PID namespaces, AF_UNIX, io_uring).

use crate::run::{self, Failure};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Debian's meta package that depends on the current kernel image package.
const META_PACKAGE: &str = "linux-image-amd64";

/// Returns a cached kernel, downloading one first when the cache has none.
pub fn ensure(cache: &Path) -> Result<PathBuf, Failure> {
    if let Some(found) = cached(cache) {
        return Ok(found);
    }
    let package = resolve_package()?;
    let fail = |what: &str, e: std::io::Error| Failure::Failed(format!("{what}: {e}"));
    let download = cache.join("download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download).map_err(|e| fail(&download.display().to_string(), e))?;
    let mut cmd = Command::new("apt-get");
    cmd.args(["download", &package]).current_dir(&download);
    run::status(cmd).map_err(|_| {
        Failure::Failed(format!(
            "apt-get download {package} failed: run `apt-get update` first, or pass \
             --kernel PATH to a bzImage/vmlinuz"
        ))
    })?;
    let deb = std::fs::read_dir(&download)
        .map_err(|e| fail("read download dir", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| Failure::Failed(format!("no .deb in {}", download.display())))?;
    extract_vmlinuz(&deb, &download)?;
    let boot = download.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .map_err(|e| fail(&boot.display().to_string(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| file_name(p).starts_with("vmlinuz-"))
        .ok_or_else(|| Failure::Failed(format!("{}: no boot/vmlinuz-*", deb.display())))?;
    let dest = cache.join(file_name(&vmlinuz));
    std::fs::rename(&vmlinuz, &dest).map_err(|e| fail("move vmlinuz", e))?;
    let _ = std::fs::remove_dir_all(&download);
    Ok(dest)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn cached(cache: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| file_name(p).starts_with("vmlinuz-") && p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// The kernel image package `linux-image-amd64` depends on (e.g. `linux-image-6.1.0-44-amd64`).
fn resolve_package() -> Result<String, Failure> {
    let out = Command::new("apt-cache")
        .args(["depends", META_PACKAGE])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| Failure::Failed(format!("apt-cache: cannot run: {e} (is this Debian?)")))?;
    parse_depends(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        Failure::Failed(format!(
            "apt-cache depends {META_PACKAGE}: no kernel package found (run `apt-get update`, \
             or pass --kernel PATH)"
        ))
    })
}

/// The first `Depends:` of `apt-cache depends linux-image-amd64` that is a kernel image.
pub fn parse_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches('|');
            l.strip_prefix("Depends:")
        })
        .map(str::trim)
        .find(|name| {
            name.starts_with("linux-image-")
                && name.ends_with("-amd64")
                && *name != META_PACKAGE
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.+".contains(&b))
        })
        .map(str::to_string)
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

/// `(major, minor)` from a `vmlinuz-6.1.0-44-amd64` style name.
pub fn version_of(path: &Path) -> Option<(u32, u32)> {
    let name = file_name(path);
    let version = name.strip_prefix("vmlinuz-")?;
    let mut parts = version.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_image_package_among_the_dependencies() {
        let text = "linux-image-amd64\n  Depends: linux-image-6.1.0-44-amd64\n";
        assert_eq!(
            parse_depends(text).as_deref(),
            Some("linux-image-6.1.0-44-amd64")
        );
        let alternatives =
            "linux-image-amd64\n |Depends: linux-image-6.12.9-amd64\n  Depends: firmware\n";
        assert_eq!(
            parse_depends(alternatives).as_deref(),
            Some("linux-image-6.12.9-amd64")
        );
        for none in [
            "",
            "linux-image-amd64\n",
            "x\n  Depends: linux-image-amd64\n",
            "x\n  Depends: linux-image-6.1;rm-amd64\n",
            "x\n  Recommends: linux-image-6.1.0-1-amd64\n",
        ] {
            assert_eq!(parse_depends(none), None, "{none:?}");
        }
    }

    #[test]
    fn reads_the_version_from_the_file_name() {
        assert_eq!(
            version_of(Path::new("/x/vmlinuz-6.1.0-44-amd64")),
            Some((6, 1))
        );
        assert_eq!(version_of(Path::new("vmlinuz-6.15.2")), Some((6, 15)));
        assert_eq!(version_of(Path::new("bzImage")), None);
    }
}
