//! The Notary Project's certificate requirements for a signing chain (signature specification,
//! "Certificate Requirements"), with RFC 5280's rule for critical extensions on top. Each refusal
//! is one line: which certificate (role and subject) and which rule.

use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages};

use super::x509::Cert;

const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const CODE_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");

/// Extended key usages a signing certificate must not have (the specification's list, and
/// OCSPSigning, which notation refuses too).
const DENIED_EKUS: [(&str, &str); 6] = [
    ("2.5.29.37.0", "anyExtendedKeyUsage"),
    ("1.3.6.1.5.5.7.3.1", "serverAuth"),
    ("1.3.6.1.5.5.7.3.2", "clientAuth"),
    ("1.3.6.1.5.5.7.3.4", "emailProtection"),
    ("1.3.6.1.5.5.7.3.8", "timeStamping"),
    ("1.3.6.1.5.5.7.3.9", "OCSPSigning"),
];

/// Key usages a signing certificate must not have: the key signs artifacts, nothing else.
const DENIED_LEAF_USAGES: [(KeyUsages, &str); 7] = [
    (KeyUsages::KeyEncipherment, "keyEncipherment"),
    (KeyUsages::DataEncipherment, "dataEncipherment"),
    (KeyUsages::KeyAgreement, "keyAgreement"),
    (KeyUsages::KeyCertSign, "keyCertSign"),
    (KeyUsages::CRLSign, "cRLSign"),
    (KeyUsages::EncipherOnly, "encipherOnly"),
    (KeyUsages::DecipherOnly, "decipherOnly"),
];

/// Extensions this verifier processes, so may be critical. The subject alternative name is
/// critical when the subject is empty (RFC 5280 4.2.1.6); identities match the subject only, so
/// not reading it never accepts more. Any other critical extension (name constraints, policies)
/// is a constraint that is not enforced here: the certificate is refused rather than trusted
/// beyond what its issuer allowed.
const UNDERSTOOD: [ObjectIdentifier; 4] = [KEY_USAGE, BASIC_CONSTRAINTS, EXT_KEY_USAGE, SUBJECT_ALT_NAME];

fn extension_name(oid: &ObjectIdentifier) -> String {
    let known = [
        ("2.5.29.30", "nameConstraints"),
        ("2.5.29.32", "certificatePolicies"),
        ("2.5.29.33", "policyMappings"),
        ("2.5.29.36", "policyConstraints"),
        ("2.5.29.54", "inhibitAnyPolicy"),
        ("2.5.29.15", "keyUsage"),
        ("2.5.29.19", "basicConstraints"),
        ("2.5.29.37", "extendedKeyUsage"),
    ];
    let dotted = oid.to_string();
    known.iter().find(|(o, _)| *o == dotted).map_or(dotted.clone(), |(_, n)| format!("{n} ({dotted})"))
}

/// Checks the signature's certificate chain (leaf first, root last) against the Notary Project
/// certificate requirements, with every certificate valid at `at` (the signing time).
pub fn validate_chain(chain: &[Cert], at: i64) -> Result<(), String> {
    let Some(leaf) = chain.first() else { return Err("the signature carries no certificate".into()) };
    let last = chain.len() - 1;
    for (i, cert) in chain.iter().enumerate() {
        let role = match i {
            0 => "signing certificate",
            i if i == last => "root certificate",
            _ => "intermediate certificate",
        };
        if !cert.valid_at(at) {
            return Err(format!("{role} {} is not valid at the signing time", cert.subject()));
        }
        check_extensions(cert, role)?;
        match chain.get(i + 1) {
            Some(issuer) => {
                // A self-signed certificate anywhere but at the end means the chain is not one
                // path from the signer to a root (the specification's "ordered list").
                if cert.issued_by(cert) {
                    return Err(format!("{role} {} is self-signed but is not the last of the chain", cert.subject()));
                }
                if !cert.issued_by(issuer) {
                    return Err(format!("{role} {} is not issued by {}", cert.subject(), issuer.subject()));
                }
            }
            None if !cert.issued_by(cert) => {
                return Err(format!("the chain does not end in a self-signed root ({})", cert.subject()));
            }
            None => {}
        }
        if i > 0 {
            // A CA at index i has i - 1 CA certificates below it (the leaf is not one).
            validate_ca(cert, role, i - 1)?;
        }
    }
    validate_leaf(leaf)
}

/// RFC 5280 4.2: an extension appears at most once, and a critical one that is not processed
/// makes the certificate unusable.
pub(crate) fn check_extensions(cert: &Cert, role: &str) -> Result<(), String> {
    let extensions = cert.extensions();
    for (i, e) in extensions.iter().enumerate() {
        if extensions[..i].iter().any(|seen| seen.extn_id == e.extn_id) {
            let ext = extension_name(&e.extn_id);
            return Err(format!("{role} {}: extension {ext} appears more than once (RFC 5280 4.2)", cert.subject()));
        }
        if e.critical && !UNDERSTOOD.contains(&e.extn_id) {
            return Err(format!(
                "{role} {}: critical extension {} is not enforced by this verifier, so the certificate is refused (RFC 5280 4.2)",
                cert.subject(),
                extension_name(&e.extn_id)
            ));
        }
    }
    Ok(())
}

fn validate_ca(cert: &Cert, role: &str, below: usize) -> Result<(), String> {
    let name = cert.subject();
    let bc: Option<(BasicConstraints, bool)> = cert.extension(BASIC_CONSTRAINTS)?;
    let Some((bc, _)) = bc.filter(|(b, _)| b.ca) else {
        return Err(format!("{role} {name} is not a CA: it lacks basicConstraints cA=true"));
    };
    if let Some(limit) = bc.path_len_constraint
        && below > usize::from(limit)
    {
        return Err(format!(
            "{role} {name}: pathLenConstraint {limit} allows {limit} CA certificate(s) below it, the chain has {below}"
        ));
    }
    let ku = key_usage(cert, role)?;
    if !ku.0.contains(KeyUsages::KeyCertSign) {
        return Err(format!("{role} {name}: keyUsage lacks keyCertSign"));
    }
    Ok(())
}

/// keyUsage, present and critical (the specification's rule for every certificate of the chain).
fn key_usage(cert: &Cert, role: &str) -> Result<KeyUsage, String> {
    match cert.extension(KEY_USAGE)? {
        Some((ku, true)) => Ok(ku),
        Some((_, false)) => Err(format!("{role} {}: keyUsage is not marked critical", cert.subject())),
        None => Err(format!("{role} {} has no keyUsage extension", cert.subject())),
    }
}

/// A leaf's rules shared by signing and timestamping certificates (the specification's "Leaf
/// Certificates"): not a CA, and its keyUsage `ku` has digitalSignature and nothing denied.
pub(crate) fn check_leaf_usage(leaf: &Cert, role: &str, ku: &KeyUsage) -> Result<(), String> {
    let name = leaf.subject();
    let bc: Option<(BasicConstraints, bool)> = leaf.extension(BASIC_CONSTRAINTS)?;
    if bc.is_some_and(|(b, _)| b.ca) {
        return Err(format!("{role} {name} is a CA certificate (basicConstraints cA=true)"));
    }
    if !ku.0.contains(KeyUsages::DigitalSignature) {
        return Err(format!("{role} {name}: keyUsage lacks digitalSignature"));
    }
    let denied: Vec<&str> = DENIED_LEAF_USAGES.iter().filter(|(u, _)| ku.0.contains(*u)).map(|(_, n)| *n).collect();
    if !denied.is_empty() {
        return Err(format!("{role} {name}: keyUsage {} is not allowed on a {role}", denied.join(", ")));
    }
    Ok(())
}

/// The signing certificate (also when it is the only, self-signed, certificate: the
/// specification holds it to the leaf rules then, and so does notation).
fn validate_leaf(leaf: &Cert) -> Result<(), String> {
    let (name, role) = (leaf.subject(), "signing certificate");
    check_leaf_usage(leaf, role, &key_usage(leaf, role)?)?;
    let eku: Option<(ExtendedKeyUsage, bool)> = leaf.extension(EXT_KEY_USAGE)?;
    if let Some((eku, _)) = eku {
        for oid in &eku.0 {
            let dotted = oid.to_string();
            if let Some((_, denied)) = DENIED_EKUS.iter().find(|(o, _)| *o == dotted) {
                return Err(format!(
                    "{role} {name}: extended key usage {denied} is not allowed on a signing certificate"
                ));
            }
        }
        // Stricter than the specification ("MAY contain codeSigning") and notation: an EKU
        // extension limits the key to the purposes it lists (RFC 5280 4.2.1.12), and signing
        // artifacts is code signing.
        if !eku.0.contains(&CODE_SIGNING) {
            return Err(format!("{role} {name}: extended key usage is present without codeSigning"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints as Bc, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose as Eku,
        GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose as Ku, NameConstraints,
    };

    const NOW: i64 = 1_900_000_000;

    /// Certificate `level` of a chain: 0 is the leaf, `top` the root.
    fn params(level: usize, top: usize) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        let cn = match level {
            0 => "signer".to_owned(),
            l if l == top => "root".to_owned(),
            l => format!("ca{l}"),
        };
        for (ty, value) in [(DnType::CountryName, "US"), (DnType::StateOrProvinceName, "WA")] {
            p.distinguished_name.push(ty, value);
        }
        p.distinguished_name.push(DnType::OrganizationName, "acme");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2040, 1, 1);
        if level == 0 {
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![Ku::DigitalSignature];
            p.extended_key_usages = vec![Eku::CodeSigning];
        } else {
            p.is_ca = IsCa::Ca(Bc::Unconstrained);
            p.key_usages = vec![Ku::KeyCertSign, Ku::CrlSign];
        }
        p
    }

    /// A chain of `cas` CA certificates (root included) above the leaf, each made by `params`
    /// and then changed by `tweak(level, params)`; leaf first.
    fn chain(cas: usize, tweak: impl Fn(usize, &mut CertificateParams)) -> Vec<Cert> {
        let make = |level: usize| {
            let mut p = params(level, cas);
            tweak(level, &mut p);
            (p, KeyPair::generate().unwrap())
        };
        let (root_params, root_key) = make(cas);
        let mut ders = vec![root_params.self_signed(&root_key).unwrap().der().to_vec()];
        let mut issuer = Issuer::new(root_params, root_key);
        for level in (0..cas).rev() {
            let (p, key) = make(level);
            ders.push(p.signed_by(&key, &issuer).unwrap().der().to_vec());
            issuer = Issuer::new(p, key);
        }
        ders.iter().rev().map(|d| Cert::from_der(d).unwrap()).collect()
    }

    fn extension(oid: &[u64], der: &[u8], critical: bool) -> CustomExtension {
        let mut e = CustomExtension::from_oid_content(oid, der.to_vec());
        e.set_criticality(critical);
        e
    }

    fn accepted(what: &str, chain: &[Cert]) {
        if let Err(e) = validate_chain(chain, NOW) {
            panic!("{what}: refused: {e}");
        }
    }

    /// Refused, in one line naming the certificate (`who`, its CN) and the rule (`rule`).
    fn refused(what: &str, chain: &[Cert], who: &str, rule: &str) {
        let e = validate_chain(chain, NOW).expect_err(what);
        assert!(!e.contains('\n') && e.contains(&format!("CN={who}")) && e.contains(rule), "{what}: {e}");
    }

    #[test]
    fn well_formed_chains_of_each_depth_are_accepted() {
        // With no CA, the leaf is a lone self-signed signing certificate.
        for cas in 0..4 {
            accepted(&format!("{cas} CA certificate(s)"), &chain(cas, |_, _| {}));
        }
    }

    #[test]
    fn path_length_counts_the_ca_certificates_below() {
        let constrained = |at: usize, n: u8| {
            move |level: usize, p: &mut CertificateParams| {
                if level == at {
                    p.is_ca = IsCa::Ca(Bc::Constrained(n));
                }
            }
        };
        // leaf ← ca1 ← root: the root has one CA below it, ca1 none.
        accepted("pathLen 0 on the intermediate of a 3-chain", &chain(2, constrained(1, 0)));
        refused("pathLen 0 on the root of a 3-chain", &chain(2, constrained(2, 0)), "root", "pathLenConstraint 0");
        accepted("pathLen 1 on the root of a 3-chain", &chain(2, constrained(2, 1)));
        // leaf ← ca1 ← ca2 ← root.
        accepted("pathLen 0 on the lower intermediate of a 4-chain", &chain(3, constrained(1, 0)));
        refused(
            "pathLen 0 on the upper intermediate of a 4-chain",
            &chain(3, constrained(2, 0)),
            "ca2",
            "pathLenConstraint 0",
        );
        refused("pathLen 1 on the root of a 4-chain", &chain(3, constrained(3, 1)), "root", "pathLenConstraint 1");
        accepted("pathLen 2 on the root of a 4-chain", &chain(3, constrained(3, 2)));
    }

    #[test]
    fn signing_certificate_rules() {
        let leaf = |f: fn(&mut CertificateParams)| {
            chain(1, move |l, p| {
                if l == 0 {
                    f(p)
                }
            })
        };
        accepted("no EKU", &leaf(|p| p.extended_key_usages.clear()));
        accepted("contentCommitment too", &leaf(|p| p.key_usages.push(Ku::ContentCommitment)));
        refused(
            "keyCertSign",
            &leaf(|p| p.key_usages.push(Ku::KeyCertSign)),
            "signer",
            "keyUsage keyCertSign is not allowed",
        );
        refused("cRLSign", &leaf(|p| p.key_usages.push(Ku::CrlSign)), "signer", "keyUsage cRLSign is not allowed");
        refused("keyEncipherment", &leaf(|p| p.key_usages.push(Ku::KeyEncipherment)), "signer", "keyEncipherment");
        refused("keyAgreement", &leaf(|p| p.key_usages.push(Ku::KeyAgreement)), "signer", "keyAgreement");
        refused(
            "no digitalSignature",
            &leaf(|p| p.key_usages = vec![Ku::ContentCommitment]),
            "signer",
            "lacks digitalSignature",
        );
        refused("no keyUsage", &leaf(|p| p.key_usages.clear()), "signer", "has no keyUsage");
        refused(
            "keyUsage not critical",
            &leaf(|p| {
                p.key_usages.clear();
                p.custom_extensions.push(extension(&[2, 5, 29, 15], &[3, 2, 7, 0x80], false));
            }),
            "signer",
            "not marked critical",
        );
        refused("a CA", &leaf(|p| p.is_ca = IsCa::Ca(Bc::Unconstrained)), "signer", "is a CA certificate");
        let lone_ca = chain(0, |_, p| p.is_ca = IsCa::Ca(Bc::Unconstrained));
        refused("a lone self-signed CA", &lone_ca, "signer", "is a CA certificate");
        for (eku, name) in [
            (Eku::ServerAuth, "serverAuth"),
            (Eku::ClientAuth, "clientAuth"),
            (Eku::EmailProtection, "emailProtection"),
            (Eku::TimeStamping, "timeStamping"),
            (Eku::OcspSigning, "OCSPSigning"),
            (Eku::Any, "anyExtendedKeyUsage"),
        ] {
            let alone = chain(1, |l, p| {
                if l == 0 {
                    p.extended_key_usages = vec![eku.clone()]
                }
            });
            refused(name, &alone, "signer", &format!("extended key usage {name} is not allowed"));
            let beside = chain(1, |l, p| {
                if l == 0 {
                    p.extended_key_usages.push(eku.clone())
                }
            });
            refused(&format!("codeSigning and {name}"), &beside, "signer", name);
        }
        let custom = leaf(|p| p.extended_key_usages = vec![Eku::Other(vec![1, 3, 6, 1, 4, 1, 99999, 1])]);
        refused("a custom EKU without codeSigning", &custom, "signer", "without codeSigning");
    }

    #[test]
    fn ca_certificate_rules() {
        for (level, who) in [(1, "ca1"), (2, "root")] {
            let at = move |f: fn(&mut CertificateParams)| {
                chain(2, move |l, p| {
                    if l == level {
                        f(p)
                    }
                })
            };
            refused("no basicConstraints", &at(|p| p.is_ca = IsCa::NoCa), who, "lacks basicConstraints cA=true");
            refused("cA=false", &at(|p| p.is_ca = IsCa::ExplicitNoCa), who, "lacks basicConstraints cA=true");
            refused("no keyCertSign", &at(|p| p.key_usages = vec![Ku::CrlSign]), who, "lacks keyCertSign");
            refused("no keyUsage", &at(|p| p.key_usages.clear()), who, "has no keyUsage");
            let not_critical = chain(2, |l, p| {
                if l == level {
                    p.key_usages.clear();
                    p.custom_extensions.push(extension(&[2, 5, 29, 15], &[3, 2, 1, 0x06], false));
                }
            });
            refused("keyUsage not critical", &not_critical, who, "keyUsage is not marked critical");
            // The specification says nothing of EKUs on CA certificates; notation ignores them.
            accepted("a CA with EKU serverAuth", &at(|p| p.extended_key_usages = vec![Eku::ServerAuth]));
        }
    }

    #[test]
    fn critical_extensions_that_are_not_enforced_refuse_the_certificate() {
        let unknown = [1, 3, 6, 1, 4, 1, 99999, 7];
        for (level, who) in [(0, "signer"), (1, "ca1"), (2, "root")] {
            let critical = chain(2, |l, p| {
                if l == level {
                    p.custom_extensions.push(extension(&unknown, &[5, 0], true));
                }
            });
            refused("unknown critical", &critical, who, "critical extension 1.3.6.1.4.1.99999.7 is not enforced");
            let informational = chain(2, |l, p| {
                if l == level {
                    p.custom_extensions.push(extension(&unknown, &[5, 0], false));
                }
            });
            accepted("unknown, not critical", &informational);
            let twice = chain(2, |l, p| {
                if l == level {
                    p.custom_extensions.push(extension(&[2, 5, 29, 15], &[3, 2, 1, 0x06], true));
                }
            });
            refused("keyUsage twice", &twice, who, "appears more than once");
        }
        let constrained = chain(2, |l, p| {
            if l == 1 {
                p.name_constraints = Some(NameConstraints {
                    permitted_subtrees: vec![GeneralSubtree::DnsName("acme.example".into())],
                    excluded_subtrees: vec![],
                });
            }
        });
        refused("name constraints on the intermediate", &constrained, "ca1", "nameConstraints (2.5.29.30)");
    }

    #[test]
    fn the_chain_is_one_ordered_path_valid_at_signing_time() {
        let c = chain(2, |_, _| {});
        refused("root missing", &c[..2], "ca1", "does not end in a self-signed root");
        refused("intermediate missing", &[c[0].clone(), c[2].clone()], "signer", "is not issued by");
        let extra = [c[0].clone(), c[1].clone(), c[2].clone(), c[2].clone()];
        refused("a self-signed certificate inside", &extra, "root", "self-signed but is not the last");
        let expired = chain(2, |l, p| {
            if l == 1 {
                p.not_after = rcgen::date_time_ymd(2021, 1, 1)
            }
        });
        refused("expired intermediate", &expired, "ca1", "not valid at the signing time");
    }
}
