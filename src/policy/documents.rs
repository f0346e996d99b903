//! ModelPolicy YAML files as `check` reads them: one or several documents per file, each a
//! `modelpack.dev/v1alpha1` `ModelPolicy`.

use serde::Deserialize;

use super::Error;
use crate::api::ModelPolicySpec;

const API_VERSION: &str = "modelpack.dev/v1alpha1";
const KIND: &str = "ModelPolicy";

/// One policy read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyDocument {
    pub name: String,
    pub spec: ModelPolicySpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: ModelPolicySpec,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
}

/// Every ModelPolicy of a (multi-document) YAML text; `origin` names it in errors.
pub fn parse_documents(text: &str, origin: &str) -> Result<Vec<PolicyDocument>, Error> {
    let invalid = |detail: String| Error::InvalidDocument { origin: origin.to_owned(), detail };
    let documents: Vec<Option<Document>> =
        serde_saphyr::from_multiple(text).map_err(|e| invalid(e.to_string().replace('\n', " ")))?;
    let mut policies = Vec::new();
    for (i, document) in documents.into_iter().flatten().enumerate() {
        if document.api_version != API_VERSION || document.kind != KIND {
            return Err(invalid(format!(
                "document {} is {} {}, not {API_VERSION} {KIND}",
                i + 1,
                document.api_version,
                document.kind
            )));
        }
        policies.push(PolicyDocument { name: document.metadata.name, spec: document.spec });
    }
    if policies.is_empty() {
        return Err(invalid("no ModelPolicy in it".to_owned()));
    }
    Ok(policies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PolicyAction;

    #[test]
    fn several_documents_with_defaults() {
        let text = "apiVersion: modelpack.dev/v1alpha1\nkind: ModelPolicy\nmetadata: {name: a}\nspec:\n  rules:\n  - {name: r, expression: 'true'}\n---\napiVersion: modelpack.dev/v1alpha1\nkind: ModelPolicy\nmetadata: {name: b}\nspec: {action: Audit, rules: [{name: s, expression: 'false', message: m}]}\n---\n";
        let docs = parse_documents(text, "f.yaml").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].name.as_str(), docs[0].spec.action), ("a", PolicyAction::Enforce));
        assert_eq!((docs[1].name.as_str(), docs[1].spec.action), ("b", PolicyAction::Audit));
        assert_eq!(docs[1].spec.rules[0].message.as_deref(), Some("m"));
    }

    #[test]
    fn other_kinds_and_broken_yaml_name_the_file() {
        let other = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\nspec: {rules: []}\n";
        let err = parse_documents(other, "f.yaml").unwrap_err().to_string();
        assert!(err.starts_with("f.yaml: document 1 is v1 ConfigMap"), "{err}");
        let broken = parse_documents("apiVersion: [", "g.yaml").unwrap_err().to_string();
        assert!(broken.starts_with("g.yaml: ") && !broken.contains('\n'), "{broken}");
        assert!(parse_documents("", "e.yaml").is_err());
    }
}
