//! Notary Project verification against signatures made by the real `notation` CLI: the verdict of
//! `modelpack-operator verify` equals `notation verify`'s for the same trust policy, trust store and
//! artifact, across envelopes (JWS, COSE), keys (RSA, ECDSA P-256/P-384), chains (with an
//! intermediate CA), registries (referrers API, tag schema only), each failure class, and each
//! verification level.

mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use support::notary::{Chain, KeyType, Notation, attach_envelope, policy};
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
        for registry in [&bed.plain, &bed.referrers] {
            for format in ["jws", "cose"] {
                let (reference, digest) = artifact(registry, &repo).await;
                notation.sign(&reference, format, registry.referrers_api);
                let what = format!("{name}, {format}, referrers API {}", registry.referrers_api);
                let out = side_by_side(&notation, &reference, true, &what);
                assert_eq!(out["digest"], digest.as_str());
                assert_eq!(dn_set(out["identity"].as_str().unwrap()), dn_set(&chain.subject), "{what}");
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

/// A JWS made here with the leaf key, so that its protected header can say what `notation sign`
/// never says.
fn crafted_jws(chain: &Chain, target: &Value, extra_critical: Option<&str>) -> Vec<u8> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let mut protected = json!({
        "alg": "ES256",
        "crit": ["io.cncf.notary.signingScheme"],
        "cty": "application/vnd.cncf.notary.payload.v1+json",
        "io.cncf.notary.signingScheme": "notary.x509",
        "io.cncf.notary.signingTime": jiff::Timestamp::now().to_string(),
    });
    if let Some(name) = extra_critical {
        protected["crit"].as_array_mut().unwrap().push(json!(name));
        protected[name] = json!("must be understood");
    }
    let protected = URL_SAFE_NO_PAD.encode(protected.to_string());
    let payload = URL_SAFE_NO_PAD.encode(json!({"targetArtifact": target}).to_string());
    let key_der = pem_body(&chain.leaf_key_pem);
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key_der).unwrap();
    let signature =
        key.sign(&aws_lc_rs::rand::SystemRandom::new(), format!("{protected}.{payload}").as_bytes()).unwrap();
    let x5c: Vec<String> = chain
        .chain_pem
        .split_inclusive("-----END CERTIFICATE-----")
        .map(|c| STANDARD.encode(pem_body(c)))
        .filter(|c| !c.is_empty())
        .collect();
    json!({"payload": payload, "protected": protected, "header": {"x5c": x5c, "io.cncf.notary.signingAgent": "e2e"},
        "signature": URL_SAFE_NO_PAD.encode(signature.as_ref())})
    .to_string()
    .into_bytes()
}

fn pem_body(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----") && !l.trim().is_empty()).collect();
    STANDARD.decode(body).unwrap()
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
