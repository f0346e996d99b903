//! Notary Project fixtures: certificate chains made with rcgen (root → optional intermediate →
//! code-signing leaf, RSA or ECDSA, any validity), the real `notation` CLI configured with them
//! (its own config directory per test), and hand-made signature envelopes for what `notation sign`
//! will not produce (an unknown critical header).

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SignatureAlgorithm, SigningKey,
};
use serde_json::{Value, json};
use tempfile::TempDir;
use time::{Duration, OffsetDateTime};

use super::{run_tool, try_tool};

/// A signing certificate chain: the leaf's PKCS#8 key and the PEM chain (leaf first, root last).
pub struct Chain {
    pub leaf_key_pem: String,
    pub chain_pem: String,
    pub root_pem: String,
    pub subject: String,
}

pub enum KeyType {
    Rsa,
    EcP256,
    EcP384,
}

fn alg(t: &KeyType) -> &'static SignatureAlgorithm {
    match t {
        KeyType::Rsa => &rcgen::PKCS_RSA_SHA256,
        KeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
    }
}

fn params(cn: &str, org: &str, ca: bool) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CountryName, "US");
    p.distinguished_name.push(DnType::StateOrProvinceName, "WA");
    p.distinguished_name.push(DnType::OrganizationName, org);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = OffsetDateTime::now_utc() - Duration::days(1);
    p.not_after = OffsetDateTime::now_utc() + Duration::days(30);
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    } else {
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    }
    p
}

impl Chain {
    /// root → [intermediate →] leaf, all of `key`'s type; the leaf is valid for `leaf_seconds`
    /// from one minute ago (None: 30 days).
    pub fn new(key: KeyType, org: &str, intermediate: bool, leaf_seconds: Option<i64>) -> Chain {
        let root_key = KeyPair::generate_for(alg(&key)).unwrap();
        let root_params = params(&format!("{org} root"), org, true);
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);
        let mut pems = Vec::new();
        let leaf_key = KeyPair::generate_for(alg(&key)).unwrap();
        let mut leaf_params = params(&format!("{org} release signer"), org, false);
        if let Some(secs) = leaf_seconds {
            leaf_params.not_before = OffsetDateTime::now_utc() - Duration::minutes(1);
            leaf_params.not_after = OffsetDateTime::now_utc() + Duration::seconds(secs);
        }
        if intermediate {
            let mid_key = KeyPair::generate_for(alg(&key)).unwrap();
            let mid_params = params(&format!("{org} intermediate"), org, true);
            let mid = mid_params.signed_by(&mid_key, &root_issuer).unwrap();
            let mid_issuer = Issuer::new(mid_params, mid_key);
            let leaf = leaf_params.signed_by(&leaf_key, &mid_issuer).unwrap();
            pems.extend([leaf.pem(), mid.pem()]);
        } else {
            let leaf = leaf_params.signed_by(&leaf_key, &root_issuer).unwrap();
            pems.push(leaf.pem());
        }
        pems.push(root.pem());
        Chain {
            leaf_key_pem: leaf_key.serialize_pem(),
            chain_pem: pems.concat(),
            root_pem: root.pem(),
            subject: format!("C=US, ST=WA, O={org}, CN={org} release signer"),
        }
    }
}

impl Chain {
    /// A chain of `cas` CA certificates (the root included) above the leaf, all ECDSA P-256 (what
    /// the crafted envelopes sign with), each from the defaults above changed by
    /// `tweak(level, params)`: 0 is the leaf, `cas` the root, CNs `{org} release signer`,
    /// `{org} ca<level>`, `{org} root`. `leaf_subject` (RFC 4514) replaces the leaf's subject
    /// after rcgen made it, re-signed by its issuer: rcgen writes each attribute type once, and
    /// the subjects an attacker would use repeat them.
    pub fn custom(
        org: &str,
        cas: usize,
        tweak: impl Fn(usize, &mut CertificateParams),
        leaf_subject: Option<&str>,
    ) -> Chain {
        assert!(cas >= 1, "a crafted chain has a root above the leaf");
        let make = |level: usize| {
            let cn = match level {
                0 => format!("{org} release signer"),
                l if l == cas => format!("{org} root"),
                l => format!("{org} ca{l}"),
            };
            let mut p = params(&cn, org, level > 0);
            tweak(level, &mut p);
            (p, KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap())
        };
        let (root_params, root_key) = make(cas);
        let root_pem = root_params.self_signed(&root_key).unwrap().pem();
        let mut pems = vec![root_pem.clone()];
        let mut issuer = Issuer::new(root_params, root_key);
        for level in (1..cas).rev() {
            let (p, key) = make(level);
            pems.push(p.signed_by(&key, &issuer).unwrap().pem());
            issuer = Issuer::new(p, key);
        }
        let (leaf_params, leaf_key) = make(0);
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let leaf_pem = match leaf_subject {
            None => leaf.pem(),
            Some(subject) => resign_with_subject(leaf.der(), subject, issuer.key()),
        };
        pems.push(leaf_pem);
        pems.reverse();
        Chain {
            leaf_key_pem: leaf_key.serialize_pem(),
            chain_pem: pems.concat(),
            root_pem,
            subject: leaf_subject.map_or(format!("C=US, ST=WA, O={org}, CN={org} release signer"), str::to_owned),
        }
    }
}

/// `der` with its subject replaced by `subject` (RFC 4514), signed again by `issuer`.
fn resign_with_subject(der: &[u8], subject: &str, issuer: &KeyPair) -> String {
    use std::str::FromStr;
    use x509_cert::der::{Decode, Encode, EncodePem, pem::LineEnding};
    let mut cert = x509_cert::Certificate::from_der(der).unwrap();
    cert.tbs_certificate.subject = x509_cert::name::Name::from_str(subject).unwrap();
    let signature = issuer.sign(&cert.tbs_certificate.to_der().unwrap()).unwrap();
    cert.signature = x509_cert::der::asn1::BitString::from_bytes(&signature).unwrap();
    cert.to_pem(LineEnding::LF).unwrap()
}

/// The `notation` CLI with a configuration directory of its own.
pub struct Notation {
    pub home: TempDir,
}

impl Notation {
    pub fn new() -> Notation {
        Notation { home: tempfile::Builder::new().prefix("notation-").tempdir().unwrap() }
    }

    fn config(&self) -> PathBuf {
        self.home.path().join("notation")
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let home = self.home.path().to_str().unwrap();
        try_tool(&super::tools_dir().join("notation"), args, &[("XDG_CONFIG_HOME", home), ("HOME", home)], None)
    }

    /// Makes `chain` the default signing key.
    pub fn use_chain(&self, chain: &Chain) {
        let dir = self.config().join("localkeys");
        std::fs::create_dir_all(&dir).unwrap();
        let (key, cert) = (dir.join("signer.key"), dir.join("signer.crt"));
        std::fs::write(&key, &chain.leaf_key_pem).unwrap();
        std::fs::write(&cert, &chain.chain_pem).unwrap();
        let keys = json!({"default": "signer", "keys": [{"name": "signer", "keyPath": key, "certPath": cert}]});
        std::fs::write(self.config().join("signingkeys.json"), keys.to_string()).unwrap();
    }

    /// `notation sign` (JWS or COSE); `referrers_api` stores the signature through the referrers
    /// API where the registry has it, otherwise the tag schema is used.
    pub fn sign(&self, reference: &str, format: &str, referrers_api: bool) {
        let force_tag = format!("--force-referrers-tag={}", !referrers_api);
        let out = self.run(&["sign", "--insecure-registry", "--signature-format", format, &force_tag, reference]);
        out.unwrap_or_else(|e| panic!("{e}"));
    }

    /// `notation sign` through the referrers API with an RFC 3161 countersignature from the TSA at
    /// `tsa_url`, whose root notation checks the response against: its output, or why it failed.
    pub fn sign_timestamped(
        &self,
        reference: &str,
        format: &str,
        tsa_url: &str,
        tsa_root: &Path,
    ) -> Result<String, String> {
        let root = tsa_root.to_str().unwrap();
        let (format_flag, tsa) =
            (["--signature-format", format], ["--timestamp-url", tsa_url, "--timestamp-root-cert", root]);
        let args: Vec<&str> = ["sign", "--insecure-registry", "--force-referrers-tag=false"]
            .into_iter()
            .chain(format_flag)
            .chain(tsa)
            .chain([reference])
            .collect();
        self.run(&args)
    }

    /// Writes the trust policy and trust stores (`(type, store, pem)`) into notation's config.
    pub fn trust(&self, policy: &Value, stores: &[(&str, &str, &str)]) {
        std::fs::create_dir_all(self.config()).unwrap();
        std::fs::write(self.config().join("trustpolicy.json"), policy.to_string()).unwrap();
        let _ = std::fs::remove_dir_all(self.certs_dir());
        for (i, (kind, store, pem)) in stores.iter().enumerate() {
            let dir = self.certs_dir().join(kind).join(store);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("cert-{i}.pem")), pem).unwrap();
        }
    }

    pub fn policy_file(&self) -> PathBuf {
        self.config().join("trustpolicy.json")
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.config().join("truststore").join("x509")
    }

    /// `notation verify`'s verdict under the configured trust.
    pub fn verifies(&self, reference: &str) -> bool {
        self.run(&["verify", "--insecure-registry", reference]).is_ok()
    }
}

/// A trust policy document with one policy.
pub fn policy(scopes: Value, level: &str, stores: &[&str], identities: &[&str]) -> Value {
    json!({"version": "1.0", "trustPolicies": [{"name": "models", "registryScopes": scopes,
        "signatureVerification": {"level": level}, "trustStores": stores, "trustedIdentities": identities}]})
}

/// Attaches `envelope` to `reference` as a Notary Project signature with `oras attach` (tag schema
/// on a registry without the referrers API).
pub fn attach_envelope(reference: &str, media_type: &str, envelope: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signature");
    std::fs::write(&file, envelope).unwrap();
    let blob = format!("signature:{media_type}");
    run_tool(
        &super::tools_dir().join("oras"),
        &["attach", "--plain-http", "--artifact-type", "application/vnd.cncf.notary.signature", reference, &blob],
        &[],
        Some(dir.path()),
    );
}

/// A JWS made here with the leaf key, so that its protected header can say what `notation sign`
/// never says.
pub fn crafted_jws(chain: &Chain, target: &Value, extra_critical: Option<&str>) -> Vec<u8> {
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

pub fn pem_body(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----") && !l.trim().is_empty()).collect();
    STANDARD.decode(body).unwrap()
}
