//! [`TcpRing`]: collectives over a ring of TCP connections (rank r sends to r+1, receives from
//! r−1). Each ring step sends on a scoped thread while the caller's thread receives, so large
//! messages cannot deadlock on full socket buffers.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::framing::{bytes_f32, receive, receive_pieces, send_message, wire_bytes};
use crate::wire::{HEADER_BYTES, Header, Op};
use crate::{Collective, CollectiveError, Result};

/// One rank's place in the ring.
#[derive(Debug)]
pub struct TcpRing {
    rank: usize,
    world: usize,
    generation: u32,
    seq: u64,
    timeout: Duration,
    /// To rank + 1 and from rank − 1; `None` when alone.
    links: Option<(TcpStream, TcpStream)>,
    /// Fault injection: this rank skips the operation with this sequence number.
    skip_seq: Option<u64>,
    /// This rank's address as the others reach it (new listeners of [`TcpRing::split`] bind
    /// on its IP).
    address: SocketAddr,
    /// The rank in the parent ring of each rank here (errors name those); identity unless split.
    names: Vec<usize>,
}

impl TcpRing {
    /// Joins the ring: `listener` is this rank's (bound before the addresses were exchanged),
    /// `addrs[r]` every rank's listening address. Connects to the next rank, accepts the previous
    /// one, and checks both hellos (rank and generation) within `timeout`.
    pub fn connect(
        rank: usize,
        addrs: &[SocketAddr],
        listener: TcpListener,
        generation: u32,
        timeout: Duration,
    ) -> Result<Self> {
        let world = addrs.len();
        if rank >= world {
            return Err(CollectiveError::Setup(format!("rank {rank} of a world of {world}")));
        }
        let mut ring = TcpRing {
            rank,
            world,
            generation,
            seq: 0,
            timeout,
            links: None,
            skip_seq: None,
            address: addrs[rank],
            names: (0..world).collect(),
        };
        if world == 1 {
            return Ok(ring);
        }
        let deadline = Instant::now() + timeout;
        let next = (rank + 1) % world;
        let prev = (rank + world - 1) % world;
        let setup = |what: String| CollectiveError::Setup(format!("rank {rank}: {what}"));
        let mut to_next = loop {
            match TcpStream::connect_timeout(&addrs[next], Duration::from_millis(500)) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("rank {rank}: connecting to rank {next} at {}: {e}; retrying", addrs[next]);
                    std::thread::yield_now();
                }
                Err(e) => return Err(setup(format!("cannot connect to rank {next} at {}: {e}", addrs[next]))),
            }
        };
        to_next.set_nodelay(true).map_err(|e| setup(e.to_string()))?;
        let hello = Header { generation, seq: 0, op: Op::Hello, part: rank as u32, bytes: 0 };
        to_next.write_all(&hello.encode()).map_err(|e| setup(format!("hello to rank {next}: {e}")))?;
        listener.set_nonblocking(true).map_err(|e| setup(e.to_string()))?;
        let mut from_prev = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(setup(format!("no connection from rank {prev} within {timeout:?}: {e}"))),
            }
        };
        from_prev.set_nonblocking(false).map_err(|e| setup(e.to_string()))?;
        from_prev.set_nodelay(true).map_err(|e| setup(e.to_string()))?;
        from_prev.set_read_timeout(Some(timeout)).map_err(|e| setup(e.to_string()))?;
        let mut buf = [0u8; HEADER_BYTES];
        from_prev.read_exact(&mut buf).map_err(|e| setup(format!("hello from rank {prev}: {e}")))?;
        let got = Header::decode(&buf).ok_or_else(|| setup(format!("rank {prev} sent no voxbridge hello")))?;
        let want = Header { part: prev as u32, ..hello };
        if got != want {
            return Err(setup(format!("expected hello from rank {prev} of generation {generation}, got {got}")));
        }
        ring.links = Some((to_next, from_prev));
        Ok(ring)
    }

    /// Fault injection (tests): this rank skips operation `seq` entirely, as a buggy rank would.
    pub fn skip_operation(&mut self, seq: u64) {
        self.skip_seq = Some(seq);
    }

    /// Ranks that pass the same `color` form a new ring, ordered by their rank in this one (as
    /// `MPI_Comm_split`). A collective of this ring: every rank must call it. The new ring's
    /// errors name ranks of this one.
    pub fn split_ring(&mut self, color: u64) -> Result<TcpRing> {
        let setup = |what: String| CollectiveError::Setup(format!("split: {what}"));
        let listener = TcpListener::bind(SocketAddr::new(self.address.ip(), 0))
            .map_err(|e| setup(format!("bind on {}: {e}", self.address.ip())))?;
        let port = listener.local_addr().map_err(|e| setup(e.to_string()))?.port();
        let mine = format!("{color} {}", SocketAddr::new(self.address.ip(), port));
        let mut members = Vec::new();
        for root in 0..self.world {
            let mut bytes = if root == self.rank { mine.clone().into_bytes() } else { Vec::new() };
            self.broadcast(&mut bytes, root)?;
            let entry = String::from_utf8(bytes).map_err(|e| setup(format!("entry of rank {root}: {e}")))?;
            let parsed = entry
                .split_once(' ')
                .and_then(|(c, a)| Some((c.parse::<u64>().ok()?, a.parse::<SocketAddr>().ok()?)))
                .ok_or_else(|| setup(format!("rank {root} sent {entry:?}")))?;
            if parsed.0 == color {
                members.push((root, parsed.1));
            }
        }
        let sub_rank = members.iter().position(|(r, _)| *r == self.rank).unwrap_or(0);
        let addrs: Vec<SocketAddr> = members.iter().map(|(_, a)| *a).collect();
        let mut ring = TcpRing::connect(sub_rank, &addrs, listener, self.generation, self.timeout)?;
        ring.names = members.iter().map(|(r, _)| self.names[*r]).collect();
        Ok(ring)
    }

    fn next_rank(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    /// Starts an operation: its sequence number, or `None` when fault injection skips it.
    fn begin(&mut self) -> Option<u64> {
        let seq = self.seq;
        self.seq += 1;
        if self.skip_seq == Some(seq) {
            tracing::warn!(rank = self.rank, seq, "fault injection: skipping this collective");
            return None;
        }
        Some(seq)
    }

    /// One ring step: sends `send` to the next rank while receiving `recv_len` bytes from the
    /// previous one, both framed by `header` (with the respective byte counts). Received bytes
    /// are handed to `into(offset, piece)` piece by piece as they arrive, so the reduction of
    /// one piece overlaps the transfer of the next.
    fn exchange(
        &mut self,
        header: Header,
        send: &[u8],
        recv_len: usize,
        into: &mut dyn FnMut(usize, &[u8]),
        deadline: Instant,
    ) -> Result<()> {
        let (rank, next, prev) = (self.names[self.rank], self.names[self.next_rank()], self.names[self.prev_rank()]);
        let (op, seq) = (header.op, header.seq);
        let timeout = self.timeout;
        let Some((to_next, from_prev)) = self.links.as_mut() else { return Ok(()) };
        let out_header = Header { bytes: send.len() as u64, ..header };
        let expected = Header { bytes: recv_len as u64, ..header };
        std::thread::scope(|scope| {
            let sender = scope.spawn(move || send_message(to_next, out_header, send, deadline, next, timeout));
            let received = receive_pieces(from_prev, expected, into, deadline, rank, prev, timeout);
            let sent = sender.join().unwrap_or_else(|_| {
                Err(CollectiveError::Io {
                    op,
                    seq,
                    peer: next,
                    source: std::io::Error::other("sender thread panicked"),
                })
            });
            // A receive error says more (desync, who stopped) than the send error it causes.
            received.and(sent)
        })
    }

    fn chunks(n: usize, world: usize) -> Vec<std::ops::Range<usize>> {
        (0..world).map(|i| (i * n / world)..((i + 1) * n / world)).collect()
    }
}

/// Two non-overlapping ranges of `data`: one to send, one to receive into.
fn disjoint(data: &mut [f32], send: std::ops::Range<usize>, recv: std::ops::Range<usize>) -> (&[f32], &mut [f32]) {
    // Chunks may be empty, so order them by where one ends and the other starts.
    if send.end <= recv.start {
        let (head, tail) = data.split_at_mut(recv.start);
        (&head[send], &mut tail[..recv.len()])
    } else {
        let (head, tail) = data.split_at_mut(send.start);
        (&tail[..send.len()], &mut head[recv])
    }
}

impl Collective for TcpRing {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    /// Ring all-reduce: w−1 reduce-scatter steps (each rank ends owning the sum of one chunk),
    /// then w−1 all-gather steps. The sum of each element is taken in ring order, so the result
    /// is identical on every rank.
    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<()> {
        let Some(seq) = self.begin() else { return Ok(()) };
        let w = self.world;
        if w == 1 {
            return Ok(());
        }
        let deadline = Instant::now() + self.timeout;
        let chunks = Self::chunks(data.len(), w);
        let generation = self.generation;
        let header = |part: usize| Header { generation, seq, op: Op::AllReduce, part: part as u32, bytes: 0 };
        for step in 0..w - 1 {
            let send_idx = (self.rank + w - step) % w;
            let recv_idx = (self.rank + w - step - 1) % w;
            let (send, recv) = disjoint(data, chunks[send_idx].clone(), chunks[recv_idx].clone());
            let recv_len = recv.len() * 4;
            let mut add = |offset: usize, piece: &[u8]| {
                for (d, v) in recv[offset / 4..].iter_mut().zip(bytes_f32(piece)) {
                    *d += v;
                }
            };
            self.exchange(header(step), wire_bytes(send), recv_len, &mut add, deadline)?;
        }
        for step in 0..w - 1 {
            let send_idx = (self.rank + 1 + w - step) % w;
            let recv_idx = (self.rank + w - step) % w;
            let (send, recv) = disjoint(data, chunks[send_idx].clone(), chunks[recv_idx].clone());
            let recv_len = recv.len() * 4;
            let mut copy = |offset: usize, piece: &[u8]| {
                for (d, v) in recv[offset / 4..].iter_mut().zip(bytes_f32(piece)) {
                    *d = v;
                }
            };
            self.exchange(header(w - 1 + step), wire_bytes(send), recv_len, &mut copy, deadline)?;
        }
        Ok(())
    }

    fn all_gather(&mut self, local: &[f32]) -> Result<Vec<f32>> {
        let Some(seq) = self.begin() else { return Ok(local.to_vec()) };
        let (w, n) = (self.world, local.len());
        let mut out = vec![0f32; n * w];
        out[self.rank * n..(self.rank + 1) * n].copy_from_slice(local);
        let deadline = Instant::now() + self.timeout;
        for step in 0..w.saturating_sub(1) {
            let send_idx = (self.rank + w - step) % w;
            let recv_idx = (self.rank + w - step - 1) % w;
            let (send, recv) = disjoint(&mut out, send_idx * n..(send_idx + 1) * n, recv_idx * n..(recv_idx + 1) * n);
            let mut copy = |offset: usize, piece: &[u8]| {
                for (d, v) in recv[offset / 4..].iter_mut().zip(bytes_f32(piece)) {
                    *d = v;
                }
            };
            let header = Header { generation: self.generation, seq, op: Op::AllGather, part: step as u32, bytes: 0 };
            self.exchange(header, wire_bytes(send), n * 4, &mut copy, deadline)?;
        }
        Ok(out)
    }

    /// Passed along the ring from `root`: each rank receives from its predecessor (unless it is
    /// the root) and forwards to its successor (unless that is the root); an 8-byte length
    /// message goes before the payload.
    fn broadcast(&mut self, data: &mut Vec<u8>, root: usize) -> Result<()> {
        let Some(seq) = self.begin() else { return Ok(()) };
        let w = self.world;
        if w == 1 {
            return Ok(());
        }
        let deadline = Instant::now() + self.timeout;
        let (rank, timeout) = (self.rank, self.timeout);
        let (next, prev) = (self.next_rank(), self.prev_rank());
        let (name, next_name, prev_name) = (self.names[rank], self.names[next], self.names[prev]);
        let generation = self.generation;
        let Some((to_next, from_prev)) = self.links.as_mut() else { return Ok(()) };
        let header = Header { generation, seq, op: Op::Broadcast, part: root as u32, bytes: 0 };
        if rank != root {
            // The length comes first (8 bytes), then the payload.
            let mut len = [0u8; 8];
            receive(from_prev, Header { bytes: 8, ..header }, &mut len, deadline, name, prev_name, timeout)?;
            let n = u64::from_le_bytes(len) as usize;
            let mut payload = vec![0u8; n];
            let payload_header = Header { bytes: n as u64, ..header };
            receive(from_prev, payload_header, &mut payload, deadline, name, prev_name, timeout)?;
            *data = payload;
        }
        if next != root {
            let io = |source: std::io::Error| CollectiveError::Io { op: Op::Broadcast, seq, peer: next_name, source };
            to_next.set_write_timeout(Some(timeout)).map_err(io)?;
            to_next.write_all(&Header { bytes: 8, ..header }.encode()).map_err(io)?;
            to_next.write_all(&(data.len() as u64).to_le_bytes()).map_err(io)?;
            to_next.write_all(&Header { bytes: data.len() as u64, ..header }.encode()).map_err(io)?;
            to_next.write_all(data).map_err(io)?;
        }
        Ok(())
    }

    fn barrier(&mut self) -> Result<()> {
        let Some(seq) = self.begin() else { return Ok(()) };
        let deadline = Instant::now() + self.timeout;
        // Two trips around the ring: after the first every rank knows its predecessors entered;
        // after the second, that everyone did.
        for part in 0..2 * self.world.saturating_sub(1) {
            let header = Header { generation: self.generation, seq, op: Op::Barrier, part: part as u32, bytes: 0 };
            self.exchange(header, &[], 0, &mut |_, _| {}, deadline)?;
        }
        Ok(())
    }

    fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn split(&mut self, color: u64) -> Result<Box<dyn Collective>> {
        Ok(Box::new(self.split_ring(color)?))
    }

    fn next_seq(&self) -> u64 {
        self.seq
    }
}

/// Algorithm bandwidth of `all_reduce_sum` on `workers` ranks (threads of this process on
/// loopback), `bytes` per buffer: median seconds of `iters` timed calls after one warm-up, and
/// GB/s = bytes / seconds.
pub fn bench_all_reduce(workers: usize, bytes: usize, iters: usize) -> Result<(f64, f64)> {
    let (rings, _) = local_rings(workers, Duration::from_secs(60))?;
    let n = bytes / 4;
    let times: Vec<Vec<f64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = rings
            .into_iter()
            .map(|mut ring| {
                scope.spawn(move || -> Result<Vec<f64>> {
                    let mut data = vec![ring.rank() as f32; n];
                    let mut times = Vec::with_capacity(iters);
                    for i in 0..=iters {
                        ring.barrier()?;
                        let started = Instant::now();
                        ring.all_reduce_sum(&mut data)?;
                        if i > 0 {
                            times.push(started.elapsed().as_secs_f64());
                        }
                    }
                    Ok(times)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(CollectiveError::Setup("bench thread panicked".into()))))
            .collect::<Result<Vec<_>>>()
    })?;
    // A call ends when the slowest rank has its result.
    let mut per_call: Vec<f64> = (0..iters).map(|i| times.iter().map(|t| t[i]).fold(0.0, f64::max)).collect();
    per_call.sort_by(f64::total_cmp);
    let median = per_call.get(per_call.len() / 2).copied().unwrap_or(f64::NAN);
    Ok((median, bytes as f64 / median / 1e9))
}

/// `world` ranks of a ring on loopback (ports from 0), built on threads of this process; with
/// their addresses.
pub fn local_rings(world: usize, timeout: Duration) -> Result<(Vec<TcpRing>, Vec<SocketAddr>)> {
    let listeners: Vec<TcpListener> = (0..world)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .map_err(|e| CollectiveError::Setup(format!("bind: {e}")))?;
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<std::io::Result<_>>()
        .map_err(|e| CollectiveError::Setup(format!("local_addr: {e}")))?;
    let rings = std::thread::scope(|scope| {
        let handles: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(rank, l)| {
                let addrs = &addrs;
                scope.spawn(move || TcpRing::connect(rank, addrs, l, 0, timeout))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(CollectiveError::Setup("connect thread panicked".into()))))
            .collect::<Result<Vec<_>>>()
    })?;
    Ok((rings, addrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` on every rank of a fresh ring of `world` (threads), returning each rank's result.
    fn on_ring<T: Send>(world: usize, timeout: Duration, body: impl Fn(TcpRing) -> T + Sync) -> Vec<T> {
        let (rings, _) = local_rings(world, timeout).unwrap();
        std::thread::scope(|scope| {
            let handles: Vec<_> = rings.into_iter().map(|r| scope.spawn(|| body(r))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn all_reduce_sums_identically_on_every_rank_for_odd_sizes() {
        for world in [1, 2, 3, 4] {
            for n in [0usize, 1, 5, 1001] {
                let results = on_ring(world, Duration::from_secs(20), |mut ring| {
                    let r = ring.rank() as f32;
                    let mut data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 + r).collect();
                    ring.all_reduce_sum(&mut data).unwrap();
                    ring.all_reduce_sum(&mut data).unwrap(); // sequence numbers advance
                    data
                });
                let w = world as f32;
                let once: Vec<f32> =
                    (0..n).map(|i| i as f32 * 0.5 * w + (0..world).map(|r| r as f32).sum::<f32>()).collect();
                let twice: Vec<f32> = once.iter().map(|v| v * w).collect();
                for got in &results {
                    assert_eq!(got, &results[0], "world {world}, n {n}: ranks disagree");
                    for (g, t) in got.iter().zip(&twice) {
                        assert!((g - t).abs() <= 1e-4 * t.abs().max(1.0), "world {world}, n {n}: {g} vs {t}");
                    }
                }
            }
        }
    }

    #[test]
    fn all_gather_broadcast_and_barrier() {
        let results = on_ring(3, Duration::from_secs(20), |mut ring| {
            let r = ring.rank();
            let gathered = ring.all_gather(&[r as f32, 10.0 + r as f32]).unwrap();
            let mut bytes = if r == 1 { b"config from rank 1".to_vec() } else { Vec::new() };
            ring.broadcast(&mut bytes, 1).unwrap();
            ring.barrier().unwrap();
            (gathered, bytes, ring.next_seq())
        });
        for (gathered, bytes, seq) in results {
            assert_eq!(gathered, [0.0, 10.0, 1.0, 11.0, 2.0, 12.0]);
            assert_eq!(bytes, b"config from rank 1");
            assert_eq!(seq, 3);
        }
    }

    /// A rank that skips one collective makes both ranks report the desync at that sequence
    /// number, instead of hanging or mixing data.
    #[test]
    fn a_skipped_collective_is_a_desync_on_both_ranks() {
        let results = on_ring(2, Duration::from_secs(20), |mut ring| {
            if ring.rank() == 1 {
                ring.skip_operation(2);
            }
            let mut data = vec![1.0f32; 64];
            for _ in 0..4 {
                ring.all_reduce_sum(&mut data)?;
            }
            Ok::<_, CollectiveError>(())
        });
        for (rank, result) in results.into_iter().enumerate() {
            let err = result.expect_err("a desync must be an error").to_string();
            assert!(err.starts_with("desync at seq 2:"), "rank {rank}: {err}");
        }
    }

    /// A rank that stops participating: the other fails within its deadline, naming the
    /// operation, the sequence number and the rank it waited on (no sleeps: the silent rank just
    /// never calls).
    #[test]
    fn a_silent_rank_is_a_timeout_naming_op_seq_and_rank() {
        let (mut rings, _) = local_rings(2, Duration::from_secs(10)).unwrap();
        let silent = rings.pop().unwrap();
        let mut waiting = rings.pop().unwrap();
        waiting.set_timeout(Duration::from_millis(300));
        let started = Instant::now();
        let mut data = vec![0f32; 1 << 16];
        let err = waiting.all_reduce_sum(&mut data).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        assert!(matches!(err, CollectiveError::Timeout { op: Op::AllReduce, seq: 0, peer: 1, .. }), "{err}");
        assert!(err.to_string().contains("all_reduce seq 0: no data from rank 1"), "{err}");
        drop(silent);
    }

    /// Splitting 4 ranks by parity: each half sums only its own members, in the order of the
    /// parent's ranks, and its errors name the parent's ranks.
    #[test]
    fn split_rings_reduce_over_their_members_only() {
        let results = on_ring(4, Duration::from_secs(20), |mut ring| {
            let r = ring.rank();
            let mut half = ring.split_ring((r % 2) as u64).unwrap();
            let mut data = vec![r as f32; 3];
            half.all_reduce_sum(&mut data).unwrap();
            let gathered = half.all_gather(&[r as f32]).unwrap();
            // The parent ring still works after the split.
            let mut all = vec![1.0f32];
            ring.all_reduce_sum(&mut all).unwrap();
            (half.rank(), half.world_size(), data, gathered, all[0], half.names.clone())
        });
        for (r, (sub_rank, size, data, gathered, all, names)) in results.into_iter().enumerate() {
            assert_eq!((sub_rank, size), (r / 2, 2), "rank {r}");
            let members: Vec<f32> = if r % 2 == 0 { vec![0.0, 2.0] } else { vec![1.0, 3.0] };
            assert_eq!(data, vec![members.iter().sum::<f32>(); 3], "rank {r}");
            assert_eq!(gathered, members, "rank {r}");
            assert_eq!(all, 4.0);
            assert_eq!(names, if r % 2 == 0 { [0, 2] } else { [1, 3] });
        }
    }

    #[test]
    fn a_silent_member_of_a_split_ring_is_named_by_its_parent_rank() {
        let results = on_ring(3, Duration::from_secs(20), |mut ring| {
            let r = ring.rank();
            let mut group = ring.split_ring(u64::from(r > 0)).unwrap();
            group.set_timeout(Duration::from_millis(300));
            // Rank 2 never joins the group's all-reduce (but keeps its connections open until
            // the parent's barrier); rank 0 is alone in its group.
            let err = (r == 1).then(|| group.all_reduce_sum(&mut [0f32; 16]).unwrap_err().to_string());
            ring.barrier().unwrap();
            err
        });
        let err = results[1].clone().unwrap();
        assert!(err.contains("all_reduce seq 0: no data from rank 2"), "{err}");
    }

    #[test]
    fn a_closed_peer_is_reported_not_hung_on() {
        let (mut rings, _) = local_rings(2, Duration::from_secs(10)).unwrap();
        drop(rings.pop());
        let mut alone = rings.pop().unwrap();
        let err = alone.all_gather(&[1.0; 8]).unwrap_err();
        assert!(
            matches!(err, CollectiveError::PeerClosed { peer: 1, .. } | CollectiveError::Io { peer: 1, .. }),
            "{err}"
        );
    }
}
