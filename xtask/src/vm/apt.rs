//! A private apt configuration for the guest kernels and the arm64 busybox: Debian's own
//! suites, fetched with `apt-get download`, the host's sources and package state untouched.
//!
//! The sources file (`<cache>/apt/sources.list`) names [`SUITES`] `main` on the archive the
//! host's own apt sources already use (read from `/etc/apt/sources.list` and
//! `/etc/apt/sources.list.d/` at run time), signed by Debian's archive keyring. Package lists
//! and apt's cache live in `<cache>/apt/lists` and `<cache>/apt/cache`; every apt command gets
//! the same `-o` options ([`Apt::options`]), with `amd64` and `arm64` as the architectures.
//! `apt-get update` runs only when a list is missing or the sources changed, or once more when
//! a download fails (Debian drops superseded kernel packages from its suites).

use crate::run::{self, Failure};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Debian suites the matrix's kernels come from (5.10, 6.1, 6.12), `main` only.
pub const SUITES: [&str; 3] = ["bullseye", "bookworm", "trixie"];
/// Package architectures in the private lists.
pub const ARCHITECTURES: [&str; 2] = ["amd64", "arm64"];
/// The keyring every private source is checked against (package `debian-archive-keyring`).
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Debian's release names and aliases: a host source with one of these suites is the archive.
const DEBIAN_SUITES: [&str; 11] = [
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "oldstable",
    "stable",
    "testing",
    "unstable",
];

/// One `deb` line (or deb822 paragraph with one URI) of the host's apt sources.
#[derive(Debug, PartialEq)]
pub struct Source {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
}

/// Parses one-line sources (`deb [options] URI SUITE COMPONENT...`); `deb-src` and comments
/// are skipped.
pub fn parse_one_line(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            // Options: `[a=b c=d]`, possibly with spaces inside the brackets.
            let Some(end) = rest.iter().position(|w| w.ends_with(']')) else {
                continue;
            };
            rest.drain(..=end);
        }
        if rest.len() < 2 {
            continue;
        }
        sources.push(Source {
            uri: rest[0].to_string(),
            suites: vec![rest[1].to_string()],
            components: rest[2..].iter().map(|w| w.to_string()).collect(),
        });
    }
    sources
}

/// Parses deb822 sources (`Types:`, `URIs:`, `Suites:`, `Components:`, `Enabled:` paragraphs);
/// one [`Source`] per URI of a paragraph whose types include `deb`.
pub fn parse_deb822(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for paragraph in paragraphs(text) {
        let field = |name: &str| -> Vec<String> {
            paragraph
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        if !field("Types").iter().any(|t| t == "deb") {
            continue;
        }
        if field("Enabled").first().is_some_and(|e| e == "no") {
            continue;
        }
        for uri in field("URIs") {
            sources.push(Source {
                uri,
                suites: field("Suites"),
                components: field("Components"),
            });
        }
    }
    sources
}

/// The `Field: value` pairs of each paragraph (continuation lines appended, comments dropped).
fn paragraphs(text: &str) -> Vec<Vec<(String, String)>> {
    let mut all = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                all.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            current.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    if !current.is_empty() {
        all.push(current);
    }
    all
}

/// The Debian archive among the host's sources: the first http(s) URI serving a Debian
/// release suite (not `-security`, `-updates`, `-backports`) with `main`.
pub fn debian_archive(sources: &[Source]) -> Option<&str> {
    sources
        .iter()
        .find(|s| {
            (s.uri.starts_with("http://") || s.uri.starts_with("https://"))
                && s.components.iter().any(|c| c == "main")
                && s.suites.iter().any(|x| DEBIAN_SUITES.contains(&x.as_str()))
        })
        .map(|s| s.uri.trim_end_matches('/'))
}

/// The private sources file: [`SUITES`] `main` on `archive`, signed by [`KEYRING`].
pub fn sources_list(archive: &str) -> String {
    let mut text = String::from(
        "# Written by `cargo xtask vm-test`: Debian suites for the guest kernels and busybox.\n\
         # The archive is the one the host's apt sources use; the host's sources are untouched.\n",
    );
    for suite in SUITES {
        text.push_str(&format!(
            "deb [signed-by={KEYRING}] {archive} {suite} main\n"
        ));
    }
    text
}

/// Whether `lists` (file names in the private lists directory) hold a Packages index for every
/// suite and architecture (`..._dists_<suite>_main_binary-<arch>_Packages`, maybe compressed).
pub fn lists_complete(lists: &[String]) -> bool {
    SUITES.iter().all(|suite| {
        ARCHITECTURES.iter().all(|arch| {
            let needle = format!("_dists_{suite}_main_binary-{arch}_Packages");
            lists.iter().any(|name| name.contains(&needle))
        })
    })
}

/// Version key of a kernel image package name: `linux-image-<series><rest>-<flavour>` where
/// `<rest>` is the ABI and Debian revision only (`5.10.0-32`, `6.12.117+deb13`), never another
/// flavour (`-cloud`, `-rt`) or a `-dbg`/`-unsigned` package. The key is every number in it.
pub fn kernel_version_key(name: &str, series: &str, flavour: &str) -> Option<Vec<u64>> {
    let middle = name
        .strip_prefix("linux-image-")?
        .strip_suffix(flavour)?
        .strip_suffix('-')?;
    if !middle.starts_with(series) {
        return None;
    }
    let plain = middle.split(['-', '+']).all(|part| {
        let digits = part.strip_prefix("deb").unwrap_or(part);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    });
    if !plain {
        return None;
    }
    middle
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .map(|n| n.parse().ok())
        .collect()
}

/// The newest kernel image package of `series` and `flavour` among `names` (one a line, as
/// `apt-cache pkgnames` prints them).
pub fn newest_kernel(names: &str, series: &str, flavour: &str) -> Option<String> {
    names
        .lines()
        .map(str::trim)
        .filter_map(|name| Some((kernel_version_key(name, series, flavour)?, name)))
        .max()
        .map(|(_, name)| name.to_string())
}

/// The private apt configuration under `<cache>/apt/`.
pub struct Apt {
    dir: PathBuf,
    updated: bool,
}

impl Apt {
    /// Writes the sources file (from the host's archive) and the directories apt needs.
    pub fn new(cache: &Path) -> Result<Apt, Failure> {
        if !Path::new(KEYRING).exists() {
            return Err(Failure::Failed(format!(
                "{KEYRING} not found: apt-get install debian-archive-keyring"
            )));
        }
        let archive = host_archive()?;
        let dir = cache.join("apt");
        for sub in ["lists/partial", "cache/archives/partial", "download"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path)
                .map_err(|e| Failure::Failed(format!("{}: {e}", path.display())))?;
        }
        let file = dir.join("sources.list");
        let text = sources_list(&archive);
        let changed = std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str());
        if changed {
            std::fs::write(&file, &text)
                .map_err(|e| Failure::Failed(format!("{}: {e}", file.display())))?;
        }
        let mut apt = Apt {
            dir,
            updated: false,
        };
        if changed || !lists_complete(&apt.list_names()) {
            apt.update()?;
        }
        Ok(apt)
    }

    /// The `-o` options that make apt use only the private configuration.
    pub fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        let mut o = vec![
            format!("Dir::Etc::sourcelist={d}/sources.list"),
            "Dir::Etc::sourceparts=-".to_string(),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::Cache={d}/cache"),
        ];
        o.extend(
            ARCHITECTURES
                .iter()
                .map(|a| format!("APT::Architectures::={a}")),
        );
        o.into_iter().flat_map(|o| ["-o".to_string(), o]).collect()
    }

    fn list_names(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.join("lists"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `apt-get update` on the private lists (at most once per run of the task).
    fn update(&mut self) -> Result<(), Failure> {
        if self.updated {
            return Ok(());
        }
        let mut cmd = Command::new("apt-get");
        cmd.args(self.options()).args(["-q", "update"]);
        run::status(cmd).map_err(|f| match f {
            Failure::Failed(m) => Failure::Failed(format!(
                "{m} (the private apt configuration in {}; is the archive reachable?)",
                self.dir.display()
            )),
            usage => usage,
        })?;
        self.updated = true;
        Ok(())
    }

    /// The newest `linux-image-<series>*-<flavour>` package in the private lists.
    pub fn newest_kernel(&self, series: &str, flavour: &str) -> Result<String, Failure> {
        let prefix = format!("linux-image-{series}");
        let out = Command::new("apt-cache")
            .args(self.options())
            .args(["pkgnames", &prefix])
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| {
                Failure::Failed(format!("apt-cache: cannot run: {e} (is this Debian?)"))
            })?;
        newest_kernel(&String::from_utf8_lossy(&out.stdout), series, flavour).ok_or_else(|| {
            Failure::Failed(format!(
                "no {prefix}*-{flavour} package in the private lists ({}/sources.list)",
                self.dir.display()
            ))
        })
    }

    /// Downloads `package` (`name:arch`) and returns the `.deb`. `resolve` names the package
    /// from the lists; when the download fails, the lists are updated once and it is asked
    /// again (the package may have been superseded).
    pub fn download(
        &mut self,
        resolve: &dyn Fn(&Apt) -> Result<String, Failure>,
    ) -> Result<PathBuf, Failure> {
        let package = resolve(self)?;
        match self.download_one(&package) {
            Ok(deb) => Ok(deb),
            Err(first) if !self.updated => {
                eprintln!("apt-get download {package} failed; updating the private lists once");
                self.update()?;
                let package = resolve(self)?;
                self.download_one(&package).map_err(|_| first)
            }
            Err(e) => Err(e),
        }
    }

    fn download_one(&self, package: &str) -> Result<PathBuf, Failure> {
        let download = self.dir.join("download");
        let _ = std::fs::remove_dir_all(&download);
        std::fs::create_dir_all(&download)
            .map_err(|e| Failure::Failed(format!("{}: {e}", download.display())))?;
        let mut cmd = Command::new("apt-get");
        cmd.args(self.options())
            .args(["-q", "download", package])
            .current_dir(&download);
        run::status(cmd)?;
        std::fs::read_dir(&download)
            .map_err(|e| Failure::Failed(format!("{}: {e}", download.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| Failure::Failed(format!("apt-get download {package}: no .deb")))
    }

    /// Removes downloaded packages (what is needed was taken out of them).
    pub fn clean_download(&self) {
        let _ = std::fs::remove_dir_all(self.dir.join("download"));
    }
}

/// The Debian archive URI of the host's own apt sources.
fn host_archive() -> Result<String, Failure> {
    let mut sources = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/etc/apt/sources.list") {
        sources.extend(parse_one_line(&text));
    }
    let parts = Path::new("/etc/apt/sources.list.d");
    let mut files: Vec<PathBuf> = std::fs::read_dir(parts)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        match file.extension().and_then(|x| x.to_str()) {
            Some("list") => sources.extend(parse_one_line(&text)),
            Some("sources") => sources.extend(parse_deb822(&text)),
            _ => {}
        }
    }
    debian_archive(&sources).map(str::to_string).ok_or_else(|| {
        Failure::Failed(
            "no Debian archive (an http(s) source of a Debian release suite with `main`) in \
             /etc/apt/sources.list or /etc/apt/sources.list.d/: the guest kernels come from \
             Debian's suites; pass --kernel PATH to boot another kernel"
                .into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARCHIVE: &str = "http://mirror.example/debian";

    #[test]
    fn reads_one_line_sources() {
        let text = "# comment\n\
            deb-src http://mirror.example/debian bookworm main\n\
            deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib # x\n\
            deb [ trusted=yes ] https://other.example/d stable main\n\
            deb http://mirror.example/debian-security bookworm-security main\n";
        let s = parse_one_line(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].uri, ARCHIVE);
        assert_eq!(s[0].suites, ["bookworm"]);
        assert_eq!(s[0].components, ["main", "contrib"]);
        assert_eq!(s[1].uri, "https://other.example/d");
        assert_eq!(s[2].suites, ["bookworm-security"]);
    }

    #[test]
    fn reads_deb822_sources() {
        let text = "Types: deb\n\
            # a comment\n\
            URIs: http://mirror.example/debian\n\
            Suites: bookworm bookworm-updates\n\
            Components: main\n\
            Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
            \n\
            Types: deb-src\n\
            URIs: http://src.example/debian\n\
            Suites: bookworm\n\
            Components: main\n\
            \n\
            Types: deb\n\
            URIs: http://off.example/debian\n\
            Suites: trixie\n\
            Components: main\n\
            Enabled: no\n\
            \n\
            types: deb deb-src\n\
            uris: http://a.example/d\n  http://b.example/d\n\
            suites: sid\n\
            components: main\n";
        let s = parse_deb822(text);
        let uris: Vec<&str> = s.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(
            uris,
            [ARCHIVE, "http://a.example/d", "http://b.example/d"],
            "{s:?}"
        );
        assert_eq!(s[0].suites, ["bookworm", "bookworm-updates"]);
    }

    #[test]
    fn finds_the_debian_archive_among_the_sources() {
        let mut sources = parse_deb822(
            "Types: deb\nURIs: http://mirror.example/debian-security\n\
             Suites: bookworm-security\nComponents: main\n\n\
             Types: deb\nURIs: https://vendor.example/apt\nSuites: nodistro\nComponents: main\n\n\
             Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n\
             Components: contrib main\n",
        );
        assert_eq!(debian_archive(&sources), Some(ARCHIVE));
        sources.pop();
        assert_eq!(debian_archive(&sources), None);
        let cdrom = parse_one_line("deb cdrom:[Debian]/ bookworm main\n");
        assert_eq!(debian_archive(&cdrom), None);
    }

    #[test]
    fn the_private_sources_name_every_suite_with_the_keyring() {
        let text = sources_list(ARCHIVE);
        let parsed = parse_one_line(&text);
        assert_eq!(parsed.len(), SUITES.len());
        for (source, suite) in parsed.iter().zip(SUITES) {
            assert_eq!(source.uri, ARCHIVE);
            assert_eq!(source.suites, [suite]);
            assert_eq!(source.components, ["main"]);
        }
        assert_eq!(text.matches(&format!("[signed-by={KEYRING}]")).count(), 3);
    }

    #[test]
    fn knows_when_the_lists_are_complete() {
        let mut names: Vec<String> = Vec::new();
        for suite in SUITES {
            for arch in ARCHITECTURES {
                names.push(format!(
                    "mirror.example_debian_dists_{suite}_main_binary-{arch}_Packages"
                ));
            }
        }
        names.push("lock".into());
        assert!(lists_complete(&names));
        names[5].push_str(".lz4");
        assert!(lists_complete(&names));
        names.remove(2);
        assert!(!lists_complete(&names));
        assert!(!lists_complete(&[]));
    }

    /// `apt-cache pkgnames linux-image-6.12.` and `...-5.10.0-` as seen on the project's
    /// machines (shortened), with made-up extremes.
    const NAMES: &str = "linux-image-6.12.107+deb13-arm64\n\
        linux-image-6.12.117+deb13-cloud-arm64\n\
        linux-image-6.12.117+deb13-rt-amd64\n\
        linux-image-6.12.117+deb13-amd64-unsigned\n\
        linux-image-6.12.117+deb13-amd64-dbg\n\
        linux-image-6.12.117+deb13-arm64\n\
        linux-image-6.12.107+deb13-amd64\n\
        linux-image-6.12.117+deb13-amd64\n\
        linux-image-6.12.99+deb13-amd64\n\
        linux-image-6.12-amd64\n\
        linux-image-5.10.0-30-amd64\n\
        linux-image-5.10.0-9-amd64\n\
        linux-image-5.10.0-32-amd64\n\
        linux-image-5.10.0-32-cloud-amd64\n\
        linux-image-6.1.0-50-amd64\n\
        linux-image-amd64\n";

    #[test]
    fn picks_the_newest_kernel_of_a_series_and_flavour() {
        let pick = |series, flavour| newest_kernel(NAMES, series, flavour);
        assert_eq!(
            pick("6.12.", "amd64").as_deref(),
            Some("linux-image-6.12.117+deb13-amd64")
        );
        assert_eq!(
            pick("6.12.", "arm64").as_deref(),
            Some("linux-image-6.12.117+deb13-arm64")
        );
        // Numeric, not lexical: 32 > 30 > 9.
        assert_eq!(
            pick("5.10.0-", "amd64").as_deref(),
            Some("linux-image-5.10.0-32-amd64")
        );
        // 6.1 is not a prefix of 6.12.
        assert_eq!(
            pick("6.1.", "amd64").as_deref(),
            Some("linux-image-6.1.0-50-amd64")
        );
        assert_eq!(pick("5.10.0-", "arm64"), None);
        assert_eq!(pick("6.6.", "amd64"), None);
        assert_eq!(newest_kernel("", "6.12.", "amd64"), None);
    }

    #[test]
    fn version_keys_reject_other_packages() {
        let key = |n| kernel_version_key(n, "6.12.", "amd64");
        assert_eq!(
            key("linux-image-6.12.117+deb13-amd64"),
            Some(vec![6, 12, 117, 13])
        );
        for other in [
            "linux-image-6.12.117+deb13-cloud-amd64",
            "linux-image-6.12.117+deb13-amd64-dbg",
            "linux-image-6.12-amd64",
            "linux-image-6.12.1;x-amd64",
            "linux-headers-6.12.117+deb13-amd64",
            "linux-image-amd64",
        ] {
            assert_eq!(key(other), None, "{other}");
        }
    }
}
