//! What the pull Jobs reported of the files in a version's archive layers, kept once in the
//! deployment's status (not per node: every node holds the same bytes), and the warning an unsafe
//! pickle among them raises. Report only: nothing is blocked (see docs/modeldeployment.md,
//! "What the archives held").

use super::note::Note;
use crate::api::conditions::Reason;
use crate::api::{ArchiveContentsStatus, short_digest};
use crate::modelpack::contents::ArchiveContents;

/// The archive contents status should carry: the desired version's, else the deployed one's.
/// What status holds for one of them is kept (a Job's result is read once: no flapping between
/// nodes) unless a node reports worse; otherwise the worst report of a finished Job. The worst,
/// so that no node can hide what another found.
pub fn decide<'a>(
    previous: Option<&ArchiveContentsStatus>,
    desired: Option<&str>,
    deployed: Option<&str>,
    reported: impl IntoIterator<Item = (&'a str, &'a ArchiveContents)>,
) -> Option<ArchiveContentsStatus> {
    let reported: Vec<(&str, &ArchiveContents)> = reported.into_iter().collect();
    for digest in [desired, deployed].into_iter().flatten() {
        let worst = reported.iter().filter(|(d, _)| *d == digest).map(|(_, c)| *c).max_by_key(|c| severity(c));
        let kept = previous.filter(|p| p.digest == digest);
        match (kept, worst) {
            (Some(kept), Some(worse)) if severity(worse) > severity(&kept.contents) => {}
            (Some(kept), _) => return Some(kept.clone()),
            (None, None) => continue,
            (None, Some(_)) => {}
        }
        let contents = worst.map(|c| c.clone().within(crate::cache::TERMINATION_MESSAGE_LIMIT))?;
        return Some(ArchiveContentsStatus { digest: digest.to_owned(), contents });
    }
    None
}

/// How alarming a report is: an unsafe pickle, then the worst verdict.
fn severity(c: &ArchiveContents) -> (bool, Option<crate::modelpack::contents::Verdict>) {
    (c.weights.is_unsafe, c.weights.pickle)
}

/// Longest Warning note: the Events API refuses notes over 1 KiB, and a refused event says nothing.
const MAX_NOTE: usize = 900;

/// A Warning when status first carries a version whose archives hold an unsafe pickle.
pub fn warning(previous: Option<&ArchiveContentsStatus>, next: Option<&ArchiveContentsStatus>) -> Option<Note> {
    let next = next.filter(|n| n.contents.weights.is_unsafe)?;
    if previous.is_some_and(|p| p.digest == next.digest && p.contents.weights.is_unsafe) {
        return None;
    }
    let named: Vec<String> = next
        .contents
        .unsafe_files()
        .take(3)
        .map(|f| {
            let imports: Vec<&str> =
                f.contents.pickle.iter().flat_map(|p| p.imports.iter().take(4)).map(String::as_str).collect();
            format!("{} (imports {})", crate::modelpack::contents::clip(&f.path), imports.join(" "))
        })
        .collect();
    let which = if named.is_empty() { "a file left out of the report".to_owned() } else { named.join(", ") };
    let message = format!(
        "{}: an archive layer holds a pickle importing a denied callable: {which}; loading it runs that code (reported only: the nodes hold it)",
        short_digest(&next.digest)
    );
    let message = match message.char_indices().nth(MAX_NOTE) {
        Some((at, _)) => format!("{}…", &message[..at]),
        None => message,
    };
    Some(Note { warning: true, reason: Reason::UnsafeArchivePickle, message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modelpack::contents::{ArchiveFile, Contents, FileContents, Format, PickleReport, Verdict};

    fn report(unsafe_pickle: bool) -> ArchiveContents {
        let mut c = Contents::of(Format::Pickle);
        let verdict = if unsafe_pickle { Verdict::Unsafe } else { Verdict::Safe };
        c.pickle = Some(PickleReport { verdict, imports: vec!["os.system".into()], reasons: Vec::new() });
        let file = FileContents { path: "w/evil.pkl".into(), contents: c };
        ArchiveContents::sum(vec![ArchiveFile { weight_layer: true, file }], 0, 0)
    }

    fn status(digest: &str, unsafe_pickle: bool) -> ArchiveContentsStatus {
        ArchiveContentsStatus { digest: digest.into(), contents: report(unsafe_pickle) }
    }

    #[test]
    fn the_desired_versions_report_wins_and_what_status_holds_is_kept() {
        let (bad, good) = (report(true), report(false));
        // Nothing reported: nothing, even with an old status of another version.
        assert_eq!(decide(Some(&status("sha256:old", false)), Some("sha256:d"), None, []), None);
        // The desired version's first report.
        let got = decide(None, Some("sha256:d"), Some("sha256:p"), [("sha256:p", &good), ("sha256:d", &bad)]);
        assert_eq!(got, Some(status("sha256:d", true)));
        // Kept as it is although another node reports differently (no flapping, no write).
        let kept = decide(Some(&status("sha256:d", true)), Some("sha256:d"), None, [("sha256:d", &good)]);
        assert_eq!(kept, Some(status("sha256:d", true)));
        // While the desired version has no report, the deployed one's stays.
        let deployed = decide(Some(&status("sha256:p", false)), Some("sha256:d"), Some("sha256:p"), []);
        assert_eq!(deployed, Some(status("sha256:p", false)));
        // And a report of the desired version replaces it.
        let replaced =
            decide(Some(&status("sha256:p", false)), Some("sha256:d"), Some("sha256:p"), [("sha256:d", &bad)]);
        assert_eq!(replaced, Some(status("sha256:d", true)));
    }

    #[test]
    fn an_unsafe_pickle_warns_once_per_version() {
        let next = status(&format!("sha256:{}", "a".repeat(64)), true);
        let note = warning(None, Some(&next)).expect("a warning");
        assert!(note.warning);
        assert_eq!(note.reason, Reason::UnsafeArchivePickle);
        assert!(note.message.contains("w/evil.pkl (imports os.system)"), "{}", note.message);
        assert_eq!(warning(Some(&next), Some(&next)), None, "not again");
        assert_eq!(warning(None, Some(&status("sha256:d", false))), None, "a safe archive");
        let before = status("sha256:other", true);
        assert!(warning(Some(&before), Some(&next)).is_some(), "a new version warns again");
    }

    /// Found in review: the first node to report decided for good, so one node (or a hostile one
    /// named first) could hide what another found; a long path or import list made the Warning
    /// longer than the Events API takes, and it was dropped.
    #[test]
    fn no_node_hides_an_unsafe_report_and_the_warning_stays_short() {
        let (bad, good) = (report(true), report(false));
        let got = decide(None, Some("sha256:d"), None, [("sha256:d", &good), ("sha256:d", &bad)]);
        assert_eq!(got, Some(status("sha256:d", true)), "the worst report");
        let kept_safe = status("sha256:d", false);
        let upgraded = decide(Some(&kept_safe), Some("sha256:d"), None, [("sha256:d", &bad)]);
        assert_eq!(upgraded, Some(status("sha256:d", true)), "a worse report replaces a kept one");
        assert!(warning(Some(&kept_safe), upgraded.as_ref()).is_some(), "and warns");

        let mut long = report(true);
        for f in &mut long.files {
            f.path = format!("w/{}/evil.pkl", "d".repeat(5000));
            f.contents.pickle.as_mut().unwrap().imports =
                (0..64).map(|i| format!("m{i}.{}", "x".repeat(250))).collect();
        }
        let long = long.within(crate::cache::TERMINATION_MESSAGE_LIMIT);
        assert!(serde_json::to_vec(&long).unwrap().len() <= crate::cache::TERMINATION_MESSAGE_LIMIT);
        let note = warning(None, Some(&ArchiveContentsStatus { digest: "sha256:d".into(), contents: long })).unwrap();
        assert!(note.message.len() <= 1024, "{} bytes", note.message.len());
    }
}
