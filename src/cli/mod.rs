//! The `introgy` command line: `serve` (default), `check`, `init`, `backup`, `smoke`,
//! `migrate` and `mail preview`; `--version` names the build; `--env-file FILE` (any
//! command) reads the settings file instead of the working directory's `.env`,
//! `Mongo.env`, `Email.env`.
//!
//! Exit codes: 0 done, 1 failed, 2 a configuration problem that a restart cannot fix (a
//! refused setting, an unreadable settings file, a production database that does not
//! exist).

pub mod backup;
pub mod check;
pub mod init;
pub mod mail;
pub mod migrate;
pub mod smoke;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigArgs};
use crate::startup::Application;

/// `introgy --version`: the package version and the commit it was built from.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("INTROGY_BUILD_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "introgy",
    version = LONG_VERSION,
    about = "Introgy backend: accounts, profiles and the social battery over HTTP/JSON",
    long_about = "Introgy backend: accounts, profiles and the social battery over HTTP/JSON.\n\n\
Settings come from flags or environment variables; .env, Mongo.env and Email.env in the \
working directory are read too, or instead the file given with --env-file (real \
environment variables win over files, flags over both).",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Read settings from this file (KEY=VALUE lines, as systemd's EnvironmentFile=),
    /// instead of .env, Mongo.env and Email.env in the working directory.
    #[arg(long, global = true, value_name = "FILE")]
    pub env_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (the default command).
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Load the configuration, look at the store and the mail transport, report; changes
    /// nothing.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Create the database on a first install (the SQLite file and schema, or MongoDB's
    /// indexes); production `serve` never creates one.
    Init {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Copy the SQLite database to a file while the service runs (online backup).
    Backup(backup::BackupArgs),
    /// Copy users and battery history from one store to another (SQLite <-> MongoDB).
    Migrate(migrate::MigrateArgs),
    /// Drive a running deployment end to end over HTTP and report each step.
    Smoke(smoke::SmokeArgs),
    /// Mail tools.
    Mail {
        #[command(subcommand)]
        command: mail::MailCommand,
    },
}

/// Reads the settings files, then parses the command line and runs the chosen command.
pub fn run() -> ExitCode {
    // Parse once to learn whether --env-file was given, load the file(s), then parse
    // again so values from the files are seen (clap reads the environment while parsing).
    let env_file = Cli::parse().env_file;
    let loaded = match &env_file {
        Some(path) => crate::config::load_env_file(path).map(|()| vec![path.display().to_string()]),
        None => crate::config::load_env_files()
            .map(|names| names.into_iter().map(str::to_owned).collect()),
    };
    let env_files = match loaded {
        Ok(files) => files,
        Err(e) => {
            eprintln!("introgy: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse();
    let (command, args) = match cli.command {
        None => ("serve", cli.config),
        Some(Command::Serve { config }) => ("serve", config),
        Some(Command::Check { config }) => ("check", config),
        Some(Command::Migrate(args)) => return run_migrate(args),
        Some(Command::Init { config }) => {
            crate::telemetry::init(config.log_format);
            return run_async("introgy init", init::run(config));
        }
        Some(Command::Backup(args)) => {
            return match backup::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(backup::Failure::Usage(message)) => {
                    eprintln!("introgy backup: {message}");
                    ExitCode::from(2)
                }
                Err(backup::Failure::Failed(e)) => {
                    eprintln!("introgy backup: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Smoke(args)) => return run_async("introgy smoke", smoke::run(args)),
        Some(Command::Mail { command }) => {
            return match mail::run(command) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("introgy mail: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    };
    let log_format = args.log_format;
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("introgy: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(log_format);
    if !env_files.is_empty() {
        tracing::info!(files = %env_files.join(", "), "read settings files");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("introgy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            "check" => check::run(config).await,
            _ => serve(config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("introgy: {e:#}");
            let missing = e
                .chain()
                .any(|cause| cause.is::<crate::store::sqlite::MissingDatabase>());
            if missing {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run_migrate(args: migrate::MigrateArgs) -> ExitCode {
    crate::telemetry::init(crate::config::LogFormat::Text);
    run_async("introgy migrate", migrate::run(args))
}

/// Threads of the runtime's blocking pool (tokio's default is 512). Only the SQLite
/// store uses it: at most four reads at once (one per read connection) and the file
/// checks of `/health`, which are one `stat` each; without a cap a burst of `/health`
/// calls grew the pool to ~45 threads, each with its own stack and, often, a malloc arena
/// (README, "Performance"). Beyond the cap, blocking work queues.
const MAX_BLOCKING_THREADS: usize = 16;

/// Runs a command's future on a fresh runtime; its error becomes the exit code.
fn run_async(name: &str, work: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(work));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    Application::build(config).await?.run_until_stopped().await
}
