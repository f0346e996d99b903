//! The pure decisions about node caches: a Job's result as a ModelCache status, when a node is due
//! a scrub, and which deployments hear about evictions and corruption.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{CachedModel, ModelCacheStatus, ScrubSummary};
use crate::cache::{CacheReport, Evicted, GcOutcome, PullOutcome, RemovedModel, ScrubOutcome};

/// The result a finished Job wrote to its termination message, by the Job's role.
#[derive(Clone, Debug, PartialEq)]
pub enum JobResult {
    Pull(PullOutcome),
    Gc(GcOutcome),
    Scrub(ScrubOutcome),
}

impl JobResult {
    /// The node cache as the Job left it (`None`: a Job of an older version reports none).
    pub fn cache(&self) -> Option<&CacheReport> {
        match self {
            JobResult::Pull(o) => o.cache.as_ref(),
            JobResult::Gc(o) => o.cache.as_ref(),
            JobResult::Scrub(o) => o.cache.as_ref(),
        }
    }

    /// Models removed because bytes they were built from changed (by a scrub, or a pull's check).
    pub fn removed(&self) -> &[RemovedModel] {
        match self {
            JobResult::Pull(o) => &o.removed,
            JobResult::Scrub(o) => &o.scrub.removed,
            JobResult::Gc(_) => &[],
        }
    }

    pub fn evicted(&self) -> &[Evicted] {
        match self {
            JobResult::Pull(o) => &o.evicted,
            _ => &[],
        }
    }
}

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The ModelCache status after a Job that finished `at` reported `result`; `None` when the result
/// carries no inventory or is older than what the status already shows.
pub fn status_from(previous: &ModelCacheStatus, result: &JobResult, job: &str, at: &Time) -> Option<ModelCacheStatus> {
    if previous.observed_at.as_ref().is_some_and(|seen| seen.0 >= at.0) {
        return None;
    }
    let report = result.cache()?;
    let models: Vec<CachedModel> = report
        .models
        .iter()
        .map(|m| {
            let mut deployments: Vec<String> = m.current.iter().chain(&m.kept).cloned().collect();
            deployments.sort();
            deployments.dedup();
            CachedModel {
                digest: m.digest.clone(),
                size: int(m.size),
                deployments,
                current: m.current.clone(),
                last_used: m.last_used.as_deref().and_then(|t| t.parse().ok()).map(Time),
            }
        })
        .collect();
    let last_scrub = match result {
        JobResult::Scrub(o) => Some(ScrubSummary {
            time: at.clone(),
            blobs_checked: o.scrub.blobs_checked as i64,
            files_checked: o.scrub.files_checked as i64,
            removed: o.scrub.removed.len() as i32,
            corrupt: corrupt_causes(&o.scrub.removed, &o.scrub.corrupt_blobs),
        }),
        _ => previous.last_scrub.clone(),
    };
    Some(ModelCacheStatus {
        capacity: int(report.capacity),
        used: int(report.used),
        free: int(report.free),
        model_count: (models.len() + report.models_omitted) as i32,
        models,
        last_scrub,
        observed_at: Some(at.clone()),
        observed_job: Some(job.to_owned()),
    })
}

fn corrupt_causes(removed: &[RemovedModel], blobs: &[String]) -> Vec<String> {
    let mut causes: Vec<String> = blobs.iter().cloned().chain(removed.iter().map(|r| r.cause.clone())).collect();
    causes.sort();
    causes.dedup();
    causes
}

/// Whether `node`'s cache is due a scrub: it holds models, and the interval has passed since the
/// last scrub (or since the ModelCache appeared: a model just pulled was just verified).
pub fn scrub_due(status: &ModelCacheStatus, created: Option<&Time>, interval: Duration, now: &Time) -> bool {
    if interval.is_zero() || status.model_count == 0 {
        return false;
    }
    let since = status.last_scrub.as_ref().map(|s| &s.time).or(created);
    since.is_none_or(|t| t.0 + interval <= now.0)
}

/// A deployment to tell something, as (namespace/name, warning, reason, message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub deployment: String,
    pub reason: CacheReason,
    pub message: String,
}

/// Event reasons about node caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheReason {
    /// A version the deployment held was removed because its bytes changed (Warning).
    CacheCorrupted,
    /// A kept previous version was evicted to make room (Normal).
    KeptVersionEvicted,
}

impl CacheReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheReason::CacheCorrupted => "CacheCorrupted",
            CacheReason::KeptVersionEvicted => "KeptVersionEvicted",
        }
    }

    pub fn is_warning(self) -> bool {
        self == CacheReason::CacheCorrupted
    }
}

/// What each deployment should hear about `result` on `node`.
pub fn notices(node: &str, result: &JobResult) -> Vec<Notice> {
    let mut out = Vec::new();
    for removed in result.removed() {
        for deployment in removed.current.iter().chain(&removed.kept) {
            out.push(Notice {
                deployment: deployment.clone(),
                reason: CacheReason::CacheCorrupted,
                message: format!(
                    "node {node}: {} no longer matches what was verified; model {} removed from the node's cache and pulled again",
                    removed.cause, removed.digest
                ),
            });
        }
    }
    for evicted in result.evicted() {
        for deployment in &evicted.deployments {
            out.push(Notice {
                deployment: deployment.clone(),
                reason: CacheReason::KeptVersionEvicted,
                message: format!(
                    "node {node}: kept version {} evicted ({} bytes) to make room for a pull",
                    evicted.digest, evicted.bytes
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{ModelUsage, ScrubReport};

    fn at(second: i64) -> Time {
        Time(jiff::Timestamp::from_second(second).unwrap())
    }

    fn report() -> CacheReport {
        CacheReport {
            capacity: 1000,
            used: 600,
            free: 400,
            models: vec![ModelUsage {
                digest: "sha256:a".into(),
                size: 600,
                current: vec!["ns/d".into()],
                kept: vec!["ns/e".into(), "ns/d".into()],
                last_used: Some("2026-01-01T00:00:00Z".into()),
            }],
            models_omitted: 2,
        }
    }

    #[test]
    fn a_newer_result_replaces_the_status_and_an_older_one_does_not() {
        let pull = JobResult::Pull(PullOutcome { cache: Some(report()), ..PullOutcome::new("sha256:a") });
        let status = status_from(&ModelCacheStatus::default(), &pull, "pull-x", &at(100)).unwrap();
        assert_eq!((status.capacity, status.used, status.free, status.model_count), (1000, 600, 400, 3));
        assert_eq!(status.models[0].deployments, ["ns/d", "ns/e"]);
        assert_eq!(status.models[0].current, ["ns/d"]);
        assert_eq!(status.models[0].last_used, Some(at(1_767_225_600)));
        assert_eq!(status.observed_job.as_deref(), Some("pull-x"));
        assert_eq!(status_from(&status, &pull, "pull-y", &at(100)), None, "not newer");
        assert_eq!(status_from(&status, &pull, "pull-y", &at(99)), None, "older");
        let bare = JobResult::Pull(PullOutcome::new("sha256:a"));
        assert_eq!(status_from(&status, &bare, "pull-z", &at(200)), None, "no inventory");
        assert!(status_from(&status, &pull, "pull-y", &at(101)).is_some());
    }

    #[test]
    fn a_scrub_result_sets_last_scrub_and_others_keep_it() {
        let removed = RemovedModel {
            digest: "sha256:m".into(),
            cause: "sha256:b".into(),
            current: vec!["ns/d".into()],
            kept: vec![],
        };
        let scrub = JobResult::Scrub(ScrubOutcome {
            scrub: ScrubReport {
                blobs_checked: 4,
                files_checked: 9,
                corrupt_blobs: vec!["sha256:b".into()],
                removed: vec![removed],
                ..Default::default()
            },
            cache: Some(report()),
        });
        let status = status_from(&ModelCacheStatus::default(), &scrub, "scrub-n", &at(10)).unwrap();
        let last = status.last_scrub.clone().unwrap();
        assert_eq!((last.blobs_checked, last.files_checked, last.removed), (4, 9, 1));
        assert_eq!(last.corrupt, ["sha256:b"]);
        let gc = JobResult::Gc(GcOutcome { cache: Some(report()), ..Default::default() });
        assert_eq!(status_from(&status, &gc, "cleanup", &at(20)).unwrap().last_scrub, Some(last));
    }

    #[test]
    fn scrubs_are_due_per_interval_on_nodes_holding_models() {
        let day = Duration::from_secs(86_400);
        let holding = ModelCacheStatus { model_count: 1, ..Default::default() };
        let scrubbed = |t| ModelCacheStatus {
            last_scrub: Some(ScrubSummary {
                time: at(t),
                blobs_checked: 0,
                files_checked: 0,
                removed: 0,
                corrupt: vec![],
            }),
            ..holding.clone()
        };
        let cases = [
            (holding.clone(), Some(at(0)), day, 86_399, false),
            (holding.clone(), Some(at(0)), day, 86_400, true),
            (holding.clone(), None, day, 0, true),
            (scrubbed(1000), Some(at(0)), day, 86_400, false),
            (scrubbed(1000), Some(at(0)), day, 87_400, true),
            (ModelCacheStatus::default(), Some(at(0)), day, 1_000_000, false),
            (holding.clone(), Some(at(0)), Duration::ZERO, 1_000_000, false),
        ];
        for (status, created, interval, now, due) in cases {
            assert_eq!(scrub_due(&status, created.as_ref(), interval, &at(now)), due, "{status:?} now={now}");
        }
    }

    #[test]
    fn corruption_warns_every_holder_and_eviction_tells_the_keepers() {
        let scrub = JobResult::Scrub(ScrubOutcome {
            scrub: ScrubReport {
                removed: vec![RemovedModel {
                    digest: "sha256:m".into(),
                    cause: "sha256:b".into(),
                    current: vec!["ns/d".into()],
                    kept: vec!["ns/e".into()],
                }],
                ..Default::default()
            },
            cache: None,
        });
        let n = notices("node-1", &scrub);
        assert_eq!(n.iter().map(|n| n.deployment.as_str()).collect::<Vec<_>>(), ["ns/d", "ns/e"]);
        assert!(n.iter().all(|n| n.reason == CacheReason::CacheCorrupted && n.reason.is_warning()));
        assert!(n[0].message.contains("node-1") && n[0].message.contains("sha256:b"), "{}", n[0].message);
        let pull = JobResult::Pull(PullOutcome {
            evicted: vec![
                Evicted { digest: "sha256:k".into(), bytes: 5, deployments: vec!["ns/d".into()] },
                Evicted { digest: "sha256:o".into(), bytes: 7, deployments: vec![] },
            ],
            ..PullOutcome::new("sha256:x")
        });
        let n = notices("node-2", &pull);
        assert_eq!(n.len(), 1);
        assert_eq!((n[0].deployment.as_str(), n[0].reason), ("ns/d", CacheReason::KeptVersionEvicted));
        assert!(!n[0].reason.is_warning());
        assert!(notices("n", &JobResult::Gc(GcOutcome::default())).is_empty());
    }
}
