//! Fixture ModelPacks made by the real peer tools: modctl (which writes the legacy `vnd.cnai`
//! family) and oras with the specification's `vnd.cncf` media types and annotations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tempfile::TempDir;

use super::{Bed, Registry, run_tool};

/// Files of a model on disk, with deterministic pseudo-random contents.
pub struct ModelFiles {
    pub dir: TempDir,
    pub files: Vec<(String, Vec<u8>)>,
}

impl ModelFiles {
    /// `files`: (relative path, size). The same seed gives the same bytes.
    pub fn new(seed: u64, files: &[(&str, usize)]) -> ModelFiles {
        // modctl skips hidden paths, and tempfile's default names start with a dot.
        let dir = tempfile::Builder::new().prefix("model-").tempdir().unwrap();
        let mut out = Vec::new();
        for (i, (path, size)) in files.iter().enumerate() {
            let data = pseudo_random(seed.wrapping_mul(31).wrapping_add(i as u64), *size);
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, &data).unwrap();
            out.push(((*path).to_owned(), data));
        }
        ModelFiles { dir, files: out }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // xorshift64*: fast, and good enough to defeat compression and deduplication.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Environment for a Go peer tool talking to `registry`: its own docker config (credentials never
/// shared between tests) and the bed's CA for the TLS registry.
fn tool_env(registry: &Registry, home: &Path) -> Vec<(String, String)> {
    let mut env = vec![
        ("HOME".to_owned(), home.display().to_string()),
        ("DOCKER_CONFIG".to_owned(), home.join(".docker").display().to_string()),
    ];
    if let Some(ca) = &registry.tls_ca {
        env.push(("SSL_CERT_FILE".to_owned(), ca.display().to_string()));
    }
    env
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Builds the model with `modctl` straight into the registry; returns the digest modctl reported.
pub fn modctl_push(bed: &Bed, registry: &Registry, repo: &str, tag: &str, model: &ModelFiles) -> String {
    modctl_push_with(bed, registry, repo, tag, model, &[])
}

/// [`modctl_push`] with extra `modctl build` flags (e.g. `--raw=false` for tar layers).
pub fn modctl_push_with(
    bed: &Bed,
    registry: &Registry,
    repo: &str,
    tag: &str,
    model: &ModelFiles,
    build_flags: &[&str],
) -> String {
    let modctl = bed.tool("modctl");
    let home = tempfile::tempdir().unwrap();
    let env = tool_env(registry, home.path());
    let env = env_refs(&env);
    let home_dir = home.path().to_str().unwrap();
    let storage = format!("{home_dir}/storage");
    let logs = format!("{home_dir}/logs");
    let common = ["--storage-dir", storage.as_str(), "--log-dir", logs.as_str(), "--no-progress"];
    let transport: &[&str] = if registry.is_tls() { &[] } else { &["--plain-http"] };
    let with = |head: &[&str], tail: &[&str]| -> Vec<String> {
        head.iter().chain(&common).chain(transport).chain(tail).map(|s| (*s).to_owned()).collect()
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_tool(&modctl, &args, &env, None)
    };
    if let Some((user, password)) = &registry.basic_auth {
        run(with(&["login"], &["-u", user, "-p", password, &registry.host]));
    }
    let dir = model.path().to_str().unwrap();
    let name = repo.rsplit('/').next().unwrap();
    // The Modelfile goes beside the model, not into it, so it is not packed as a file.
    run_tool(
        &modctl,
        &[
            "modelfile",
            "generate",
            "--storage-dir",
            &storage,
            "--log-dir",
            &logs,
            "-O",
            home_dir,
            "--name",
            name,
            "--arch",
            "transformer",
            "--family",
            "llama",
            "--format",
            "safetensors",
            "--param-size",
            "1M",
            "--precision",
            "float16",
            dir,
        ],
        &env,
        None,
    );
    let modelfile = format!("{home_dir}/Modelfile");
    let target = format!("{}/{repo}:{tag}", registry.host);
    let mut build = vec!["--output-remote", "-f", &modelfile, "-t", &target];
    build.extend(build_flags);
    build.push(dir);
    run(with(&["build"], &build));
    // What modctl itself reports for the artifact it pushed.
    let inspected = run(with(&["inspect"], &["--remote", &target]));
    let parsed: serde_json::Value =
        serde_json::from_str(&inspected).unwrap_or_else(|e| panic!("modctl inspect output ({e}):\n{inspected}"));
    parsed["Digest"].as_str().unwrap_or_else(|| panic!("no Digest in modctl inspect:\n{inspected}")).to_owned()
}

/// The `vnd.cncf` layer media type a file would get from a ModelPack producer.
pub fn cncf_media_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    if name.ends_with(".md") || name.starts_with("LICENSE") {
        "application/vnd.cncf.model.doc.v1.raw"
    } else if name.ends_with(".py") {
        "application/vnd.cncf.model.code.v1.raw"
    } else if name.ends_with(".json") || name.ends_with(".txt") || name.ends_with(".model") {
        "application/vnd.cncf.model.weight.config.v1.raw"
    } else {
        "application/vnd.cncf.model.weight.v1.raw"
    }
}

/// A minimal valid ModelPack config for `files` (diffIds equal the raw layers' digests).
pub fn cncf_config(name: &str, model: &ModelFiles) -> Value {
    let diff_ids: Vec<String> = model.files.iter().map(|(_, data)| super::craft::sha256(data)).collect();
    json!({
        "descriptor": {"name": name, "createdAt": "2026-11-01T00:00:00Z", "licenses": ["Apache-2.0"]},
        "config": {"architecture": "transformer", "format": "safetensors", "paramSize": "1M", "precision": "float16"},
        "modelfs": {"type": "layers", "diffIds": diff_ids}
    })
}

/// Pushes the files with `oras` as a `vnd.cncf` ModelPack (raw layers, `org.cncf.model.filepath`
/// annotations); returns the digest oras reported.
pub fn oras_push_cncf(
    bed: &Bed,
    registry: &Registry,
    repo: &str,
    tag: &str,
    model: &ModelFiles,
    config: &Value,
) -> String {
    let oras = bed.tool("oras");
    let home = tempfile::tempdir().unwrap();
    let env = tool_env(registry, home.path());
    let env = env_refs(&env);
    let config_path: PathBuf = home.path().join("config.json");
    std::fs::write(&config_path, serde_json::to_vec(config).unwrap()).unwrap();
    let mut annotations = BTreeMap::new();
    for (path, _) in &model.files {
        annotations.insert(path.clone(), json!({"org.cncf.model.filepath": path}));
    }
    let annotation_file = home.path().join("annotations.json");
    std::fs::write(&annotation_file, serde_json::to_vec(&annotations).unwrap()).unwrap();

    let target = format!("{}/{repo}:{tag}", registry.host);
    let config_arg = format!("{}:application/vnd.cncf.model.config.v1+json", config_path.display());
    let mut args: Vec<String> = vec![
        "push".into(),
        "--artifact-type".into(),
        "application/vnd.cncf.model.manifest.v1+json".into(),
        "--config".into(),
        config_arg,
        "--annotation-file".into(),
        annotation_file.display().to_string(),
        "--format".into(),
        "json".into(),
    ];
    if let Some(ca) = &registry.tls_ca {
        args.extend(["--ca-file".into(), ca.display().to_string()]);
    } else {
        args.push("--plain-http".into());
    }
    if let Some((user, password)) = &registry.basic_auth {
        args.extend(["-u".into(), user.clone(), "-p".into(), password.clone()]);
    }
    args.push(target);
    for (path, _) in &model.files {
        args.push(format!("{path}:{}", cncf_media_type(path)));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_tool(&oras, &args, &env, Some(model.path()));
    let parsed: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("oras output is not JSON ({e}):\n{out}"));
    parsed["digest"].as_str().unwrap_or_else(|| panic!("no digest in oras output:\n{out}")).to_owned()
}

/// A cosign key pair made by the real `cosign generate-key-pair` (empty password), signing offline
/// (no transparency log) as CI and air-gapped users do.
pub struct CosignKey {
    pub dir: TempDir,
}

impl CosignKey {
    pub fn generate() -> CosignKey {
        let dir = tempfile::Builder::new().prefix("cosign-").tempdir().unwrap();
        let bed = Bed::get();
        run_tool(&bed.tool("cosign"), &["generate-key-pair"], &[("COSIGN_PASSWORD", "")], Some(dir.path()));
        CosignKey { dir }
    }

    pub fn public_key(&self) -> PathBuf {
        self.dir.path().join("cosign.pub")
    }

    pub fn public_pem(&self) -> String {
        std::fs::read_to_string(self.public_key()).unwrap()
    }

    /// `cosign sign` of `host/repo@digest` on a plain-HTTP bed registry.
    pub fn sign(&self, reference: &str) {
        let key = self.dir.path().join("cosign.key");
        let args = [
            "sign",
            "--key",
            key.to_str().unwrap(),
            "--tlog-upload=false",
            "--allow-http-registry",
            "--allow-insecure-registry",
            "--yes",
            reference,
        ];
        run_tool(&Bed::get().tool("cosign"), &args, &[("COSIGN_PASSWORD", "")], Some(self.dir.path()));
    }
}

/// `cosign verify` with these keys (any may verify, as `--key` is tried one at a time): its verdict.
pub fn cosign_verifies(reference: &str, keys: &[&CosignKey]) -> bool {
    keys.iter().any(|k| {
        let public = k.public_key();
        let args = [
            "verify",
            "--key",
            public.to_str().unwrap(),
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            "--allow-insecure-registry",
            reference,
        ];
        super::try_tool(&Bed::get().tool("cosign"), &args, &[], Some(k.dir.path())).is_ok()
    })
}
