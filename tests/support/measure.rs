//! The operator binary run as a child and measured: its exit code, stderr, wall time and peak
//! resident memory (from wait4's rusage, this child's own).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Run {
    pub code: i32,
    pub stderr: String,
    pub peak_rss: u64,
    pub elapsed: Duration,
}

/// Runs the operator binary and reaps it with wait4, whose rusage is this child's own peak RSS.
#[allow(clippy::zombie_processes, reason = "reaped by wait4, which std's wait cannot replace")]
pub fn run_measured(args: &[&str]) -> Run {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_modelpack-operator"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the operator");
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut pipe, &mut text).unwrap();
        text
    });
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    let pid = child.id() as libc::pid_t;
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid, "wait4");
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    Run { code, stderr: reader.join().unwrap(), peak_rss: usage.ru_maxrss as u64 * 1024, elapsed: started.elapsed() }
}
