//! Generated files are current, without the bed: crds/crds.yaml is what `crd` prints now (the
//! chart's copy and deploy/ are checked on the bed, where helm is).

#[test]
fn crds_directory_holds_the_generated_yaml() {
    let on_disk = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/crds.yaml")).unwrap();
    let generated = modelpack_operator::api::crds_yaml().unwrap();
    assert!(on_disk == generated, "crds/crds.yaml is stale: run `cargo run -- crd > crds/crds.yaml`");
}
