//! Who is on the other end: SO_PEERCRED and the uid allow-list.

/// Credentials of a connected peer, as the kernel recorded them at connect (SO_PEERCRED).
pub use holden::sys::socket::PeerCred as Peer;

/// The uids allowed to talk to the agent: root, the agent's own uid, and
/// every `--allow-uid`.
#[derive(Clone, Debug)]
pub struct AllowList {
    uids: Vec<u32>,
}

impl AllowList {
    pub fn new(own_uid: u32, extra: &[u32]) -> AllowList {
        let mut uids = vec![0, own_uid];
        uids.extend_from_slice(extra);
        uids.sort_unstable();
        uids.dedup();
        AllowList { uids }
    }

    pub fn allows(&self, uid: u32) -> bool {
        self.uids.contains(&uid)
    }

    pub fn uids(&self) -> &[u32] {
        &self.uids
    }
}

/// Whether `peer` may ask for a process running as `uid`/`gid`: root may ask
/// for anything, anyone else only for their own uid and gid. (Without this, a
/// non-root peer on the allow-list could get a root process from a root
/// agent by asking for uid 0.)
pub fn may_request_credentials(peer: &Peer, uid: Option<u32>, gid: Option<u32>) -> bool {
    if peer.uid == 0 {
        return true;
    }
    uid.is_none_or(|u| u == peer.uid) && gid.is_none_or(|g| g == peer.gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_has_root_and_own_uid() {
        let list = AllowList::new(1000, &[2000, 1000]);
        assert!(list.allows(0) && list.allows(1000) && list.allows(2000));
        assert!(!list.allows(3000));
        assert_eq!(list.uids(), &[0, 1000, 2000]);
    }

    #[test]
    fn only_root_may_ask_for_other_credentials() {
        let root = Peer {
            pid: 1,
            uid: 0,
            gid: 0,
        };
        let user = Peer {
            pid: 1,
            uid: 1000,
            gid: 100,
        };
        assert!(may_request_credentials(&root, Some(5), Some(6)));
        assert!(may_request_credentials(&user, None, None));
        assert!(may_request_credentials(&user, Some(1000), Some(100)));
        assert!(!may_request_credentials(&user, Some(0), None));
        assert!(!may_request_credentials(&user, None, Some(0)));
    }
}
