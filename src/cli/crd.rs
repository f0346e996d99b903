//! `crd`: print (or write) the CustomResourceDefinitions.

use std::path::{Path, PathBuf};

use anyhow::Context;

use modelpack_operator::exit::Exit;

use super::Failure;

#[derive(clap::Args, Debug)]
pub struct CrdArgs {
    /// Write the YAML to FILE (atomically) instead of standard output.
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn run(args: CrdArgs) -> Result<Exit, Failure> {
    let yaml = modelpack_operator::api::crds_yaml().map_err(anyhow::Error::from)?;
    match args.output {
        None => print!("{yaml}"),
        Some(path) => {
            write_atomically(&path, yaml.as_bytes()).with_context(|| format!("writing {}", path.display()))?
        }
    }
    Ok(Exit::Ok)
}

/// Writes beside the target and renames, so a reader never sees a partial file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
