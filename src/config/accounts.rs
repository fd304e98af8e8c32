//! Users and groups by name, from `/etc/passwd` and `/etc/group` as text (no NSS library:
//! what the orchestrator resolves is what those files say, on the host, at load time).
//! Lines that do not parse are skipped; the files are read with a bound.

use std::io::Read;

/// The password file.
pub const PASSWD_PATH: &str = "/etc/passwd";
/// The group file.
pub const GROUP_PATH: &str = "/etc/group";
/// Largest account file read (a larger one is refused, not cut).
pub const ACCOUNT_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// A user: name, uid, primary gid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// A group: name and gid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
}

/// The users of a passwd text (`name:password:uid:gid:gecos:home:shell`).
pub fn parse_passwd(text: &str) -> Vec<User> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let uid = fields.next()?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            (!name.is_empty() && !name.starts_with(['#', '+', '-'])).then(|| User {
                name: name.to_string(),
                uid,
                gid,
            })
        })
        .collect()
}

/// The groups of a group text (`name:password:gid:members`).
pub fn parse_group(text: &str) -> Vec<Group> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let gid = fields.next()?.parse().ok()?;
            (!name.is_empty() && !name.starts_with(['#', '+', '-'])).then(|| Group {
                name: name.to_string(),
                gid,
            })
        })
        .collect()
}

fn read_bounded(path: &str) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(ACCOUNT_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{path}: {e}"))?;
    if bytes.len() as u64 > ACCOUNT_FILE_BYTES_MAX {
        return Err(format!(
            "{path}: larger than {ACCOUNT_FILE_BYTES_MAX} bytes"
        ));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The accounts of this machine, read when a name is first looked up.
#[derive(Debug, Default)]
pub struct Accounts {
    users: Option<Result<Vec<User>, String>>,
    groups: Option<Result<Vec<Group>, String>>,
}

impl Accounts {
    /// The user called `name`: `Ok(None)` when the file has none, `Err` when it cannot be read.
    pub fn user(&mut self, name: &str) -> Result<Option<User>, String> {
        let users = self
            .users
            .get_or_insert_with(|| read_bounded(PASSWD_PATH).map(|t| parse_passwd(&t)));
        match users {
            Ok(users) => Ok(users.iter().find(|u| u.name == name).cloned()),
            Err(e) => Err(e.clone()),
        }
    }

    /// The group called `name` (as [`Accounts::user`]).
    pub fn group(&mut self, name: &str) -> Result<Option<Group>, String> {
        let groups = self
            .groups
            .get_or_insert_with(|| read_bounded(GROUP_PATH).map(|t| parse_group(&t)));
        match groups {
            Ok(groups) => Ok(groups.iter().find(|g| g.name == name).cloned()),
            Err(e) => Err(e.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_and_group_lines_parse_and_odd_ones_are_skipped() {
        let users = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\n# comment\nbroken:x:nope:1::/:\n+nis\n\
             radio:x:1001:1002::/home/radio:/bin/sh\nshort:x:5\n",
        );
        assert_eq!(
            users,
            vec![
                User {
                    name: "root".into(),
                    uid: 0,
                    gid: 0
                },
                User {
                    name: "radio".into(),
                    uid: 1001,
                    gid: 1002
                },
            ]
        );
        let groups = parse_group("root:x:0:\naudio:x:29:pulse,radio\nbad:x:-1:\n:x:5:\n");
        assert_eq!(
            groups,
            vec![
                Group {
                    name: "root".into(),
                    gid: 0
                },
                Group {
                    name: "audio".into(),
                    gid: 29
                },
            ]
        );
    }
}
