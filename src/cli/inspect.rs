//! `inspect REF`: resolve a reference and print the ModelPack's metadata, files and referrers.

use serde::Serialize;

use modelpack_operator::exit::Exit;
use modelpack_operator::modelpack::{Family, ModelDescriptor, ModelProperties};
use modelpack_operator::policy::{self, LayerVar, ReferrerVar};
use modelpack_operator::printable::{printable, printable_json};
use modelpack_operator::registry::{self, Repository};

use super::{Failure, Output, RegistryArgs, Usage};

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// `registry/repository[:tag|@sha256:…]`.
    reference: String,
    #[command(flatten)]
    registry: RegistryArgs,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// `inspect REF`: resolve and describe a ModelPack.
pub async fn run(args: InspectArgs) -> Result<Exit, Failure> {
    let (reference, json_output) = (args.reference.as_str(), args.output == Output::Json);
    let args = &args.registry;
    let (repo, spec) = Repository::parse_reference(reference)?;
    let registry = args.registry_for(&repo).usage()?;
    let resolution = registry.resolve(&repo, &spec).await?;
    let inspection = registry::inspect(&registry, &repo, &resolution.digest).await?;
    // What is attached is described, not required (`check` requires it): a registry that answers the
    // referrers request with an error still gets its artifact inspected, with a warning.
    let (referrers, unread) = match registry.referrers(&repo, &resolution.digest).await {
        Ok(referrers) => (referrers, None),
        Err(e) => (Vec::new(), Some(format!("referrers not read: {e}"))),
    };
    let variables = policy::Variables::of(&repo, &inspection, resolution.tag.as_deref(), &referrers)?;
    let collected = policy::Collected { inspection, referrers, variables };
    let mut report = InspectReport::new(reference, resolution.tag, &collected);
    report.warnings.extend(unread);
    if json_output {
        println!("{}", printable_json(&serde_json::to_string_pretty(&report)?));
    } else {
        print!("{}", report.text());
    }
    Ok(Exit::Ok)
}

/// What `inspect` prints, as JSON (`-o json`) or as text.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InspectReport<'a> {
    reference: &'a str,
    digest: &'a str,
    tag: Option<String>,
    family: Family,
    artifact_type: Option<&'a str>,
    config_digest: &'a str,
    size: i64,
    descriptor: &'a ModelDescriptor,
    config: &'a ModelProperties,
    layers: &'a [LayerVar],
    /// Every file's contents summed.
    weights: &'a modelpack_operator::modelpack::contents::Weights,
    /// What is attached to the digest (referrers API or `sha256-<hex>` tag, first page).
    referrers: &'a [ReferrerVar],
    warnings: Vec<String>,
}

impl<'a> InspectReport<'a> {
    fn new(reference: &'a str, tag: Option<String>, collected: &'a policy::Collected) -> InspectReport<'a> {
        let inspection = &collected.inspection;
        let manifest = &inspection.manifest;
        InspectReport {
            reference,
            digest: &inspection.digest,
            tag,
            family: inspection.family,
            artifact_type: manifest.artifact_type.as_deref(),
            config_digest: &manifest.config.digest,
            size: manifest.total_size(),
            descriptor: &inspection.config.descriptor,
            config: &inspection.config.config,
            layers: &collected.variables.layers,
            weights: &collected.variables.weights,
            referrers: &collected.variables.referrers,
            warnings: inspection.warnings.iter().map(|w| format!("{w:?}")).collect(),
        }
    }

    /// Every string from the registry is made printable ([`printable`]), field by field, so that
    /// no value can start a line of its own either.
    fn text(&self) -> String {
        let mut s = String::new();
        let mut field = |label: &str, text: &str| {
            if !text.is_empty() {
                s.push_str(&format!("{:<14} {}\n", printable(label), printable(text)));
            }
        };
        field("Digest:", self.digest);
        field("Tag:", self.tag.as_deref().unwrap_or_default());
        field("Family:", &self.family.to_string());
        field("ArtifactType:", self.artifact_type.unwrap_or_default());
        field("Config:", self.config_digest);
        field("Size:", &self.size.to_string());
        // The config's objects print field by field, as their JSON names and values.
        for section in [serde_json::to_value(self.descriptor), serde_json::to_value(self.config)] {
            let Ok(serde_json::Value::Object(map)) = section else { continue };
            for (k, value) in map {
                let text = match value {
                    serde_json::Value::String(t) => t,
                    other => other.to_string(),
                };
                field(&format!("{k}:"), &text);
            }
        }
        field("Weights:", &self.weights.summary());
        for w in &self.warnings {
            field("Warning:", w);
        }
        s.push_str("Files:\n");
        for l in self.layers {
            let (path, digest, media_type) = (printable(&l.path), printable(&l.digest), printable(&l.media_type));
            s.push_str(&format!("  {path:<40} {:>12}  {digest}  {media_type}\n", l.size));
            s.push_str(&format!("  {:<40} {}\n", "", printable(&l.contents.line())));
        }
        if !self.referrers.is_empty() {
            s.push_str("Referrers:\n");
            for r in self.referrers {
                s.push_str(&format!("  {:<40} {}\n", printable(&r.artifact_type), printable(&r.digest)));
            }
        }
        s
    }
}
