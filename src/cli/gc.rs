//! `gc --cache-dir DIR [--unlink deployments/NS/NAME]`: what a deleted deployment's cleanup Jobs run.

use std::path::PathBuf;

use anyhow::Context;

use modelpack_operator::exit::Exit;

use super::Failure;

#[derive(clap::Args, Debug)]
pub struct GcArgs {
    #[arg(long, value_name = "DIR")]
    cache_dir: PathBuf,
    /// Remove `deployments/<NS>/<NAME>` before collecting.
    #[arg(long, value_name = "deployments/NS/NAME")]
    unlink: Option<String>,
    /// The cache's budget, for the capacity reported.
    #[arg(long, value_name = "SIZE|PERCENT%")]
    cache_limit: Option<modelpack_operator::cache::CacheLimit>,
    /// Also write the JSON result here (a pod's termination message).
    #[arg(long, value_name = "FILE")]
    termination_log: Option<PathBuf>,
}

pub fn run(args: GcArgs) -> Result<Exit, Failure> {
    use modelpack_operator::cache;
    let store = cache::Store::open(&args.cache_dir)?;
    let collected = match &args.unlink {
        Some(link) => {
            let (namespace, name) = cache::parse_link(link)?;
            cache::unlink(&store, &namespace, &name)?
        }
        None => cache::collect(&store, None)?,
    };
    let outcome = cache::GcOutcome { collected, cache: cache::report(&store, args.cache_limit).ok() };
    let message = outcome.to_message();
    if let Some(path) = &args.termination_log {
        std::fs::write(path, &message).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{message}");
    Ok(Exit::Ok)
}
