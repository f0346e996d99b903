//! `scrub --cache-dir DIR`: re-hash a node cache; what the scrub Jobs run.

use std::path::PathBuf;

use anyhow::Context;

use modelpack_operator::exit::Exit;

use super::{Failure, parse_rate};

#[derive(clap::Args, Debug)]
pub struct ScrubArgs {
    #[arg(long, value_name = "DIR")]
    cache_dir: PathBuf,
    /// Most bytes read a second (a quantity: 50Mi). Default: no bound.
    #[arg(long, value_name = "BYTES", value_parser = parse_rate)]
    rate: Option<u64>,
    /// The cache's budget, for the capacity reported.
    #[arg(long, value_name = "SIZE|PERCENT%")]
    cache_limit: Option<modelpack_operator::cache::CacheLimit>,
    /// Also write the JSON result here (a pod's termination message).
    #[arg(long, value_name = "FILE")]
    termination_log: Option<PathBuf>,
}

/// Exit 0 when everything matched, 1 ([`Exit::Refused`]) when something was removed.
pub fn run(args: ScrubArgs) -> Result<Exit, Failure> {
    use modelpack_operator::cache;
    let store = cache::Store::open(&args.cache_dir)?;
    let report = cache::scrub(&store, args.rate)?;
    let outcome = cache::ScrubOutcome { scrub: report, cache: cache::report(&store, args.cache_limit).ok() };
    let message = outcome.to_message();
    if let Some(path) = &args.termination_log {
        std::fs::write(path, &message).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{message}");
    Ok(if outcome.scrub.clean() { Exit::Ok } else { Exit::Refused })
}
