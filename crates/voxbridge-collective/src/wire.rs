//! The 32-byte header in front of every message.

use std::fmt;

const MAGIC: u32 = 0x5642_4331; // "VBC1"
pub const HEADER_BYTES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    AllReduce,
    AllGather,
    Broadcast,
    Barrier,
    Hello,
}

impl Op {
    fn code(self) -> u8 {
        match self {
            Op::AllReduce => 1,
            Op::AllGather => 2,
            Op::Broadcast => 3,
            Op::Barrier => 4,
            Op::Hello => 5,
        }
    }

    fn from_code(code: u8) -> Option<Op> {
        Some(match code {
            1 => Op::AllReduce,
            2 => Op::AllGather,
            3 => Op::Broadcast,
            4 => Op::Barrier,
            5 => Op::Hello,
            _ => return None,
        })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::AllReduce => "all_reduce",
            Op::AllGather => "all_gather",
            Op::Broadcast => "broadcast",
            Op::Barrier => "barrier",
            Op::Hello => "hello",
        })
    }
}

/// What a message belongs to. Two ranks in step send identical headers (but for `bytes` where
/// chunk sizes differ, which the receiver checks against its own expectation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub generation: u32,
    pub seq: u64,
    pub op: Op,
    /// Step within the operation (ring steps).
    pub part: u32,
    pub bytes: u64,
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} seq {} (part {}, {} bytes, generation {})",
            self.op, self.seq, self.part, self.bytes, self.generation
        )
    }
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&self.generation.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16] = self.op.code();
        out[20..24].copy_from_slice(&self.part.to_le_bytes());
        out[24..32].copy_from_slice(&self.bytes.to_le_bytes());
        out
    }

    /// `None` for bytes that are not a header (wrong magic or operation).
    pub fn decode(bytes: &[u8; HEADER_BYTES]) -> Option<Header> {
        let u32_at = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(0) != MAGIC {
            return None;
        }
        Some(Header {
            generation: u32_at(4),
            seq: u64_at(8),
            op: Op::from_code(bytes[16])?,
            part: u32_at(20),
            bytes: u64_at(24),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_garbage_is_refused() {
        let h = Header { generation: 3, seq: 1 << 40, op: Op::AllGather, part: 7, bytes: 123_456_789 };
        assert_eq!(Header::decode(&h.encode()), Some(h));
        assert_eq!(Header::decode(&[0u8; HEADER_BYTES]), None);
        assert_eq!(h.to_string(), "all_gather seq 1099511627776 (part 7, 123456789 bytes, generation 3)");
    }
}
