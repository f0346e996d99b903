//! Unit tests of `timestamp` on a real TSA token.

use super::*;

/// A token from sigstore's timestamp-server v2.0.3 (the module e2e/tools/timestamp-authority pins; file signer, chain
/// included) over [`MESSAGE`], requested with `openssl ts -query -sha256 -cert`; its TSA chain
/// (made with openssl) ends in [`ROOT`]. `openssl ts -reply -text` read its time as
/// 2026-12-07 03:06:54 GMT, accuracy one second, and `openssl ts -verify` accepted it.
const TOKEN: &[u8] = include_bytes!("../../fuzz/seeds/timestamp/sigstore-tsa.der");
const MESSAGE: &[u8] = b"the stamped signature bytes";
const ROOT: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBuDCCAV6gAwIBAgIUbYaQw8Gf5Z7mSJfu0aosvyfLPBwwCgYIKoZIzj0EAwIw\n\
OjELMAkGA1UEBhMCVVMxEDAOBgNVBAoMB2ZpeHR1cmUxGTAXBgNVBAMMEGZpeHR1\n\
cmUgVFNBIHJvb3QwHhcNMjYxMjA3MDMwNjUyWhcNNDYxMjAyMDMwNjUyWjA6MQsw\n\
CQYDVQQGEwJVUzEQMA4GA1UECgwHZml4dHVyZTEZMBcGA1UEAwwQZml4dHVyZSBU\n\
U0Egcm9vdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABF76PBdmYpjz5UvZmA7L\n\
vhSHe5U7vBXm8m1RgAii+kM84zaUXxuwxG+Bh9EauO31jTu5eX3OBOxbtxZlQssU\n\
spKjQjBAMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQW\n\
BBSi8VteEKtFb9eZYA3QKv924nyWhTAKBggqhkjOPQQDAgNIADBFAiA7Nt+PU5sX\n\
w3LfgeO58zZXpLJa3WgeFWvFK/KxZIEm7QIhAI90a62x8OmnXBrvBuaPGAa2k62F\n\
hJK0A5G2cEjRQrEY\n\
-----END CERTIFICATE-----";

fn root() -> Vec<Cert> {
    Cert::from_pem_bundle(ROOT.as_bytes()).unwrap()
}

#[test]
fn a_real_token_verifies_and_says_when_and_who() {
    let t = verify(TOKEN, MESSAGE, &root()).unwrap();
    assert_eq!(t.time(), "2026-12-07T03:06:54Z");
    assert_eq!(t.accuracy_us, 1_000_000);
    assert_eq!(t.authority, "C=US, O=fixture, CN=fixture TSA");
    assert_eq!(t.chain.len(), 2);
}

#[test]
fn each_broken_rule_is_named() {
    let refused = |token: &[u8], message: &[u8], roots: &[Cert], needle: &str| {
        let err = verify(token, message, roots).unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    };
    refused(TOKEN, b"another signature", &root(), "messageImprint is not the hash");
    refused(TOKEN, MESSAGE, &[], "does not chain to a certificate of the tsa trust store");
    let stranger = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "fixture TSA root");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_root = Cert::from_der(params.self_signed(&stranger).unwrap().der()).unwrap();
    refused(TOKEN, MESSAGE, &[other_root], "does not chain to a certificate of the tsa trust store");
    // The genTime changed after signing: the signed messageDigest no longer matches.
    let mut altered = TOKEN.to_vec();
    let at = altered.windows(15).position(|w| w == b"20261207030654Z").unwrap();
    altered[at + 13] = b'9';
    refused(&altered, MESSAGE, &root(), "messageDigest does not match");
    // The TSA's signature (the token's last bytes) damaged.
    let mut forged = TOKEN.to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    refused(&forged, MESSAGE, &root(), "signature does not verify");
    for cut in [0, 1, TOKEN.len() / 2, TOKEN.len() - 1] {
        refused(&TOKEN[..cut], MESSAGE, &root(), "malformed");
    }
    refused(&vec![0u8; MAX_TOKEN + 1], MESSAGE, &root(), "more than");
}

/// The pieces a caller with its own policy uses, on the TSA's whole response (status and
/// token) as well as on the token alone.
#[test]
fn the_token_api_reads_a_response_or_a_token() {
    let response = include_bytes!("../../fuzz/seeds/timestamp/sigstore-tsa-response.der");
    for bytes in [&response[..], TOKEN] {
        let token = Token::parse(bytes).unwrap();
        assert_eq!(token.gen_time(), 1_796_612_814, "2026-12-07T03:06:54Z");
        assert!(token.covers(MESSAGE).unwrap());
        assert!(!token.covers(b"other").unwrap());
        let tsa = token.certificates().iter().find(|c| c.subject().to_string().ends_with("CN=fixture TSA")).unwrap();
        assert!(token.signed_by(tsa).unwrap());
        assert!(!token.signed_by(&root()[0]).unwrap(), "the root did not sign the token");
    }
}

#[test]
fn gen_time_reads_fractional_seconds_and_refuses_other_forms() {
    let base = 1_700_000_000i64 * 1_000_000; // 2023-11-14T22:13:20Z
    assert_eq!(generalized_time_us(b"20231114221320Z"), Ok(base));
    assert_eq!(generalized_time_us(b"20231114221320.5Z"), Ok(base + 500_000));
    assert_eq!(generalized_time_us(b"20231114221320.1234567Z"), Ok(base + 123_456));
    for bad in
        [&b"20231114221320"[..], b"20231114221320+0100", b"2023111422132Z", b"20231314221320Z", b"20231114221320.Z"]
    {
        assert!(generalized_time_us(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn the_range_must_lie_within_the_validity() {
    let t = Timestamp { time_us: 100_000_000, accuracy_us: 1_000_000, authority: String::new(), chain: Vec::new() };
    assert!(t.within(99, 101));
    assert!(!t.within(100, 101), "the lower limit (99 s) is before notBefore");
    assert!(!t.within(99, 100), "the upper limit (101 s) is after notAfter");
}
