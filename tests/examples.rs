//! The manifests under docs/examples are what users copy: every Model and ModelPolicy in them must
//! be one the API types accept, and every policy's rules must compile.

use modelpack_operator::api::Model;
use modelpack_operator::policy;
use modelpack_operator::verify::keyless::Matcher;

#[test]
fn every_example_manifest_parses_and_its_policies_compile() {
    let mut seen = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/examples")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in text.split("\n---\n") {
            let origin = path.display().to_string();
            if doc.contains("\nkind: ModelPolicy") {
                for p in policy::parse_documents(doc, &origin).unwrap() {
                    policy::compile(&p.name, &p.spec).unwrap_or_else(|e| panic!("{origin}: {}: {e}", p.name));
                    seen += 1;
                }
            } else if doc.contains("\nkind: Model\n") {
                let model: Model = serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{origin}: {e}"));
                assert!(!model.spec.repository.is_empty(), "{origin}");
                // The identities compile as the controller compiles them.
                for id in model.spec.verify.iter().flat_map(|v| &v.match_oidc_identity) {
                    for pattern in [&id.issuer, &id.subject] {
                        Matcher::regexp(pattern).unwrap_or_else(|e| panic!("{origin}: {pattern}: {e}"));
                    }
                }
                seen += 1;
            }
        }
    }
    assert!(seen >= 2, "no Model or ModelPolicy found under docs/examples");
}
