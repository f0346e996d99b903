//! The "authentic timestamp" validation of the Notary Project (trust store and trust policy
//! specification, "Timestamp Countersignature Verification details"; signing and verification
//! workflow, "Validate Authentic Timestamp"): when the signing time must be proven by an RFC 3161
//! countersignature from a TSA of the policy's `tsa` trust stores, and when the signing chain must
//! simply be valid now.

use super::envelope::{Envelope, Scheme};
use super::policy::{Policy, VerifyTimestamp};
use super::x509::Cert;
use super::{TrustStores, rejected};
use crate::verify::timestamp::{self, Timestamp};
use crate::verify::{Error, Rejection};

/// What the validation found: the verified timestamp, or why none was looked at (said in the
/// outcome when the envelope carries one, so that an unchecked token is never implied checked).
pub enum Outcome {
    Verified(Timestamp),
    NotVerified(&'static str),
}

/// The authentic-timestamp validation of one signature whose `chain` passed integrity.
pub fn authentic_timestamp(
    envelope: &Envelope,
    chain: &[Cert],
    policy: &Policy,
    stores: &TrustStores,
    now: i64,
) -> Result<Outcome, Error> {
    if envelope.scheme == Scheme::SigningAuthority {
        // The signing authority vouches for the time: the chain must have been valid then.
        let at = envelope.authentic_signing_time.unwrap_or_default();
        if let Some(cert) = chain.iter().find(|c| !c.valid_at(at)) {
            let detail = format!("certificate {} was not valid at the authentic signing time", cert.subject());
            return Err(rejected(Rejection::Expired, detail));
        }
        return Ok(Outcome::NotVerified("the signingAuthority scheme proves its time without a TSA"));
    }
    let tsa: Vec<&(String, String)> = policy.trust_stores.iter().filter(|(kind, _)| kind == "tsa").collect();
    let expired = chain.iter().any(|c| now > c.validity().1);
    let skipped = if tsa.is_empty() {
        Some("the trust policy names no tsa trust store")
    } else if policy.verify_timestamp == VerifyTimestamp::AfterCertExpiry && !expired {
        Some("verifyTimestamp is afterCertExpiry and the signing certificates have not expired")
    } else {
        None
    };
    if let Some(why) = skipped {
        // Without a verified timestamp, every certificate must be valid now.
        if let Some(cert) = chain.iter().find(|c| !c.valid_at(now)) {
            let detail = format!(
                "certificate {} is not valid now and no timestamp proves the signing time ({why})",
                cert.subject()
            );
            return Err(rejected(Rejection::Expired, detail));
        }
        return Ok(Outcome::NotVerified(why));
    }
    let names = tsa.iter().map(|(k, n)| format!("{k}:{n}")).collect::<Vec<_>>().join(", ");
    let Some(token) = &envelope.timestamp else {
        let detail = format!(
            "the signature has no timestamp countersignature, and the trust policy verifies timestamps (trust stores {names})"
        );
        return Err(rejected(Rejection::Timestamp, detail));
    };
    let roots: Vec<Cert> = tsa.iter().flat_map(|(k, n)| stores.certs(k, n)).cloned().collect();
    if roots.is_empty() {
        return Err(rejected(Rejection::Timestamp, format!("the tsa trust store(s) {names} hold no certificate")));
    }
    let stamp = timestamp::verify(token, &envelope.signature, &roots)
        .map_err(|e| rejected(Rejection::Timestamp, e.to_string()))?;
    for cert in chain {
        let (not_before, not_after) = cert.validity();
        if !stamp.within(not_before, not_after) {
            let detail = format!(
                "the timestamp ({} ± {} ms, by {}) is outside the validity of certificate {}",
                stamp.time(),
                stamp.accuracy_us / 1_000,
                stamp.authority,
                cert.subject()
            );
            return Err(rejected(Rejection::Expired, detail));
        }
    }
    Ok(Outcome::Verified(stamp))
}
