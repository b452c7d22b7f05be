//! One framed message on a ring link: a [`Header`] then its body, written or read before a
//! deadline, with socket errors turned into [`CollectiveError`]s naming the operation, its
//! sequence number and the peer. The body of an f32 buffer goes on the wire as it is in memory.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::wire::{HEADER_BYTES, Header, Op};
use crate::{CollectiveError, Result};

/// Writes `header` then `body` to the next rank (`next` in errors) before `deadline`.
pub(crate) fn send_message(
    to_next: &mut TcpStream,
    header: Header,
    body: &[u8],
    deadline: Instant,
    next: usize,
    timeout: Duration,
) -> Result<()> {
    let (op, seq) = (header.op, header.seq);
    let io = |source: std::io::Error| match source.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            CollectiveError::Timeout { op, seq, peer: next, waited: timeout }
        }
        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => CollectiveError::PeerClosed { op, seq, peer: next },
        _ => CollectiveError::Io { op, seq, peer: next, source },
    };
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    to_next.set_write_timeout(Some(remaining)).map_err(io)?;
    to_next.write_all(&header.encode()).map_err(io)?;
    to_next.write_all(body).map_err(io)?;
    Ok(())
}

/// Bytes read from the socket at a time by [`receive_pieces`]: large enough for few system
/// calls, small enough to stay in cache while it is reduced.
const PIECE_BYTES: usize = 256 << 10;

/// Reads one framed message of `expected.bytes` bytes, handing it to `into` in pieces (a
/// multiple of 4 bytes each, as f32 buffers need).
pub(crate) fn receive_pieces(
    from_prev: &mut TcpStream,
    expected: Header,
    into: &mut dyn FnMut(usize, &[u8]),
    deadline: Instant,
    rank: usize,
    prev: usize,
    timeout: Duration,
) -> Result<()> {
    // The header (checked, and the read deadline set), then the body piece by piece.
    receive(from_prev, expected, &mut [], deadline, rank, prev, timeout)?;
    let total = expected.bytes as usize;
    let mut buf = vec![0u8; PIECE_BYTES.min(total)];
    let mut offset = 0;
    while offset < total {
        let piece = &mut buf[..PIECE_BYTES.min(total - offset)];
        from_prev.read_exact(piece).map_err(|source| io_error(source, expected.op, expected.seq, prev, timeout))?;
        into(offset, piece);
        offset += piece.len();
    }
    Ok(())
}

fn io_error(source: std::io::Error, op: Op, seq: u64, prev: usize, timeout: Duration) -> CollectiveError {
    match source.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            CollectiveError::Timeout { op, seq, peer: prev, waited: timeout }
        }
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset => CollectiveError::PeerClosed { op, seq, peer: prev },
        _ => CollectiveError::Io { op, seq, peer: prev, source },
    }
}

/// Reads a message's header, checks it against `expected`, then the first `recv.len()` bytes
/// of its body.
pub(crate) fn receive(
    from_prev: &mut TcpStream,
    expected: Header,
    recv: &mut [u8],
    deadline: Instant,
    rank: usize,
    prev: usize,
    timeout: Duration,
) -> Result<()> {
    let (op, seq) = (expected.op, expected.seq);
    let io = |source: std::io::Error| io_error(source, op, seq, prev, timeout);
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    from_prev.set_read_timeout(Some(remaining)).map_err(io)?;
    let mut buf = [0u8; HEADER_BYTES];
    from_prev.read_exact(&mut buf).map_err(io)?;
    let got = Header::decode(&buf).ok_or(CollectiveError::Io {
        op,
        seq,
        peer: prev,
        source: std::io::Error::new(ErrorKind::InvalidData, "not a collective header (stream out of step)"),
    })?;
    if got != expected {
        return Err(CollectiveError::Desync { at: got.seq.min(expected.seq), rank, peer: prev, expected, got });
    }
    from_prev.read_exact(recv).map_err(io)
}

// The wire carries little-endian f32s, sent straight from the caller's buffer.
#[cfg(target_endian = "big")]
compile_error!("the TCP ring sends f32 buffers as they are in memory: little-endian targets only");

/// The bytes of `values` as they go on the wire (no copy).
pub(crate) fn wire_bytes(values: &[f32]) -> &[u8] {
    bytemuck::cast_slice(values)
}

/// The f32s of bytes off the wire.
pub(crate) fn bytes_f32(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}
