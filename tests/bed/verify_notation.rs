//! Notary Project verification against signatures made by the real `notation` CLI: the verdict of
//! `modelpack-operator verify` equals `notation verify`'s for the same trust policy, trust store and
//! artifact, across envelopes (JWS, COSE), keys (RSA, ECDSA P-256/P-384), chains (with an
//! intermediate CA), registries (referrers API, tag schema only), each failure class, and each
//! verification level.

use crate::support;

use std::time::Duration;

use serde_json::{Value, json};
use support::notary::{Chain, KeyType, Notation, attach_envelope, crafted_jws, policy};
use support::{Bed, Registry, craft, operator, unique_suffix};

/// A distinguished name's attributes, in any order.
fn dn_set(dn: &str) -> std::collections::BTreeSet<String> {
    dn.split(", ").map(str::to_owned).collect()
}

/// A fresh artifact (an OCI image manifest, unique per call): `(reference by digest, digest)`.
async fn artifact(registry: &Registry, repo: &str) -> (String, String) {
    let mut a = craft::container_image();
    a.annotations.insert("e2e.unique".into(), unique_suffix());
    let tag = format!("t{}", unique_suffix());
    let digest = craft::push(registry, repo, &tag, &a).await;
    (format!("{}/{repo}@{digest}", registry.host), digest)
}

fn ours(notation: &Notation, reference: &str) -> (i32, Value) {
    let policy = notation.policy_file();
    let certs = notation.certs_dir();
    let args = [
        "verify",
        "--insecure",
        "--notation-policy",
        policy.to_str().unwrap(),
        "--notation-certs",
        certs.to_str().unwrap(),
        "-o",
        "json",
        reference,
    ];
    let (code, stdout, stderr) = operator(&args);
    assert!(code == 0 || code == 1, "verify exited {code}: {stderr}");
    (code, serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("verify output: {stdout} {stderr}")))
}

/// Both verdicts equal `expect`; returns ours.
fn side_by_side(notation: &Notation, reference: &str, expect: bool, what: &str) -> Value {
    let (code, out) = ours(notation, reference);
    assert_eq!(code == 0, expect, "{what}: our verdict: {out}");
    assert_eq!(notation.verifies(reference), expect, "{what}: notation's verdict");
    out
}

#[tokio::test]
async fn envelopes_keys_chains_and_registries_verify_like_notation() {
    let bed = Bed::get();
    let repo = format!("notary/sign-{}", unique_suffix());
    let chains = [
        ("RSA, self-signed root → leaf", Chain::new(KeyType::Rsa, "acme", false, None)),
        ("ECDSA P-256 with an intermediate", Chain::new(KeyType::EcP256, "acme", true, None)),
        ("ECDSA P-384 with an intermediate", Chain::new(KeyType::EcP384, "acme", true, None)),
    ];
    for (name, chain) in &chains {
        let notation = Notation::new();
        notation.use_chain(chain);
        let trusted = policy(json!(["*"]), "strict", &["ca:acme"], &["x509.subject: C=US, ST=WA, O=acme"]);
        notation.trust(&trusted, &[("ca", "acme", &chain.root_pem)]);
        let root_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(root_file.path(), &chain.root_pem).unwrap();
        let root_fingerprint = crate::support::openssl_fingerprint(&["x509", "-in"], root_file.path());
        for registry in [&bed.plain, &bed.referrers] {
            for format in ["jws", "cose"] {
                let (reference, digest) = artifact(registry, &repo).await;
                notation.sign(&reference, format, registry.referrers_api);
                let what = format!("{name}, {format}, referrers API {}", registry.referrers_api);
                let out = side_by_side(&notation, &reference, true, &what);
                assert_eq!(out["digest"], digest.as_str());
                assert_eq!(dn_set(out["identity"].as_str().unwrap()), dn_set(&chain.subject), "{what}");
                assert_eq!(
                    out["anchor"],
                    root_fingerprint.as_str(),
                    "{what}: the trust store's root, as openssl sees it"
                );
                assert!(out["signatureDigest"].as_str().is_some_and(|d| d.starts_with("sha256:")), "{what}");
            }
        }
    }
}

#[tokio::test]
async fn each_failure_class_is_rejected_as_notation_rejects_it() {
    let bed = Bed::get();
    let repo = format!("notary/reject-{}", unique_suffix());
    let acme = Chain::new(KeyType::EcP256, "acme", true, None);
    let stranger = Chain::new(KeyType::EcP256, "acme", true, None);
    let notation = Notation::new();
    notation.use_chain(&acme);
    let strict = policy(json!(["*"]), "strict", &["ca:acme"], &["*"]);
    notation.trust(&strict, &[("ca", "acme", &acme.root_pem)]);
    let reason = |out: &Value| out["reason"].as_str().unwrap_or_default().to_owned();

    let (signed, _) = artifact(&bed.plain, &repo).await;
    notation.sign(&signed, "jws", false);
    side_by_side(&notation, &signed, true, "control");

    // Untrusted root: re-signed with another key whose root is not in the store.
    let (other, _) = artifact(&bed.plain, &repo).await;
    let resigner = Notation::new();
    resigner.use_chain(&stranger);
    resigner.sign(&other, "jws", false);
    assert_eq!(reason(&side_by_side(&notation, &other, false, "untrusted root")), "untrusted root");

    // Identity not trusted.
    let wrong_identity = policy(json!(["*"]), "strict", &["ca:acme"], &["x509.subject: C=US, ST=WA, O=globex"]);
    notation.trust(&wrong_identity, &[("ca", "acme", &acme.root_pem)]);
    assert_eq!(reason(&side_by_side(&notation, &signed, false, "identity mismatch")), "identity mismatch");

    // No policy for the repository.
    let elsewhere = policy(json!(["registry.example/other/model"]), "strict", &["ca:acme"], &["*"]);
    notation.trust(&elsewhere, &[("ca", "acme", &acme.root_pem)]);
    assert_eq!(reason(&side_by_side(&notation, &signed, false, "scope mismatch")), "no applicable trust policy");
    notation.trust(&strict, &[("ca", "acme", &acme.root_pem)]);

    // The artifact changed after signing: its new digest has no signature of its own, and the old
    // signature presented for it (the referrers tag copied over) describes another digest.
    let (tampered, tampered_digest) = artifact(&bed.plain, &repo).await;
    let signed_digest = signed.rsplit('@').next().unwrap();
    let index = |d: &str| format!("{}/{repo}:sha256-{}", bed.plain.host, &d[7..]);
    support::run_tool(
        &bed.tool("crane"),
        &["copy", "--insecure", &index(signed_digest), &index(&tampered_digest)],
        &[],
        None,
    );
    assert_eq!(reason(&side_by_side(&notation, &tampered, false, "tampered")), "no signature found");

    // A corrupted envelope.
    let (corrupt, _) = artifact(&bed.plain, &repo).await;
    attach_envelope(&corrupt, "application/jose+json", b"{\"payload\": \"not base64!\"");
    assert_eq!(reason(&side_by_side(&notation, &corrupt, false, "corrupted")), "invalid signature envelope");

    // An expired signing certificate (valid when it signed).
    let short = Chain::new(KeyType::EcP256, "acme", false, Some(3));
    let short_notation = Notation::new();
    short_notation.use_chain(&short);
    short_notation.trust(&strict, &[("ca", "acme", &short.root_pem)]);
    let (expiring, _) = artifact(&bed.plain, &repo).await;
    short_notation.sign(&expiring, "cose", false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(reason(&side_by_side(&short_notation, &expiring, false, "expired leaf")), "expired");
    // Permissive logs expiry; audit logs authenticity too: both pass, as notation's do.
    for level in ["permissive", "audit"] {
        short_notation.trust(&policy(json!(["*"]), level, &["ca:acme"], &["*"]), &[("ca", "acme", &short.root_pem)]);
        let out = side_by_side(&short_notation, &expiring, true, level);
        let warnings = out["warnings"].to_string();
        assert!(warnings.contains("not valid now"), "{level}: {warnings}");
    }
}

#[tokio::test]
async fn levels_decide_what_an_untrusted_signature_gets_as_notation_does() {
    let bed = Bed::get();
    let repo = format!("notary/levels-{}", unique_suffix());
    let trusted = Chain::new(KeyType::Rsa, "acme", false, None);
    let untrusted = Chain::new(KeyType::EcP256, "globex", false, None);
    let signer = Notation::new();
    signer.use_chain(&untrusted);
    let (reference, _) = artifact(&bed.referrers, &repo).await;
    signer.sign(&reference, "jws", true);
    let verifier = Notation::new();
    for (level, expect) in [("strict", false), ("permissive", false), ("audit", true), ("skip", true)] {
        let doc = if level == "skip" {
            json!({"version": "1.0", "trustPolicies": [{"name": "models", "registryScopes": ["*"],
                "signatureVerification": {"level": "skip"}}]})
        } else {
            policy(json!(["*"]), level, &["ca:acme"], &["*"])
        };
        verifier.trust(&doc, &[("ca", "acme", &trusted.root_pem)]);
        let out = side_by_side(&verifier, &reference, expect, level);
        if level == "audit" {
            assert!(out["warnings"].to_string().contains("authenticity"), "{out}");
        }
    }
}

#[tokio::test]
async fn crafted_envelopes_unknown_critical_headers_are_rejected_and_the_legacy_storage_form_is_found() {
    let bed = Bed::get();
    let repo = format!("notary/crit-{}", unique_suffix());
    let chain = Chain::new(KeyType::EcP256, "acme", false, None);
    let notation = Notation::new();
    notation.trust(&policy(json!(["*"]), "strict", &["ca:acme"], &["*"]), &[("ca", "acme", &chain.root_pem)]);
    let chain = &chain;
    let attach = |critical: Option<&'static str>| {
        let repo = repo.clone();
        async move {
            let (reference, digest) = artifact(&bed.plain, &repo).await;
            let manifest = craft::manifest_bytes(&bed.plain, &repo, &digest).await;
            let target = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                "size": manifest.len()});
            attach_envelope(&reference, "application/jose+json", &crafted_jws(chain, &target, critical));
            reference
        }
    };
    // The crafted envelope is a valid signature: both verifiers accept it.
    let plain = attach(None).await;
    side_by_side(&notation, &plain, true, "crafted control");
    // With a critical header nobody understands, the signature specification (and RFC 7515) make
    // the envelope invalid. notation v1.3.2 accepts it anyway (it ignores unknown critical
    // attributes when no verification plugin is named): this is the one verdict where we differ
    // from notation on purpose, and the test pins both answers.
    let critical = attach(Some("io.cncf.example.unknown")).await;
    let (code, out) = ours(&notation, &critical);
    assert_eq!(code, 1, "{out}");
    assert_eq!(out["reason"], "invalid signature envelope");
    assert!(out["detail"].as_str().unwrap().contains("unknown critical header"), "{out}");
    assert!(notation.verifies(&critical), "notation's verdict changed: it now rejects unknown critical headers");

    // The legacy storage form: the signature type only in config.mediaType, listed by a referrers
    // tag index whose entry carries no artifactType (what pre-1.1 registries and tools produced).
    let (legacy, digest) = artifact(&bed.plain, &repo).await;
    let manifest = craft::manifest_bytes(&bed.plain, &repo, &digest).await;
    let target =
        json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": manifest.len()});
    let envelope = craft::Blob::new("application/jose+json", crafted_jws(chain, &target, None));
    let signature = craft::Artifact {
        artifact_type: None,
        config: craft::Blob::new("application/vnd.cncf.notary.signature", b"{}".to_vec()),
        layers: vec![envelope],
        annotations: Default::default(),
    };
    let mut signature_manifest = signature.manifest();
    signature_manifest["subject"] =
        json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": manifest.len()});
    let signature_bytes = serde_json::to_vec(&signature_manifest).unwrap();
    let signature_digest =
        craft::push_with_manifest(&bed.plain, &repo, "legacy-signature", &signature, &signature_bytes).await;
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": signature_digest, "size": signature_bytes.len()}]});
    let (client, auth) = craft::client(&bed.plain);
    let tag = oci_client::Reference::with_tag(bed.plain.host.clone(), repo.clone(), format!("sha256-{}", &digest[7..]));
    client.auth(&tag, &auth, oci_client::RegistryOperation::Push).await.unwrap();
    client
        .push_manifest_raw(
            &tag,
            serde_json::to_vec(&index).unwrap(),
            "application/vnd.oci.image.index.v1+json".parse().unwrap(),
        )
        .await
        .unwrap();
    let (code, out) = ours(&notation, &legacy);
    assert_eq!(code, 0, "the legacy form is found and verified: {out}");
    assert_eq!(out["signatureDigest"], signature_digest.as_str());
}

#[tokio::test]
async fn a_model_verifies_with_notation_and_audit_keeps_an_untrusted_version_usable() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, Patch, PatchParams};
    use modelpack_operator::api::Model;
    use modelpack_operator::api::conditions::{ConditionStatus, READY, VERIFIED, find};
    use support::fixtures::{ModelFiles, modctl_push};

    let bed = Bed::get();
    let client = bed.client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "notary-model").await;
    let _operator = support::Operator::start(&ns);
    let repo = format!("notary/model-{}", unique_suffix());
    let acme = Chain::new(KeyType::EcP256, "acme", true, None);
    let signer = Notation::new();
    signer.use_chain(&acme);
    let v1 = modctl_push(bed, &bed.referrers, &repo, "prod", &ModelFiles::new(51, &[("model.gguf", 10_000)]));
    signer.sign(&format!("{}/{repo}@{v1}", bed.referrers.host), "cose", true);

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let trust = |level: &str| {
        let doc = policy(json!(["*"]), level, &["ca:acme"], &["x509.subject: C=US, ST=WA, O=acme"]);
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "trust"},
            "stringData": {"trustpolicy.json": doc.to_string(), "ca.acme.pem": acme.root_pem}})
    };
    let apply = |obj: Value| {
        let secrets = secrets.clone();
        async move { secrets.patch("trust", &PatchParams::apply("e2e").force(), &Patch::Apply(&obj)).await.unwrap() }
    };
    apply(trust("strict")).await;
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let spec = json!({"repository": format!("{}/{repo}", bed.referrers.host), "ref": {"tag": "prod"}, "insecure": true,
        "interval": "10s", "verify": {"provider": "notation", "secretRef": {"name": "trust"}}});
    let obj = json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "Model", "metadata": {"name": "m"}, "spec": spec});
    models.patch("m", &PatchParams::apply("e2e").force(), &Patch::Apply(&obj)).await.unwrap();
    let wait = |what: &'static str, digest: String, verified: ConditionStatus| {
        let models = models.clone();
        support::eventually(what, Duration::from_secs(45), move || {
            let (models, digest) = (models.clone(), digest.clone());
            async move {
                let m = models.get("m").await.ok()?;
                let s = m.status.clone()?;
                let ok = s.verified.as_ref().is_some_and(|v| v.digest == digest)
                    && find(&s.conditions, VERIFIED).is_some_and(|c| c.status == verified);
                ok.then_some(m)
            }
        })
    };
    let m = wait("v1 verified", v1.clone(), ConditionStatus::True).await;
    let status = m.status.unwrap();
    assert!(status.verified.unwrap().identity.unwrap().contains("CN=acme release signer"));
    let verified = find(&status.conditions, VERIFIED).unwrap();
    assert!(verified.message.contains("revocation"), "what was not checked is said: {}", verified.message);

    // Under audit, a version signed by an untrusted key is usable but not verified.
    apply(trust("audit")).await;
    let globex = Chain::new(KeyType::EcP256, "globex", false, None);
    let other = Notation::new();
    other.use_chain(&globex);
    let v2 = modctl_push(bed, &bed.referrers, &repo, "prod", &ModelFiles::new(52, &[("model.gguf", 10_000)]));
    other.sign(&format!("{}/{repo}@{v2}", bed.referrers.host), "jws", true);
    let m = wait("v2 usable under audit", v2.clone(), ConditionStatus::False).await;
    let status = m.status.unwrap();
    let verified = find(&status.conditions, VERIFIED).unwrap();
    assert_eq!(verified.reason, "AuditOnly");
    assert!(verified.message.contains("authenticity"), "{}", verified.message);
    assert_eq!(find(&status.conditions, READY).unwrap().status, ConditionStatus::True);
    let m = models.get("m").await.unwrap();
    let (health, message) = support::argo::health(&{
        let mut v = serde_json::to_value(&m).unwrap();
        v["kind"] = json!("Model");
        v
    });
    assert_eq!(health, "Healthy");
    assert!(message.contains("audit"), "{message}");
}

/// One crafted chain and the verdicts of both verifiers on a signature made with it.
struct Case {
    what: &'static str,
    chain: Chain,
    /// The trust store holds the root, or (`trust_intermediate`) the certificate below it.
    trust_intermediate: bool,
    identity: &'static str,
    /// Our verdict, and (when we refuse) what the one-line refusal names: the certificate's CN
    /// and the rule.
    ours: Result<(), (&'static str, &'static str)>,
    notation: bool,
}

const ANYONE: &str = "*";
const ACME: &str = "x509.subject: C=US, ST=WA, O=acme";

fn at(level: usize, f: impl Fn(&mut rcgen::CertificateParams)) -> impl Fn(usize, &mut rcgen::CertificateParams) {
    move |l, p| {
        if l == level {
            f(p)
        }
    }
}

/// The Notary Project's certificate requirements, each broken once, and RFC 5280's critical
/// extensions, with the subject rules of trusted identities.
fn certificate_cases() -> Vec<Case> {
    use rcgen::{
        BasicConstraints as Bc, CustomExtension, DnType, ExtendedKeyUsagePurpose as Eku, GeneralSubtree, IsCa,
        KeyUsagePurpose as Ku, NameConstraints,
    };
    let same = |what, chain, ours: Result<(), (&'static str, &'static str)>| Case {
        what,
        notation: ours.is_ok(),
        chain,
        trust_intermediate: false,
        identity: ANYONE,
        ours,
    };
    let chain = |cas, tweak: &dyn Fn(usize, &mut rcgen::CertificateParams)| Chain::custom("acme", cas, tweak, None);
    let path_len = |level, n| at(level, move |p| p.is_ca = IsCa::Ca(Bc::Constrained(n)));
    let ext = |oid: &[u64], der: &[u8], critical| {
        let mut e = CustomExtension::from_oid_content(oid, der.to_vec());
        e.set_criticality(critical);
        e
    };
    let unknown_critical = move |p: &mut rcgen::CertificateParams| {
        p.custom_extensions.push(ext(&[1, 3, 6, 1, 4, 1, 99999, 7], &[5, 0], true))
    };
    let leaf = "acme release signer";
    let mut cases = vec![
        same("control: leaf ← intermediate ← root", chain(2, &|_, _| {}), Ok(())),
        same("pathLen 0 on the intermediate, 3 certificates", chain(2, &path_len(1, 0)), Ok(())),
        same(
            "pathLen 0 on the root, 3 certificates",
            chain(2, &path_len(2, 0)),
            Err(("acme root", "pathLenConstraint 0")),
        ),
        same("pathLen 1 on the root, 3 certificates", chain(2, &path_len(2, 1)), Ok(())),
        same("pathLen 0 on the lower intermediate, 4 certificates", chain(3, &path_len(1, 0)), Ok(())),
        same(
            "pathLen 0 on the upper intermediate, 4 certificates",
            chain(3, &path_len(2, 0)),
            Err(("acme ca2", "pathLenConstraint 0")),
        ),
        same(
            "pathLen 1 on the root, 4 certificates",
            chain(3, &path_len(3, 1)),
            Err(("acme root", "pathLenConstraint 1")),
        ),
        same(
            "leaf with keyCertSign",
            chain(2, &at(0, |p| p.key_usages.push(Ku::KeyCertSign))),
            Err((leaf, "keyUsage keyCertSign is not allowed")),
        ),
        same(
            "leaf with cRLSign",
            chain(2, &at(0, |p| p.key_usages.push(Ku::CrlSign))),
            Err((leaf, "keyUsage cRLSign is not allowed")),
        ),
        same(
            "leaf that is a CA",
            chain(2, &at(0, |p| p.is_ca = IsCa::Ca(Bc::Unconstrained))),
            Err((leaf, "is a CA certificate")),
        ),
        same(
            "leaf keyUsage not critical",
            chain(
                2,
                &at(0, move |p| {
                    p.key_usages.clear();
                    p.custom_extensions.push(ext(&[2, 5, 29, 15], &[3, 2, 7, 0x80], false));
                }),
            ),
            Err((leaf, "keyUsage is not marked critical")),
        ),
        same(
            "leaf keyUsage twice",
            chain(2, &at(0, move |p| p.custom_extensions.push(ext(&[2, 5, 29, 15], &[3, 2, 1, 0x06], true)))),
            Err((leaf, "appears more than once")),
        ),
        same(
            "intermediate without basicConstraints",
            chain(2, &at(1, |p| p.is_ca = IsCa::NoCa)),
            Err(("acme ca1", "lacks basicConstraints cA=true")),
        ),
        same(
            "intermediate with cA=false",
            chain(2, &at(1, |p| p.is_ca = IsCa::ExplicitNoCa)),
            Err(("acme ca1", "lacks basicConstraints cA=true")),
        ),
        same(
            "root without basicConstraints",
            chain(2, &at(2, |p| p.is_ca = IsCa::NoCa)),
            Err(("acme root", "lacks basicConstraints cA=true")),
        ),
        same(
            "intermediate without keyCertSign",
            chain(2, &at(1, |p| p.key_usages = vec![Ku::CrlSign, Ku::DigitalSignature])),
            Err(("acme ca1", "lacks keyCertSign")),
        ),
        same(
            "intermediate keyUsage not critical",
            chain(
                2,
                &at(1, move |p| {
                    p.key_usages.clear();
                    p.custom_extensions.push(ext(&[2, 5, 29, 15], &[3, 2, 1, 0x06], false));
                }),
            ),
            Err(("acme ca1", "keyUsage is not marked critical")),
        ),
        same(
            "leaf EKU serverAuth only",
            chain(2, &at(0, |p| p.extended_key_usages = vec![Eku::ServerAuth])),
            Err((leaf, "extended key usage serverAuth is not allowed")),
        ),
        // The specification says nothing of EKUs on CA certificates; neither verifier reads them.
        same(
            "intermediate with EKU serverAuth",
            chain(2, &at(1, |p| p.extended_key_usages = vec![Eku::ServerAuth])),
            Ok(()),
        ),
    ];
    for (eku, name) in [
        (Eku::ClientAuth, "clientAuth"),
        (Eku::EmailProtection, "emailProtection"),
        (Eku::TimeStamping, "timeStamping"),
        (Eku::OcspSigning, "OCSPSigning"),
    ] {
        let what: &'static str = format!("leaf EKU codeSigning and {name}").leak();
        cases.push(same(what, chain(2, &at(0, move |p| p.extended_key_usages.push(eku.clone()))), Err((leaf, name))));
    }
    // Subjects against trusted identities: a repeated attribute type has no single value.
    let subject = |what, rfc4514: &str, identity, ours: Result<(), (&'static str, &'static str)>, notation| Case {
        what,
        chain: Chain::custom("acme", 2, |_: usize, _: &mut rcgen::CertificateParams| {}, Some(rfc4514)),
        trust_intermediate: false,
        identity,
        ours,
        notation,
    };
    let repeated = Err((leaf, "holds attribute O more than once"));
    cases.extend([
        subject("O=evil, O=acme vs O=acme", "CN=acme release signer,O=evil,O=acme,ST=WA,C=US", ACME, repeated, false),
        subject("O=acme, O=evil vs O=acme", "CN=acme release signer,O=acme,O=evil,ST=WA,C=US", ACME, repeated, false),
        subject("O=evil+O=acme vs O=acme", "CN=acme release signer,O=evil+O=acme,ST=WA,C=US", ACME, repeated, false),
        subject("O=evil, O=acme vs *", "CN=acme release signer,O=evil,O=acme,ST=WA,C=US", ANYONE, Ok(()), true),
        subject("CN+O in one RDN vs O=acme", "CN=acme release signer+O=acme,ST=WA,C=US", ACME, Ok(()), true),
        // Deliberate difference: Go keeps only the last CN of a subject, so notation sees one
        // CN; we see two and match nothing.
        subject(
            "CN twice vs O=acme",
            "CN=acme release signer,CN=other,O=acme,ST=WA,C=US",
            ACME,
            Err((leaf, "holds attribute CN more than once")),
            true,
        ),
    ]);
    // Deliberate differences: notation 1.3.2 ignores what the specification does not list, does
    // not require codeSigning in an EKU, and does not deny anyExtendedKeyUsage (the
    // specification does); we refuse a critical extension we do not enforce.
    let differs = |what, chain, trust_intermediate, ours| Case {
        what,
        chain,
        trust_intermediate,
        identity: ANYONE,
        ours: Err(ours),
        notation: true,
    };
    let only_builds = NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DirectoryName({
            let mut dn = rcgen::DistinguishedName::new();
            dn.push(DnType::CountryName, "US");
            dn.push(DnType::StateOrProvinceName, "WA");
            dn.push(DnType::OrganizationName, "acme");
            dn.push(DnType::OrganizationalUnitName, "builds");
            dn
        })],
        excluded_subtrees: vec![],
    };
    cases.extend([
        differs(
            "leaf EKU without codeSigning",
            chain(2, &at(0, |p| p.extended_key_usages = vec![Eku::Other(vec![1, 3, 6, 1, 4, 1, 99999, 1])])),
            false,
            (leaf, "extended key usage is present without codeSigning"),
        ),
        differs(
            "leaf EKU codeSigning and anyExtendedKeyUsage",
            chain(2, &at(0, |p| p.extended_key_usages.push(Eku::Any))),
            false,
            (leaf, "extended key usage anyExtendedKeyUsage is not allowed"),
        ),
        differs(
            "leaf EKU anyExtendedKeyUsage only",
            chain(2, &at(0, |p| p.extended_key_usages = vec![Eku::Any])),
            false,
            (leaf, "extended key usage anyExtendedKeyUsage is not allowed"),
        ),
        differs(
            "unknown critical extension on the leaf",
            chain(2, &at(0, unknown_critical)),
            false,
            (leaf, "critical extension"),
        ),
        differs(
            "unknown critical extension on the intermediate",
            chain(2, &at(1, unknown_critical)),
            false,
            ("acme ca1", "critical extension"),
        ),
        differs(
            "unknown critical extension on the root",
            chain(2, &at(2, unknown_critical)),
            false,
            ("acme root", "critical extension"),
        ),
        // The case that matters: a trusted intermediate allowed to issue only under OU=builds
        // issues a signing certificate outside it.
        differs(
            "name constraints on a trusted intermediate",
            chain(2, &at(1, move |p| p.name_constraints = Some(only_builds.clone()))),
            true,
            ("acme ca1", "critical extension nameConstraints"),
        ),
    ]);
    cases
}

#[tokio::test]
async fn certificate_rules_side_by_side_with_notation() {
    let bed = Bed::get();
    let repo = format!("notary/certs-{}", unique_suffix());
    let notation = Notation::new();
    let mut failures = Vec::new();
    for case in certificate_cases() {
        let (reference, digest) = artifact(&bed.plain, &repo).await;
        let manifest = craft::manifest_bytes(&bed.plain, &repo, &digest).await;
        let target = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": manifest.len()});
        attach_envelope(&reference, "application/jose+json", &crafted_jws(&case.chain, &target, None));
        let certs: Vec<&str> = case.chain.chain_pem.split_inclusive("-----END CERTIFICATE-----\n").collect();
        let anchor = if case.trust_intermediate { certs[1] } else { &case.chain.root_pem };
        notation.trust(&policy(json!(["*"]), "strict", &["ca:acme"], &[case.identity]), &[("ca", "acme", anchor)]);
        let (code, out) = ours(&notation, &reference);
        let theirs = notation.verifies(&reference);
        let detail = out["detail"].as_str().unwrap_or_default();
        let ok = match case.ours {
            Ok(()) => code == 0,
            Err((who, rule)) => {
                code == 1 && !detail.contains('\n') && detail.contains(&format!("CN={who}")) && detail.contains(rule)
            }
        };
        if !ok || theirs != case.notation {
            failures.push(format!(
                "{}: ours {code} {out} (expected {:?}), notation {theirs} (expected {})",
                case.what, case.ours, case.notation
            ));
        }
    }
    assert!(failures.is_empty(), "{} case(s) differ:\n{}", failures.len(), failures.join("\n"));
}
