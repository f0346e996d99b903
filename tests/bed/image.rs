//! The operator image, built without Docker by e2e/image (e2e/test builds and pushes it to the bed
//! registry first and names it in MODELPACK_E2E_OPERATOR_IMAGE; without that, this test builds it):
//! an OCI image whose one layer is the static binary and a CA bundle, whose entrypoint runs the
//! controller, and which the chart uses for both the operator and the pull Jobs.

use crate::support;

use support::{Bed, run_tool};

fn image() -> String {
    if let Ok(reference) = std::env::var("MODELPACK_E2E_OPERATOR_IMAGE") {
        return reference;
    }
    let bed = Bed::get();
    let reference = format!("{}/modelpack-operator:{}", bed.plain.host, env!("CARGO_PKG_VERSION"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/image");
    run_tool(std::path::Path::new(script), &[&reference], &[("CRANE", bed.tool("crane").to_str().unwrap())], None);
    reference
}

#[test]
fn the_image_holds_the_static_binary_and_runs_it() {
    let bed = Bed::get();
    let reference = image();
    let crane = bed.tool("crane");
    let config: serde_json::Value =
        serde_json::from_str(&run_tool(&crane, &["config", "--insecure", &reference], &[], None)).unwrap();
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/modelpack-operator"]));
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["run"]));
    assert_eq!((config["os"].as_str(), config["architecture"].as_str()), (Some("linux"), Some("amd64")));
    let manifest: serde_json::Value =
        serde_json::from_str(&run_tool(&crane, &["manifest", "--insecure", &reference], &[], None)).unwrap();
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1), "one layer: {manifest}");

    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("fs.tar");
    run_tool(&crane, &["export", "--insecure", &reference, tar.to_str().unwrap()], &[], None);
    let mut archive = tar::Archive::new(std::fs::File::open(&tar).unwrap());
    archive.unpack(dir.path().join("fs")).unwrap();
    let binary = dir.path().join("fs/modelpack-operator");
    assert!(dir.path().join("fs/etc/ssl/certs/ca-certificates.crt").is_file(), "no CA bundle");
    let ldd = std::process::Command::new("ldd").arg(&binary).output().unwrap();
    let ldd = format!("{}{}", String::from_utf8_lossy(&ldd.stdout), String::from_utf8_lossy(&ldd.stderr));
    assert!(!ldd.contains("=>"), "the binary is dynamically linked:\n{ldd}");
    let version = run_tool(&binary, &["--version"], &[], None);
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let crds = run_tool(&binary, &["crd"], &[], None);
    assert_eq!(crds, include_str!("../../crds/crds.yaml"), "the image's binary is not this build");

    // The chart runs this image for the operator and for the pull Jobs.
    let deploy = include_str!("../../deploy/modelpack-operator.yaml");
    let expected = format!("modelpack-operator:{}", env!("CARGO_PKG_VERSION"));
    assert!(deploy.contains(&format!("image: {expected}")), "operator image");
    assert!(deploy.contains(&format!("--puller-image={expected}")), "puller image");
    assert!(reference.ends_with(&format!("/{expected}")), "{reference}");
}
