//! RFC 3161 fixtures without the bed: a registry of the test's own (olareg, referrers API, in
//! memory) and a real Time Stamping Authority (sigstore's timestamp-authority: its file signer and
//! response handler, e2e/tools/timestamp-authority) on 127.0.0.1, with TSA certificate chains made with rcgen (any validity, so that a TSA certificate
//! can expire between signing and verifying).

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tempfile::TempDir;
use time::OffsetDateTime;

use super::{Registry, tools_dir};

/// A process of the test's own, killed (by its handle) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

fn start(tool: &str, args: &[&str], port: u16, log: PathBuf) -> Process {
    let out = std::fs::File::create(&log).expect("log file");
    let child = Command::new(tools_dir().join(tool))
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {tool} (e2e/tools/build builds it): {e}"));
    let process = Process(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("{tool} did not listen on {port}: {}", &text[text.len().saturating_sub(1500)..]);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    process
}

/// An OCI registry with the referrers API on 127.0.0.1 (olareg, memory store).
pub struct LocalRegistry {
    pub registry: Registry,
    _process: Process,
    _dir: TempDir,
}

impl LocalRegistry {
    pub fn start() -> LocalRegistry {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let args = ["serve", "--addr", "127.0.0.1", "--port", &port.to_string(), "--store-type", "mem"];
        let process = start("olareg", &args, port, dir.path().join("olareg.log"));
        let registry =
            Registry { host: format!("127.0.0.1:{port}"), tls_ca: None, basic_auth: None, referrers_api: true };
        LocalRegistry { registry, _process: process, _dir: dir }
    }
}

/// A TSA certificate chain: root → timestamping leaf, ECDSA P-256.
pub struct TsaChain {
    pub leaf_key_pem: String,
    /// Leaf first, root last.
    pub chain_pem: String,
    pub root_pem: String,
    pub subject: String,
}

impl TsaChain {
    /// The leaf is valid from a day ago for `leaf_seconds` from now.
    pub fn new(name: &str, leaf_seconds: i64) -> TsaChain {
        let now = OffsetDateTime::now_utc();
        let params = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CountryName, "US");
            p.distinguished_name.push(DnType::OrganizationName, name);
            p.distinguished_name.push(DnType::CommonName, cn);
            p.not_before = now - time::Duration::days(1);
            p.not_after = now + time::Duration::days(30);
            p
        };
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = params(&format!("{name} TSA root"));
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = root_params.self_signed(&root_key).unwrap();
        let issuer = Issuer::new(root_params, root_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = params(&format!("{name} TSA"));
        leaf_params.not_after = now + time::Duration::seconds(leaf_seconds);
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // RFC 3161 2.3: extendedKeyUsage timeStamping, alone and critical (rcgen writes it
        // non-critical, so it is written here).
        let mut eku = CustomExtension::from_oid_content(
            &[2, 5, 29, 37],
            vec![0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08],
        );
        eku.set_criticality(true);
        leaf_params.custom_extensions.push(eku);
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        TsaChain {
            leaf_key_pem: leaf_key.serialize_pem(),
            chain_pem: [leaf.pem(), root.pem()].concat(),
            root_pem: root.pem(),
            subject: format!("C=US, O={name}, CN={name} TSA"),
        }
    }
}

/// sigstore's timestamp-authority signing with `chain`'s leaf key, the chain in its responses.
pub struct Tsa {
    pub url: String,
    /// The root as a PEM file (what `notation sign --timestamp-root-cert` takes).
    pub root_file: PathBuf,
    _process: Process,
    _dir: TempDir,
}

impl Tsa {
    pub fn start(chain: &TsaChain) -> Tsa {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("writing a TSA file");
            path.to_str().unwrap().to_owned()
        };
        let (key, certs, root) = (
            write("tsa.key", &chain.leaf_key_pem),
            write("chain.pem", &chain.chain_pem),
            write("root.pem", &chain.root_pem),
        );
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let args = ["-addr", &listen, "-key", &key, "-chain", &certs];
        let process = start("timestamp-authority", &args, port, dir.path().join("tsa.log"));
        Tsa {
            url: format!("http://127.0.0.1:{port}/api/v1/timestamp"),
            root_file: root.into(),
            _process: process,
            _dir: dir,
        }
    }
}
