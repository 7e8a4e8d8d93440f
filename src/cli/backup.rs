//! `introgy backup --to FILE`: a consistent copy of the SQLite database, taken with
//! SQLite's online backup API while the service keeps serving (restore: docs/deploy.md).
//! For MongoDB it says to use `mongodump`, which is the tool for that job.

use std::path::PathBuf;

use crate::config::{ConfigArgs, DatabaseConfig};

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The copy to write (replaced atomically if it exists; mode 0600).
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// What went wrong, with the exit code it deserves.
pub enum Failure {
    /// The settings name a store this command does not back up (exit 2).
    Usage(String),
    Failed(anyhow::Error),
}

pub fn run(args: BackupArgs) -> Result<(), Failure> {
    let database = crate::config::database_of(&args.config)
        .map_err(|e| Failure::Usage(format!("configuration error: {e}")))?;
    let path = match database {
        DatabaseConfig::Sqlite { path } => path,
        DatabaseConfig::Mongo { db, .. } => {
            return Err(Failure::Usage(format!(
                "the store is MongoDB (database {db}): back it up with MongoDB's own tool, e.g. \
                 `mongodump --uri \"$DATABASE_URL\" --archive=introgy.archive --gzip` \
                 (restore: `mongorestore --uri ... --archive=introgy.archive --gzip`)"
            )))
        }
    };
    let report = crate::store::sqlite::backup(&path, &args.to).map_err(Failure::Failed)?;
    println!(
        "backed up {} to {}: {} users, {} battery events, schema version {}, {} bytes",
        path.display(),
        args.to.display(),
        report.users,
        report.battery_events,
        report.schema_version,
        report.bytes
    );
    Ok(())
}
