//! The `user_data` bit layout that ties a completion to its slot, generation and operation.
//!
//! ```text
//!  63..61   60        59..56   55..32            31..0
//!  000      cancel    op tag   generation (24)   slot index (32)
//! ```
//! `cancel` marks the completion of a cancel request (ASYNC_CANCEL / TIMEOUT_REMOVE) the ring
//! issued itself; those are consumed inside and never returned. Reserved bits set means the
//! completion is not ours and it is dropped.

use crate::OpTag;

pub(crate) const GENERATION_BITS: u32 = 24;
pub(crate) const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;
const GENERATION_SHIFT: u32 = 32;
const TAG_SHIFT: u32 = 56;
const TAG_MASK: u64 = 0xf;
const CANCEL_BIT: u64 = 1 << 60;
const RESERVED_MASK: u64 = 0b111 << 61;

/// A decoded `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UserData {
    pub index: u32,
    pub generation: u32,
    pub tag: OpTag,
    pub cancel: bool,
}

impl UserData {
    pub fn encode(self) -> u64 {
        debug_assert!(self.generation <= GENERATION_MASK);
        let mut value = self.index as u64
            | ((self.generation & GENERATION_MASK) as u64) << GENERATION_SHIFT
            | (self.tag as u64) << TAG_SHIFT;
        if self.cancel {
            value |= CANCEL_BIT;
        }
        value
    }

    /// `None` for a value the ring never produced (reserved bits or unknown tag).
    pub fn decode(value: u64) -> Option<UserData> {
        if value & RESERVED_MASK != 0 {
            return None;
        }
        let tag = OpTag::from_u8(((value >> TAG_SHIFT) & TAG_MASK) as u8)?;
        Some(UserData {
            index: value as u32,
            generation: ((value >> GENERATION_SHIFT) as u32) & GENERATION_MASK,
            tag,
            cancel: value & CANCEL_BIT != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_tag_and_extremes() {
        for tag in OpTag::ALL {
            for (index, generation, cancel) in [
                (0, 0, false),
                (u32::MAX, GENERATION_MASK, true),
                (7, 12345, false),
            ] {
                let ud = UserData {
                    index,
                    generation,
                    tag,
                    cancel,
                };
                assert_eq!(UserData::decode(ud.encode()), Some(ud));
            }
        }
    }

    #[test]
    fn foreign_values_are_rejected() {
        assert_eq!(UserData::decode(1 << 63), None);
        assert_eq!(UserData::decode(0xf << TAG_SHIFT), None);
    }
}
