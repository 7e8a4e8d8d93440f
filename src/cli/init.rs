//! `introgy init`: creates the database on a first install. The only command that creates
//! a production SQLite database: `serve` in production refuses to start without one, so a
//! deleted database is never silently replaced by an empty one. Running it again changes
//! nothing (it brings the schema up to date, as `serve` would).

use std::time::Duration;

use crate::config::{ConfigArgs, DatabaseConfig};
use crate::store::OpenMode;

pub async fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let database = crate::config::database_of(&args).map_err(|e| anyhow::anyhow!("{e}"))?;
    let existed = match &database {
        DatabaseConfig::Sqlite { path } => path.exists(),
        DatabaseConfig::Mongo { .. } => true,
    };
    let timeout = Duration::from_secs(args.store_timeout_seconds);
    let store = crate::store::open(&database, timeout, OpenMode::Create).await?;
    store.ping().await?;
    store.close().await?;
    match (&database, existed) {
        (DatabaseConfig::Sqlite { path }, false) => {
            println!("created the SQLite database {} (mode 0600)", path.display())
        }
        (DatabaseConfig::Sqlite { path }, true) => println!(
            "the SQLite database {} exists already; its schema is up to date",
            path.display()
        ),
        (DatabaseConfig::Mongo { db, .. }, _) => {
            println!("MongoDB database {db}: collections and indexes are in place")
        }
    }
    Ok(())
}
