//! `introgy migrate --from URL --to URL`: copies every user and the whole battery history
//! between stores (SQLite → MongoDB and back), without sessions and, unless asked, without
//! outstanding one-time codes.
//!
//! Every write is an upsert by id, so running it twice changes nothing and an interrupted
//! run is resumed by running it again. Users are copied in id order, each with its whole
//! history, then the user's battery position and running totals are set from it. A final
//! check compares the record counts of both ends.

use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::SecretString;

use crate::config::DatabaseConfig;
use crate::store::{OpenMode, Store, StoreCounts};

const USER_PAGE: u32 = 200;
const EVENT_PAGE: u32 = 1_000;

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Source store: `sqlite:PATH` or a `mongodb://` URL.
    #[arg(long, value_parser = |s: &str| Ok::<_, std::convert::Infallible>(SecretString::from(s)))]
    pub from: SecretString,
    /// Target store: `sqlite:PATH` or a `mongodb://` URL.
    #[arg(long, value_parser = |s: &str| Ok::<_, std::convert::Infallible>(SecretString::from(s)))]
    pub to: SecretString,
    /// Database name for a MongoDB URL without one.
    #[arg(long, env = "MONGO_DB", default_value = "introgy")]
    pub mongo_db: String,
    /// Also copy outstanding one-time codes (they only verify with the same JWT_SECRET_KEY).
    #[arg(long)]
    pub with_codes: bool,
    /// No progress bar (logs and CI).
    #[arg(long)]
    pub quiet: bool,
}

fn database(url: &SecretString, mongo_db: &str) -> anyhow::Result<DatabaseConfig> {
    crate::config::parse_database_url(url, mongo_db).map_err(|e| anyhow::anyhow!("{e}"))
}

/// What a run copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MigrationReport {
    pub users: u64,
    pub events: u64,
    pub codes: u64,
    pub source: StoreCounts,
    pub target: StoreCounts,
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let from = database(&args.from, &args.mongo_db)?;
    let to = database(&args.to, &args.mongo_db)?;
    println!("migrating {} -> {}", from.describe(), to.describe());
    let timeout = Duration::from_secs(30);
    // A source that is not there is an error, never "0 users" (and nothing is created
    // at the source); the target is created if need be.
    let source = crate::store::open(&from, timeout, OpenMode::Populated)
        .await
        .context("Failed to open the source")?;
    let target = crate::store::open(&to, timeout, OpenMode::Create)
        .await
        .context("Failed to open the target")?;
    source
        .ping()
        .await
        .context("The source store does not answer")?;
    target
        .ping()
        .await
        .context("The target store does not answer")?;
    let report = migrate(
        source.as_ref(),
        target.as_ref(),
        args.with_codes,
        !args.quiet,
    )
    .await?;
    println!(
        "copied {} users, {} battery events, {} codes",
        report.users, report.events, report.codes
    );
    println!(
        "{:<16} {:>12} {:>12}\n{:<16} {:>12} {:>12}\n{:<16} {:>12} {:>12}",
        "",
        "source",
        "target",
        "users",
        report.source.users,
        report.target.users,
        "battery events",
        report.source.battery_events,
        report.target.battery_events,
    );
    anyhow::ensure!(
        report.target.users >= report.source.users
            && report.target.battery_events >= report.source.battery_events,
        "count check failed: the target holds fewer records than the source"
    );
    if report.target != report.source {
        println!("note: the target held records of its own before; they were kept");
    }
    println!("count check passed");
    Ok(())
}

/// Copies everything from `source` to `target`.
pub async fn migrate(
    source: &dyn Store,
    target: &dyn Store,
    with_codes: bool,
    progress: bool,
) -> anyhow::Result<MigrationReport> {
    let total = source.counts().await?;
    let bar = if progress {
        ProgressBar::new(total.users)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} users  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut report = MigrationReport::default();
    let mut after: Option<String> = None;
    loop {
        let users = source.export_users(after.as_deref(), USER_PAGE).await?;
        let Some(last) = users.last() else { break };
        after = Some(last.id.clone());
        for user in &users {
            target
                .import_user(user)
                .await
                .with_context(|| format!("Failed to copy user {}", user.id))?;
            let mut seq = 0;
            loop {
                let events = source.export_events(&user.id, seq, EVENT_PAGE).await?;
                let Some(last) = events.last() else { break };
                seq = last.seq;
                target.import_events(&events).await?;
                report.events += events.len() as u64;
                bar.set_message(format!("{} events", report.events));
            }
            target
                .finish_battery_import(&user.id, user.battery_level, seq, user.battery_updated_at)
                .await?;
            if with_codes {
                for challenge in source.codes_of(&user.id).await? {
                    target.put_challenge(&challenge).await?;
                    report.codes += challenge.codes.len() as u64;
                }
            }
            report.users += 1;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    report.source = source.counts().await?;
    report.target = target.counts().await?;
    Ok(report)
}
