//! The fault-injection signals reach the process on a machine without procps: each case runs
//! this test executable again as a child (with `PATH` set to an empty directory, so no `kill`
//! program can be found) whose `child_sends_the_signal_to_itself` sends the signal, and checks
//! how the child ended.

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};

const CHILD_ENV: &str = "VOXBRIDGE_FAULT_SIGNAL_CHILD";

/// Does nothing in the test run itself; in a child started by `spawn_child`, sends the signal
/// named by `CHILD_ENV` to the process.
#[test]
fn child_sends_the_signal_to_itself() {
    let Ok(signal) = std::env::var(CHILD_ENV) else { return };
    if signal == "KILL" {
        let Err(err) = voxbridge_checkpoint::fault::kill_self("fault_signals test");
        panic!("kill_self returned: {err}");
    }
    voxbridge_checkpoint::fault::signal_self(&signal, "fault_signals test").expect("signal_self");
    // Still alive: the signal did not arrive, or (STOP) the process was continued.
    println!("child: still running after SIG{signal}");
}

fn spawn_child(signal: &str, empty_path: &std::path::Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_sends_the_signal_to_itself", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, signal)
        .env("PATH", empty_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn ended_by(signal: &str) -> (Option<i32>, String) {
    let empty = tempfile::tempdir().unwrap();
    let out = spawn_child(signal, empty.path()).wait_with_output().unwrap();
    let text = format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.signal(), text)
}

#[test]
fn kill_self_dies_by_sigkill_without_a_kill_program() {
    let (signal, text) = ended_by("KILL");
    assert_eq!(signal, Some(9), "expected death by SIGKILL: {text}");
}

#[test]
fn a_term_drill_delivers_sigterm_without_a_kill_program() {
    // No handler in the child: SIGTERM's default action ends it.
    let (signal, text) = ended_by("TERM");
    assert_eq!(signal, Some(15), "expected death by SIGTERM: {text}");
}

#[test]
fn a_stop_drill_stops_the_process_without_a_kill_program() {
    use nix::sys::signal::{Signal, kill};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::Pid;

    let empty = tempfile::tempdir().unwrap();
    let mut child = spawn_child("STOP", empty.path());
    let pid = Pid::from_raw(child.id() as i32);
    // Returns once the child stops or ends.
    let status = waitpid(pid, Some(WaitPidFlag::WUNTRACED)).unwrap();
    let stopped = status == WaitStatus::Stopped(pid, Signal::SIGSTOP);
    if stopped {
        kill(pid, Signal::SIGKILL).unwrap();
    }
    // Reaps the killed child (an already reaped one makes this an ignored ECHILD error).
    let _ = child.wait();
    assert!(stopped, "expected the child to stop by SIGSTOP, it ended: {status:?}");
}

#[test]
fn an_unknown_signal_is_an_error() {
    let err = voxbridge_checkpoint::fault::signal_self("NOSUCH", "fault_signals test").unwrap_err();
    assert!(err.to_string().contains("NOSUCH"), "{err}");
}
