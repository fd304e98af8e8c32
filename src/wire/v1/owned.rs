//! Owned (allocating) frames for tests, fuzzing and tools: `decode(encode(x)) == x` holds for
//! every valid one. The hot paths use the borrowed types instead.

use super::decode::{Body, ErrorFrame, Frame, Notify, Start, Started};
use super::encode::{
    encode_error, encode_notify, encode_ping, encode_pong, encode_running, encode_start,
    encode_started, StartRef,
};
use super::error::EncodeError;
use super::types::{ErrorStage, Pong, StartFlags};

/// An owned frame: request id and body (the version is always ours when encoding).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct OwnedFrame {
    pub request_id: u64,
    pub body: OwnedBody,
}

/// The owned counterpart of [`Body`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum OwnedBody {
    Start(OwnedStart),
    Started {
        pid: i32,
    },
    Error(OwnedError),
    Ping,
    Pong(Pong),
    Running,
    /// Request id 0 on the wire.
    Notify {
        pid: i32,
        text: Vec<u8>,
    },
}

/// The owned counterpart of [`Start`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct OwnedStart {
    #[cfg_attr(
        feature = "arbitrary",
        arbitrary(with = super::types::arbitrary_start_flags)
    )]
    pub flags: StartFlags,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub cwd: Option<Vec<u8>>,
    pub argv: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
    pub cgroup: Option<Vec<u8>>,
    #[cfg_attr(feature = "arbitrary", arbitrary(with = super::exec_env::arbitrary))]
    pub exec: Option<Box<crate::spawn::ExecEnv>>,
    #[cfg_attr(feature = "arbitrary", arbitrary(with = super::cgroup_limits::arbitrary))]
    pub cgroup_limits: Option<Box<crate::cgroup::CgroupLimits>>,
}

/// The owned counterpart of [`ErrorFrame`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct OwnedError {
    pub errno: i32,
    pub stage: ErrorStage,
    pub text: Vec<u8>,
}

impl OwnedFrame {
    /// Encodes into `buf`; an invalid frame (limits, NUL, empty argv ...) is an error.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let id = self.request_id;
        match &self.body {
            OwnedBody::Start(start) => encode_start(buf, id, &start.as_ref()),
            OwnedBody::Started { pid } => encode_started(buf, id, *pid),
            OwnedBody::Error(error) => encode_error(buf, id, error.errno, error.stage, &error.text),
            OwnedBody::Ping => encode_ping(buf, id),
            OwnedBody::Pong(pong) => encode_pong(buf, id, *pong),
            OwnedBody::Running => encode_running(buf, id),
            OwnedBody::Notify { pid, text } if id == 0 => encode_notify(buf, *pid, text),
            // A Notify has request id 0; an owned frame that says otherwise cannot be sent.
            OwnedBody::Notify { .. } => Err(EncodeError::NotifyRequestId { id }),
        }
    }
}

impl OwnedStart {
    /// A borrowed view for [`encode_start`].
    pub fn as_ref(&self) -> StartRef<'_, Vec<u8>, Vec<u8>> {
        StartRef {
            argv: &self.argv,
            env: &self.env,
            cwd: self.cwd.as_deref(),
            uid: self.uid,
            gid: self.gid,
            flags: self.flags,
            cgroup: self.cgroup.as_deref(),
            exec: self.exec.as_deref(),
            cgroup_limits: self.cgroup_limits.as_deref(),
        }
    }
}

impl Frame<'_> {
    /// Copies the frame into an owned one (the minor version is not kept).
    pub fn to_owned_frame(&self) -> OwnedFrame {
        OwnedFrame {
            request_id: self.header.request_id,
            body: self.body.to_owned_body(),
        }
    }
}

impl Body<'_> {
    /// Copies the body into an owned one.
    pub fn to_owned_body(&self) -> OwnedBody {
        match self {
            Body::Start(start) => OwnedBody::Start(start.to_owned_start()),
            Body::Started(Started { pid }) => OwnedBody::Started { pid: *pid },
            Body::Error(ErrorFrame { errno, stage, text }) => OwnedBody::Error(OwnedError {
                errno: *errno,
                stage: *stage,
                text: text.to_vec(),
            }),
            Body::Ping => OwnedBody::Ping,
            Body::Pong(pong) => OwnedBody::Pong(*pong),
            Body::Running => OwnedBody::Running,
            Body::Notify(Notify { pid, text }) => OwnedBody::Notify {
                pid: *pid,
                text: text.to_vec(),
            },
        }
    }
}

impl Start<'_> {
    /// Copies the request into an owned one.
    pub fn to_owned_start(&self) -> OwnedStart {
        OwnedStart {
            flags: self.flags,
            uid: self.uid,
            gid: self.gid,
            cwd: self.cwd.map(<[u8]>::to_vec),
            argv: self.argv.iter().map(<[u8]>::to_vec).collect(),
            env: self.env.iter().map(<[u8]>::to_vec).collect(),
            cgroup: self.cgroup.map(<[u8]>::to_vec),
            exec: self.exec.map(|section| Box::new(section.get())),
            cgroup_limits: self.cgroup_limits.map(|section| Box::new(section.get())),
        }
    }
}
