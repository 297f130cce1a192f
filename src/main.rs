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
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// `--config` after the subcommand, on the subcommands that read the configuration (`certs`
/// does not, so its help does not offer it).
#[derive(clap::Args)]
struct ConfigArg {
    /// YAML configuration file (environment GATEHOUSE_* overrides it).
    #[arg(
        id = "config_file",
        long = "config",
        short = 'c',
        global = true,
        value_name = "FILE"
    )]
    file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the webhook over HTTPS, and health and metrics over HTTP.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Evaluate one AdmissionReview offline and print the response review.
    /// Exit code: 0 allowed, 1 denied, 2 unreadable input or configuration.
    Review {
        /// The review file (JSON, as the API server sends it); `-` or nothing reads standard
        /// input. For manifests use `check`.
        file: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Make a CA and a serving certificate for the webhook's Service (ca.crt, tls.crt,
    /// tls.key) and print the base64 caBundle.
    Certs(commands::certs::CertsArgs),
    /// Evaluate Kubernetes manifests against the policies offline, as CREATE by a user.
    /// Exit code: 0 all allowed, 1 any denied, 2 unreadable input or configuration.
    Check {
        #[command(flatten)]
        args: commands::check::CheckArgs,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run policy test suites (YAML files with `kind: PolicyTest`; directories are searched).
    /// Exit code: 0 all cases pass, 1 any fails, 2 a suite cannot be used or none is found.
    Test(commands::test::TestArgs),
    /// Issue, list, revoke and prune one-time deployment tokens (in the store named by
    /// `database_url`, by default SQLite in the data directory).
    Tokens {
        #[command(subcommand)]
        command: commands::tokens::TokensCommand,
        #[command(flatten)]
        config: ConfigArg,
    },
}

impl Command {
    /// `--config` given after the subcommand.
    fn config_file(&self) -> Option<&PathBuf> {
        match self {
            Command::Serve { config }
            | Command::Review { config, .. }
            | Command::Check { config, .. }
            | Command::Tokens { config, .. } => config.file.as_ref(),
            Command::Certs(_) | Command::Test(_) => None,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Needs no configuration: runs even where GATEHOUSE_* is set for a server.
    if let Command::Certs(args) = &cli.command {
        return ExitCode::from(commands::certs::main(args));
    }
    let file = cli.command.config_file().or(cli.config.as_ref()).cloned();
    let (config, report) = match Config::load(file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            return ExitCode::from(2);
        }
    };
    let _log_writer = telemetry::init(config.log_format);
    let log_format = config.log_format;
    gatehouse::tls::install_default_provider();
    for name in &report.ignored_env {
        tracing::warn!(
            variable = %name,
            "ignoring environment variable: not a gatehouse setting (see the README's configuration table)"
        );
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
            Command::Serve { .. } => match commands::serve::run(config).await {
                Ok(()) => ExitCode::SUCCESS,
                // Once: as a JSON log line, or as one line for the person at the terminal
                // (text logs go to the same stderr).
                Err(e) => {
                    match log_format {
                        gatehouse::config::LogFormat::Json => tracing::error!("{e:#}"),
                        gatehouse::config::LogFormat::Text => eprintln!("gatehouse: {e:#}"),
                    }
                    ExitCode::from(2)
                }
            },
            // Handled before the configuration is loaded (above).
            Command::Certs(_) => ExitCode::from(2),
            Command::Review { file, .. } => {
                let policies = match commands::load_policies(&config).await {
                    Ok((p, _)) => p,
                    Err(e) => {
                        eprintln!("gatehouse: {e:#}");
                        return ExitCode::from(commands::review::EXIT_UNUSABLE);
                    }
                };
                ExitCode::from(commands::review::run(&policies, file.as_deref()).await)
            }
            Command::Check { args, .. } => {
                ExitCode::from(commands::check::main(&config, &args).await)
            }
            Command::Test(args) => ExitCode::from(commands::test::run(&args).await),
            Command::Tokens { command, .. } => {
                ExitCode::from(commands::tokens::run(&config, command).await)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn config_is_read_before_or_after_the_subcommand_and_not_offered_to_certs() {
        for args in [
            &["gatehouse", "--config", "a.yaml", "serve"][..],
            &["gatehouse", "serve", "--config", "a.yaml"],
            &["gatehouse", "tokens", "list", "-c", "a.yaml"],
            &["gatehouse", "check", "-c", "a.yaml", "-f", "x.yaml"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let file = cli.command.config_file().or(cli.config.as_ref());
            assert_eq!(file, Some(&PathBuf::from("a.yaml")), "{args:?}");
        }
        let err = Cli::try_parse_from([
            "gatehouse",
            "certs",
            "--service",
            "a",
            "--namespace",
            "b",
            "--config",
            "a.yaml",
        ])
        .err()
        .expect("certs takes no --config");
        assert!(err.to_string().contains("--config"), "{err}");
    }
}
