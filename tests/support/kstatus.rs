//! The verdict of sigs.k8s.io/cli-utils' kstatus (what Flux, kpt and Config Sync use) on an object,
//! from the bed's `kstatus` tool (e2e/tools/kstatus): the oracle every status claim is checked with.

use std::io::Write;
use std::process::{Command, Stdio};

use serde::Deserialize;

use super::Bed;

/// kstatus's status values (cli-utils `status.Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum KStatus {
    Current,
    InProgress,
    Failed,
    Terminating,
    NotFound,
    Unknown,
}

/// One line of the tool's output.
#[derive(Clone, Debug, Deserialize)]
pub struct Verdict {
    pub kind: String,
    pub name: String,
    pub status: KStatus,
    pub message: String,
}

/// The library's verdict on each object of `objects` (JSON objects with apiVersion and kind).
pub fn verdicts(objects: &[serde_json::Value]) -> Vec<Verdict> {
    let tool = Bed::get().tool("kstatus");
    let mut child = Command::new(&tool)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e} (e2e/tools/build builds it)", tool.display()));
    let mut stdin = child.stdin.take().expect("stdin");
    for o in objects {
        serde_json::to_writer(&mut stdin, o).expect("writing an object");
        stdin.write_all(b"\n").expect("writing an object");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("kstatus output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kstatus failed ({}): {stderr}", out.status);
    let lines = String::from_utf8_lossy(&out.stdout);
    let verdicts: Vec<Verdict> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("kstatus printed {l:?}: {e}")))
        .collect();
    assert_eq!(verdicts.len(), objects.len(), "one verdict per object: {lines}");
    verdicts
}

/// The library's verdict on a typed object as the API server serves it.
pub fn of<K: serde::Serialize + kube::Resource<DynamicType = ()>>(obj: &K) -> KStatus {
    verdict(obj).status
}

/// [`of`] with the library's message.
pub fn verdict<K: serde::Serialize + kube::Resource<DynamicType = ()>>(obj: &K) -> Verdict {
    let mut value = serde_json::to_value(obj).expect("object JSON");
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    verdicts(&[value]).remove(0)
}
