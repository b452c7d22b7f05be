//! `voxbridge-nccl-check`: NCCL on one GPU, one rank, for `scripts/gpu-check.sh` (feature
//! `nccl`). Each check prints one JSON line (`{"check": …, "ok": …, …}`) on stdout.
//!
//! - `allreduce [MIB] [ITERS]`: the raw-pointer all-reduce and all-gather of [`NcclComm`]
//!   (results checked element by element, timed) and the host-staged [`NcclCollective`] path
//!   (its persistent staging buffers reused across calls).
//! - `deadline`: the watchdog on a real stream — the communicator's stream is blocked with
//!   `cuStreamWaitValue32` on a flag nobody sets, so the all-reduce behind it cannot complete;
//!   the call must fail with `DeviceTimeout` within its 1 s deadline plus polling, the
//!   communicator must be aborted and the next call must fail at once. The process then exits
//!   without releasing the stream (the aborted collective must never run).
//! - `stall`: a communicator of two ranks whose second rank never comes: `ncclCommInitRank`
//!   blocks, and the stall guard must abort the process, naming the call and the rank, within
//!   2 s + its grace (the script checks the exit status and stderr).
//!
//! Arguments: the check, then its numbers; `--device N` (default 0) anywhere.

#![allow(unsafe_code)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use cudarc::driver::{DevicePtr, DevicePtrMut, sys as cu};
use voxbridge_collective::nccl::{NcclCollective, NcclComm};
use voxbridge_collective::{Collective, CollectiveError, OpLabel, Result, Solo, local_rings};

/// One JSON line: `fields` are `(key, already-encoded JSON value)`.
fn report(check: &str, ok: bool, fields: &[(&str, String)]) {
    let mut line = format!("{{\"check\":{},\"ok\":{ok}", json_str(check));
    for (k, v) in fields {
        line.push_str(&format!(",{}:{v}", json_str(k)));
    }
    line.push('}');
    println!("{line}");
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn num(x: f64) -> String {
    if x.is_finite() { format!("{x:.6}") } else { "null".into() }
}

fn comm_on(device: usize, timeout: Duration) -> Result<NcclComm> {
    let (mut rings, _) = local_rings(1, timeout)?;
    let mut ring = rings.pop().ok_or_else(|| CollectiveError::Setup("no ring".into()))?;
    NcclComm::new(&mut ring, device, timeout)
}

fn cuda<T>(what: &str, r: std::result::Result<T, cudarc::driver::DriverError>) -> Result<T> {
    r.map_err(|e| CollectiveError::Backend(format!("{what}: {e:?}")))
}

/// A value pattern that no sum of one rank can fake (distinct, exact in f32).
fn pattern(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i % 4099) as f32) * 0.25 - 300.0).collect()
}

fn median(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms.get(ms.len() / 2).copied().unwrap_or(f64::NAN)
}

fn check_allreduce(device: usize, mib: usize, iters: usize) -> Result<Vec<(&'static str, String)>> {
    let n = mib.max(1) << 18; // f32 values in `mib` MiB
    let t0 = Instant::now();
    let mut comm = comm_on(device, Duration::from_secs(60))?;
    let init_ms = t0.elapsed().as_secs_f64() * 1e3;
    let stream = comm.stream().clone();
    let host = pattern(n);
    let mut buf = cuda("host to device", stream.clone_htod(&host))?;
    let mut out = cuda("device allocation", stream.alloc_zeros::<f32>(n))?;
    cuda("synchronize", stream.synchronize())?;
    let ptr = buf.device_ptr_mut(&stream).0;
    let out_ptr = out.device_ptr_mut(&stream).0;
    let label = OpLabel::at_step(0, "gpu-check");
    let mut times = Vec::new();
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        // SAFETY: `ptr` holds `n` f32 values of this context, written and synchronised above.
        unsafe { comm.all_reduce_sum_f32(ptr, n, &label)? };
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let back = cuda("device to host", stream.clone_dtoh(&buf))?;
    let reduce_bad = back.iter().zip(&host).filter(|(a, b)| a != b).count();
    // SAFETY: `ptr` holds `n` and `out_ptr` `n` = world·n values (one rank), disjoint.
    unsafe { comm.all_gather_f32(ptr, out_ptr, n, &label)? };
    let gathered = cuda("device to host", stream.clone_dtoh(&out))?;
    let gather_bad = gathered.iter().zip(&host).filter(|(a, b)| a != b).count();
    let device_ms = median(times);

    // Host-staged path: two calls of each reuse the staging buffers.
    let (mut rings, _) = local_rings(1, Duration::from_secs(60))?;
    let ring = rings.pop().ok_or_else(|| CollectiveError::Setup("no ring".into()))?;
    let mut staged = NcclCollective::with_timeout(ring, device, Duration::from_secs(60))?;
    let mut staged_times = Vec::new();
    let mut staged_bad = 0;
    for _ in 0..3 {
        let mut values = host.clone();
        let t = Instant::now();
        staged.all_reduce_sum(&mut values)?;
        staged_times.push(t.elapsed().as_secs_f64() * 1e3);
        staged_bad += values.iter().zip(&host).filter(|(a, b)| a != b).count();
        staged_bad += staged.all_gather(&host[..1024])?.iter().zip(&host).filter(|(a, b)| a != b).count();
    }
    let staged_ms = median(staged_times);
    let ok = reduce_bad + gather_bad + staged_bad == 0;
    let bytes = (n * 4) as f64;
    let fields = vec![
        ("ok_values", ok.to_string()),
        ("mib", mib.to_string()),
        ("iters", iters.to_string()),
        ("init_ms", num(init_ms)),
        ("device_allreduce_ms", num(device_ms)),
        ("device_allreduce_gbps", num(bytes / (device_ms * 1e-3) / 1e9)),
        ("host_staged_allreduce_ms", num(staged_ms)),
        ("mismatches_allreduce", reduce_bad.to_string()),
        ("mismatches_allgather", gather_bad.to_string()),
        ("mismatches_host_staged", staged_bad.to_string()),
    ];
    Ok(fields)
}

/// Returns only through `std::process::exit`, so the aborted collective's stream is never
/// released (and nothing is dropped that would wait on it).
fn check_deadline(device: usize) -> ! {
    let outcome = (|| -> Result<Vec<(&'static str, String)>> {
        let timeout = Duration::from_secs(1);
        let mut comm = comm_on(device, timeout)?;
        let context = comm.context().clone();
        let side = cuda("side stream", context.new_stream())?;
        let flag = cuda("flag allocation", side.alloc_zeros::<u32>(1))?;
        let mut data = cuda("data allocation", side.alloc_zeros::<f32>(1024))?;
        cuda("synchronize", side.synchronize())?;
        let (flag_ptr, data_ptr) = (flag.device_ptr(&side).0, data.device_ptr_mut(&side).0);
        cuda("bind", context.bind_to_thread())?;
        // SAFETY: a wait on a valid device word of this context, on the communicator's stream.
        let rc = unsafe {
            cu::cuStreamWaitValue32_v2(
                comm.stream().cu_stream(),
                flag_ptr,
                1,
                cu::CUstreamWaitValue_flags_enum::CU_STREAM_WAIT_VALUE_EQ as u32,
            )
        };
        if rc != cu::cudaError_enum::CUDA_SUCCESS {
            return Ok(vec![("skipped", json_str(&format!("cuStreamWaitValue32 unsupported here: {rc:?}")))]);
        }
        let label = OpLabel::at_step(7, "gpu-check deadline");
        let t = Instant::now();
        // SAFETY: 1024 f32 values of this context; the stream is blocked, so nothing runs.
        let first = unsafe { comm.all_reduce_sum_f32(data_ptr, 1024, &label) };
        let waited = t.elapsed().as_secs_f64();
        let t = Instant::now();
        // SAFETY: as above; the communicator is dead, so this must not enqueue anything.
        let second = unsafe { comm.all_reduce_sum_f32(data_ptr, 1024, &label) };
        let second_ms = t.elapsed().as_secs_f64() * 1e3;
        let timed_out = matches!(first, Err(CollectiveError::DeviceTimeout { rank: 0, .. }));
        let refused = matches!(second, Err(CollectiveError::DeviceFailed { .. }));
        let message = first.err().map(|e| e.to_string()).unwrap_or_else(|| "no error".into());
        let ok = timed_out && refused && waited < 3.0 && second_ms < 100.0 && comm.dead().is_some();
        std::mem::forget((comm, flag, data, side));
        Ok(vec![
            ("ok_values", ok.to_string()),
            ("waited_s", num(waited)),
            ("second_call_ms", num(second_ms)),
            ("message", json_str(&message)),
            ("second_message", json_str(&second.err().map(|e| e.to_string()).unwrap_or_default())),
        ])
    })();
    finish("deadline", outcome)
}

/// A control ring of two ranks of which this is rank 0 and the other never answers (the
/// unique id "broadcast" keeps rank 0's own).
#[derive(Debug, Default)]
struct Lonely(Solo);

impl Collective for Lonely {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        2
    }
    fn all_reduce_sum(&mut self, d: &mut [f32]) -> Result<()> {
        self.0.all_reduce_sum(d)
    }
    fn all_gather(&mut self, l: &[f32]) -> Result<Vec<f32>> {
        self.0.all_gather(l)
    }
    fn broadcast(&mut self, d: &mut Vec<u8>, root: usize) -> Result<()> {
        self.0.broadcast(d, root)
    }
    fn barrier(&mut self) -> Result<()> {
        self.0.barrier()
    }
    fn set_timeout(&mut self, _: Duration) {}
    fn next_seq(&self) -> u64 {
        self.0.next_seq()
    }
    fn split(&mut self, c: u64) -> Result<Box<dyn Collective>> {
        self.0.split(c)
    }
}

fn check_stall(device: usize) -> ! {
    eprintln!("stall check: expecting the stall guard to abort this process naming ncclCommInitRank");
    let t = Instant::now();
    let outcome = NcclComm::new(&mut Lonely::default(), device, Duration::from_secs(2)).map(|comm| {
        std::mem::forget(comm);
        vec![("ok_values", "false".to_string()), ("message", json_str("ncclCommInitRank returned without rank 1"))]
    });
    // Reached only when NCCL itself gave up (an error, not a hang): also no silent hang.
    let outcome = outcome.map(|mut f| {
        f.push(("seconds", num(t.elapsed().as_secs_f64())));
        f
    });
    finish("stall", outcome)
}

fn finish(check: &str, outcome: Result<Vec<(&'static str, String)>>) -> ! {
    let code = match outcome {
        Ok(fields) => {
            let ok = fields.iter().any(|(k, v)| *k == "skipped" || (*k == "ok_values" && v == "true"));
            report(check, ok, &fields);
            if ok { 0 } else { 1 }
        }
        Err(e) => {
            report(check, false, &[("error", json_str(&e.to_string()))]);
            1
        }
    };
    std::process::exit(code)
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut device = 0;
    if let Some(at) = args.iter().position(|a| a == "--device") {
        match args.get(at + 1).and_then(|d| d.parse().ok()) {
            Some(d) => device = d,
            None => {
                eprintln!("--device needs a CUDA device number");
                return ExitCode::from(2);
            }
        }
        args.drain(at..at + 2);
    }
    let number = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("allreduce") => finish("allreduce", check_allreduce(device, number(1, 64), number(2, 20))),
        Some("deadline") => check_deadline(device),
        Some("stall") => check_stall(device),
        _ => {
            eprintln!("usage: voxbridge-nccl-check allreduce [MIB] [ITERS] | deadline | stall  [--device N]");
            ExitCode::from(2)
        }
    }
}
