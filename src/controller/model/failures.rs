//! The one table that says how a failure shows in status (reason, whether retrying can fix it) and
//! when the Model is tried again.

use std::time::Duration;

use super::summary::Failure;
use crate::api::conditions::Reason;
use crate::controller::Error;
use crate::registry;

/// How `error` shows. `credential_source` names where the credentials came from (never their
/// contents) for an authentication failure.
pub fn failure(error: &Error, credential_source: Option<&str>, every: Duration) -> Failure {
    let retry_soon = every.min(Duration::from_secs(30));
    let message = error.to_string();
    let shown = |reason, stalled, requeue| Failure { reason, message: message.clone(), stalled, requeue };
    match error {
        Error::Verify(crate::verify::Error::Registry(r)) => {
            let f = registry_failure(r, credential_source, every, retry_soon);
            Failure { message: format!("fetching signatures: {}", f.message), ..f }
        }
        Error::Verify(crate::verify::Error::Rejected { .. }) => shown(Reason::SignatureRejected, true, every),
        Error::Verify(crate::verify::Error::InvalidKey(_) | crate::verify::Error::InvalidTrust(_)) => {
            shown(Reason::InvalidTrust, true, every)
        }
        Error::Registry(r) => registry_failure(r, credential_source, every, retry_soon),
        Error::InvalidSecret { .. } => shown(Reason::InvalidSecret, true, every),
        Error::InvalidSpec(_) => shown(Reason::InvalidReference, true, every),
        Error::SecretNotFound { .. } => shown(Reason::SecretNotFound, false, every),
        Error::ServiceAccountNotFound { .. } => shown(Reason::ServiceAccountNotFound, false, every),
        Error::Kube(_) | Error::Serialize(_) => shown(Reason::ReconcileError, false, retry_soon),
    }
}

fn registry_failure(
    error: &registry::Error,
    credential_source: Option<&str>,
    every: Duration,
    retry_soon: Duration,
) -> Failure {
    use registry::Error as R;
    let message = error.to_string();
    let shown = |reason, stalled, requeue| Failure { reason, message: message.clone(), stalled, requeue };
    match error {
        R::Unauthorized { registry, .. } => {
            let from = credential_source
                .map_or_else(|| "anonymous access".to_owned(), |s| format!("the credentials from {s}"));
            let message = format!("registry {registry} refused {from}");
            Failure { reason: Reason::AuthenticationFailed, message, stalled: false, requeue: every }
        }
        R::Unavailable { .. } => shown(Reason::RegistryUnavailable, false, retry_soon),
        R::Timeout { .. } => shown(Reason::RegistryTimeout, false, retry_soon),
        R::Protocol { .. } => shown(Reason::RegistryError, false, retry_soon),
        R::DigestMismatch { .. } => shown(Reason::DigestMismatch, false, retry_soon),
        R::NotFound { .. } => shown(Reason::ArtifactNotFound, false, every),
        R::NoMatchingTag { .. } => shown(Reason::NoMatchingTag, false, every),
        R::ModelPack(crate::modelpack::Error::NotAModelPack { .. }) => shown(Reason::NotAModelPack, true, every),
        R::ModelPack(_) => shown(Reason::InvalidModelPack, true, every),
        R::TooLarge { .. } => shown(Reason::ArtifactTooLarge, true, every),
        R::Credentials { .. } => shown(Reason::InvalidSecret, true, every),
        R::InvalidCa(_) => shown(Reason::InvalidCA, true, every),
        R::TokenRealm { .. } => shown(Reason::InvalidTokenRealm, true, every),
        R::ForbiddenAddress { .. } => shown(Reason::ForbiddenAddress, true, every),
        R::InvalidReference { .. } | R::InvalidSemver { .. } | R::InvalidFilter { .. } | R::InvalidMirror { .. } => {
            shown(Reason::InvalidReference, true, every)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_reasons_and_never_leak_secrets() {
        let every = Duration::from_secs(300);
        let unauthorized =
            Error::Registry(registry::Error::Unauthorized { registry: "r.example".into(), detail: "401".into() });
        let f = failure(&unauthorized, Some("secret ml/creds"), every);
        assert_eq!(f.reason, Reason::AuthenticationFailed);
        assert!(f.message.contains("secret ml/creds"));
        assert!(!f.stalled);
        let not_a_modelpack = registry::Error::ModelPack(crate::modelpack::Error::NotAModelPack { found: "x".into() });
        let f = failure(&Error::Registry(not_a_modelpack), None, every);
        assert_eq!((f.reason, f.stalled), (Reason::NotAModelPack, true));
        let unavailable = registry::Error::Unavailable { registry: "r".into(), detail: "refused".into() };
        let f = failure(&Error::Registry(unavailable), None, every);
        assert_eq!((f.reason, f.requeue), (Reason::RegistryUnavailable, Duration::from_secs(30)));
        let too_large = registry::Error::TooLarge { what: "tag list of r/m".into(), limit: 4 << 20 };
        let f = failure(&Error::Registry(too_large), None, every);
        assert_eq!((f.reason, f.stalled), (Reason::ArtifactTooLarge, true));
        let too_large = registry::Error::TooLarge { what: "referrers of r/m@d".into(), limit: 4 << 20 };
        let f = failure(&Error::Verify(crate::verify::Error::Registry(too_large)), None, every);
        assert_eq!((f.reason, f.stalled), (Reason::ArtifactTooLarge, true));
        assert!(f.message.starts_with("fetching signatures: "), "{}", f.message);
        let realm = registry::Error::TokenRealm { registry: "r".into(), realm: "http://a".into(), detail: "x".into() };
        let f = failure(&Error::Registry(realm), None, every);
        assert_eq!((f.reason, f.stalled), (Reason::InvalidTokenRealm, true));
        let forbidden = registry::Error::ForbiddenAddress { registry: "r".into(), detail: "x".into() };
        let f = failure(&Error::Registry(forbidden), None, every);
        assert_eq!((f.reason, f.stalled), (Reason::ForbiddenAddress, true));
        let f = failure(&Error::SecretNotFound { name: "ml/creds".into() }, None, every);
        assert_eq!((f.reason, f.requeue), (Reason::SecretNotFound, every));
    }
}
