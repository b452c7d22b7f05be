//! What the coordinator and its workers say to each other, shared by both sides so a worker
//! needs nothing of the coordinator's event loop: the messages, one JSON object per line over
//! the worker's TCP connection ([`encode`], [`decode`]), and the address file a coordinator
//! started under SLURM publishes for its workers ([`address_file`]).

pub mod address_file;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Worker → coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromWorker {
    /// First message: the generation the worker was started for, its pid, and the address its
    /// collective listens on.
    Join { generation: u32, pid: u32, ring_addr: String },
    /// Periodic, while alive; `steps` done so far.
    Heartbeat { steps: u64 },
    /// Training finished (rank 0 also wrote the run directory).
    Done,
    /// Training stopped on request (SIGTERM: preemption, the time limit) after every rank
    /// committed the checkpoint of `steps_done` steps; a resubmitted job resumes from it.
    Stopped { steps_done: u64 },
    /// Training failed; the worker exits non-zero after sending this.
    Failed { error: String },
}

/// Coordinator → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToWorker {
    /// Every worker joined: this worker's rank, and every rank's collective address in rank order.
    Start { rank: usize, world: usize, generation: u32, ring_addrs: Vec<String> },
}

/// One line of JSON.
pub fn encode<T: Serialize>(message: &T) -> String {
    let mut line = serde_json::to_string(message).expect("protocol messages serialise");
    line.push('\n');
    line
}

/// The message a line holds (its newline, if any, is ignored).
pub fn decode<T: DeserializeOwned>(line: &str) -> serde_json::Result<T> {
    serde_json::from_str(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_single_json_lines() {
        let join = FromWorker::Join { generation: 2, pid: 7, ring_addr: "127.0.0.1:5".into() };
        let line = encode(&join);
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        assert_eq!(serde_json::from_str::<FromWorker>(&line).unwrap(), join);
        let start = ToWorker::Start { rank: 1, world: 2, generation: 0, ring_addrs: vec!["a".into(), "b".into()] };
        assert_eq!(serde_json::from_str::<ToWorker>(&encode(&start)).unwrap(), start);
    }

    #[test]
    fn decode_reads_what_encode_writes() {
        let stopped = FromWorker::Stopped { steps_done: 12 };
        assert_eq!(decode::<FromWorker>(&encode(&stopped)).unwrap(), stopped);
        assert!(decode::<ToWorker>("{\"start\":{}}").is_err());
    }
}
