//! The binary: parse the command line, build the one runtime, run the subcommand (each in its own
//! file under `cli/`), and exit with the code of the one table ([`Exit`]).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use modelpack_operator::exit::Exit;

mod cli;

/// Kubernetes operator for CNCF ModelPack artifacts: resolve, verify and pre-pull models onto nodes.
#[derive(Parser, Debug)]
#[command(name = "modelpack-operator", version, about, after_help = Exit::table())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controllers against the cluster of the current kubeconfig or in-cluster config.
    Run(cli::run::RunArgs),
    /// Print the CustomResourceDefinitions (YAML) for Model, ModelDeployment and ModelPolicy.
    Crd(cli::crd::CrdArgs),
    /// Pull a ModelPack by digest into a node cache (what the per-node Jobs run). Exit 1: the
    /// artifact was refused; 3: it does not fit, even after eviction; 4: the registry or the disk
    /// failed.
    #[command(after_help = Exit::table())]
    Pull(cli::pull::PullArgs),
    /// Resolve a reference and print the ModelPack's metadata and files.
    #[command(after_help = Exit::table())]
    Inspect(cli::inspect::InspectArgs),
    /// Verify the signature of a ModelPack (notation, cosign or OpenSSF model signing). Exit 0: verified; 1: rejected;
    /// 4: could not decide (registry down, timeout).
    #[command(after_help = Exit::table())]
    Verify(cli::verify::VerifyArgs),
    /// Evaluate ModelPolicy rules on a ModelPack. Exit 0: every Enforce rule passes; 1: one fails;
    /// 2: a policy that does not compile; 4: could not decide (registry down, timeout).
    #[command(after_help = Exit::table())]
    Check(cli::check::CheckArgs),
    /// Collect cache entries no deployment keeps; with --unlink, forget one deployment first (what
    /// a deleted ModelDeployment's cleanup Jobs run).
    #[command(after_help = Exit::table())]
    Gc(cli::gc::GcArgs),
    /// Re-hash every blob and model file of a node cache; remove what no longer matches, with every
    /// model built from it. Exit 0: clean; 1: something was removed; 4: the scrub failed.
    #[command(after_help = Exit::table())]
    Scrub(cli::scrub::ScrubArgs),
}

#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // clap exits 2 on a usage error, the table's code.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return report(cli::Failure { exit: Exit::Undecided, error: e.into() }),
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => cli::run::run(args).await,
            Command::Crd(args) => cli::crd::run(args),
            Command::Pull(args) => cli::pull::run(args).await,
            Command::Inspect(args) => cli::inspect::run(args).await,
            Command::Verify(args) => cli::verify::run(args).await,
            Command::Check(args) => cli::check::run(args).await,
            Command::Gc(args) => cli::gc::run(args),
            Command::Scrub(args) => cli::scrub::run(args),
        }
    });
    match result {
        Ok(exit) => exit.into(),
        Err(failure) => report(failure),
    }
}

/// One line naming the cause, then the failure's code.
fn report(failure: cli::Failure) -> ExitCode {
    eprintln!("error: {}", cli::one_line(&failure.error));
    failure.exit.into()
}
