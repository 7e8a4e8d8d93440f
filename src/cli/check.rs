//! `introgy check`: loads the configuration, looks at the store and the mail transport,
//! reports each, and fails if anything would stop `serve`. It changes nothing: no file,
//! folder, schema, migration or index is created (the SQLite file is read as it is, a
//! MongoDB database only answered).

use crate::config::{Config, DatabaseConfig};
use crate::store::mongo::MongoStore;
use crate::store::{sqlite, Housekeeping, OpenMode};

/// The store lines of the report: `Ok((what was found, how flows of several writes
/// run))` or `Err(the problem)`.
async fn store(config: &Config) -> Result<(String, String), String> {
    let several = sqlite::SEVERAL_WRITES.to_owned();
    match &config.database {
        DatabaseConfig::Sqlite { path } => {
            let folder = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            if !path.exists() && !config.is_production() {
                // Development `serve` creates it; a missing folder is most likely a typo.
                return if folder.is_dir() {
                    Ok((
                        format!(
                            "sqlite: {} does not exist yet; development `serve` creates it",
                            path.display()
                        ),
                        several,
                    ))
                } else {
                    Err(format!("the folder {} does not exist", folder.display()))
                };
            }
            sqlite::inspect(path).map(|found| (format!("sqlite: {found}"), several))
        }
        DatabaseConfig::Mongo { url, db } => {
            let url = secrecy::ExposeSecret::expose_secret(url);
            let store = MongoStore::open_with(
                url,
                db,
                config.store_timeout,
                OpenMode::Populated,
                config.mongo_transactions,
            )
            .await
            .map_err(|e| format!("{e:#}"))?;
            store.ping().await.map_err(|e| e.to_string())?;
            let several = store.several_writes().await.map_err(|e| e.to_string())?;
            Ok(("mongodb answers".to_owned(), several))
        }
    }
}

/// Every problem is reported, then the exit code says whether any was found.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut problems = 0;
    println!("environment:    {}", config.environment.as_str());
    println!("listen:         {}:{}", config.host, config.port);
    println!("database:       {}", config.database.describe());
    match store(&config).await {
        Ok((found, several)) => {
            println!("store:          ok ({found})");
            println!("several writes: {several}");
        }
        Err(problem) => {
            problems += 1;
            println!("store:          FAILED: {problem}");
        }
    }
    println!(
        "jwt secret:     {}",
        match &config.jwt_secret {
            Some(_) => "set (JWT_SECRET_KEY)",
            None => "development secret kept in the data directory",
        }
    );
    println!("mail transport: {}", config.mail.transport.name());
    match crate::email::transport::from_config(&config.mail) {
        Ok(transport) => match transport.check().await {
            Ok(found) => println!("mail:           ok: {found}"),
            Err(e) => {
                problems += 1;
                println!("mail:           FAILED: {e:#}");
            }
        },
        Err(e) => {
            problems += 1;
            println!("mail:           FAILED: {e:#}");
        }
    }
    println!("cors origins:   {}", config.cors_origins.join(", "));
    anyhow::ensure!(problems == 0, "check found {problems} problem(s)");
    println!("all checks passed");
    Ok(())
}
