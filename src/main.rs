//! The `gatehouse` binary: parse the command line, load config, init logs, run a subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatehouse::{Config, commands, telemetry};

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "A validating admission webhook for Kubernetes"
)]
struct Cli {
    /// YAML configuration file (environment GATEHOUSE_* overrides it).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the webhook over HTTPS, and health and metrics over HTTP.
    Serve,
    /// Evaluate one AdmissionReview offline and print the response review.
    /// Exit code: 0 allowed, 1 denied, 2 unreadable input or configuration.
    Review {
        /// The review file; `-` or nothing reads stdin.
        file: Option<PathBuf>,
    },
    /// Make a CA and a serving certificate for the webhook's Service (ca.crt, tls.crt,
    /// tls.key) and print the base64 caBundle.
    Certs(commands::certs::CertsArgs),
    /// Evaluate Kubernetes manifests against the policies offline, as CREATE by a user.
    /// Exit code: 0 all allowed, 1 any denied, 2 unreadable input or configuration.
    Check(commands::check::CheckArgs),
    /// Run policy test suites (YAML files with `kind: PolicyTest`; directories are searched).
    /// Exit code: 0 all cases pass, 1 any fails, 2 a suite cannot be used or none is found.
    Test(commands::test::TestArgs),
    /// Issue, list, revoke and prune one-time deployment tokens (in the store named by
    /// `database_url`, by default SQLite in the data directory).
    Tokens {
        #[command(subcommand)]
        command: commands::tokens::TokensCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Needs no configuration: runs even where GATEHOUSE_* is set for a server.
    if let Command::Certs(args) = &cli.command {
        return ExitCode::from(commands::certs::main(args));
    }
    let (config, report) = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            return ExitCode::from(2);
        }
    };
    let _log_writer = telemetry::init(config.log_format);
    gatehouse::tls::install_default_provider();
    for name in &report.ignored_env {
        tracing::warn!(variable = %name, "ignoring environment variable: not a gatehouse setting");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gatehouse: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve => match commands::serve::run(config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("gatehouse: {e:#}");
                    ExitCode::from(2)
                }
            },
            // Handled before the configuration is loaded (above).
            Command::Certs(_) => ExitCode::from(2),
            Command::Review { file } => {
                let policies = match commands::load_policies(&config).await {
                    Ok((p, _)) => p,
                    Err(e) => {
                        eprintln!("gatehouse: {e:#}");
                        return ExitCode::from(commands::review::EXIT_UNUSABLE);
                    }
                };
                ExitCode::from(commands::review::run(&policies, file.as_deref()).await)
            }
            Command::Check(args) => ExitCode::from(commands::check::main(&config, &args).await),
            Command::Test(args) => ExitCode::from(commands::test::run(&args).await),
            Command::Tokens { command } => {
                ExitCode::from(commands::tokens::run(&config, command).await)
            }
        }
    })
}
