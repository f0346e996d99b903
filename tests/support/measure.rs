//! The operator binary run as a child and measured: its exit code, stderr, wall time and peak
//! resident memory.
//!
//! The peak comes from GNU time, which forks the operator from its own small process. Measured from
//! this process instead (wait4's rusage), the peak would include the test binary itself: Linux keeps
//! the highest RSS across exec, and the child starts as a (v)fork of its parent, so a large test
//! binary (tests/bed holds every bed test) would be counted as the operator's memory.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Run {
    pub code: i32,
    pub stderr: String,
    pub peak_rss: u64,
    pub elapsed: Duration,
}

/// Runs the operator binary under `/usr/bin/time`, which writes the peak RSS (KiB) to a file of its
/// own so that stderr stays the operator's.
pub fn run_measured(args: &[&str]) -> Run {
    let report = tempfile::NamedTempFile::new().expect("a file for time's report");
    let started = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(report.path())
        .arg(env!("CARGO_BIN_EXE_modelpack-operator"))
        .args(args)
        .stdout(Stdio::null())
        .output()
        .expect("running the operator under /usr/bin/time");
    let elapsed = started.elapsed();
    let text = std::fs::read_to_string(report.path()).expect("time's report");
    // A child killed by a signal makes time write "Command terminated by signal N" first.
    let kib: u64 =
        text.lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("time wrote {text:?}"));
    Run {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        peak_rss: kib * 1024,
        elapsed,
    }
}
