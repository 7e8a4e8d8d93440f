//! `introgy mail preview --out DIR`: every mail template rendered with sample data, as
//! `.html` and `.txt`, for people to look at.

use std::path::PathBuf;

use anyhow::Context;

use crate::domain::Email;
use crate::email::{MailKind, Templates};

#[derive(Debug, clap::Subcommand)]
pub enum MailCommand {
    /// Render every template with sample data into a folder.
    Preview {
        /// Folder to write `<template>.html` and `<template>.txt` into (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// User-facing site used in links.
        #[arg(long, env = "FRONTEND_URL", default_value = "https://introgy.ai")]
        frontend_url: String,
        /// This service's public base URL (unsubscribe links) [default: FRONTEND_URL + /api].
        #[arg(long, env = "PUBLIC_URL")]
        public_url: Option<String>,
        /// Sender display name (the brand in the mails).
        #[arg(long, env = "EMAIL_FROM_NAME", default_value = "Introgy")]
        email_from_name: String,
    },
}

/// The mails, with sample data.
pub fn samples() -> Vec<MailKind> {
    vec![
        MailKind::VerificationCode {
            code: "048213".into(),
            valid_minutes: 10,
            repeated: false,
        },
        MailKind::VerificationCode {
            code: "592617".into(),
            valid_minutes: 10,
            repeated: true,
        },
        MailKind::ResetCode {
            code: "731905".into(),
            valid_minutes: 10,
        },
        MailKind::SignupAttempt,
        MailKind::SignupIncomplete,
        MailKind::PasswordChanged,
        MailKind::PasswordUpdated {
            others_signed_out: true,
        },
        MailKind::LowBattery {
            level: 15,
            unsubscribe_token: SAMPLE_TOKEN.into(),
        },
        MailKind::WeeklySummary {
            summary: crate::nudges::weekly::WeekSummary {
                week: "2026-W48".into(),
                monday: chrono::NaiveDate::from_ymd_opt(2026, 11, 23).expect("a date"),
                opening: Some(70),
                closes: [62, 41, 18, 35, 35, 80, 74].map(Some).to_vec(),
                interactions: 14,
                drained: 121,
                recharged: 125,
            },
            unsubscribe_token: SAMPLE_TOKEN.into(),
        },
        MailKind::EmailChangeCode {
            code: "265358".into(),
            valid_minutes: 10,
        },
        MailKind::EmailChangeTaken,
        MailKind::EmailChanged {
            new_email: "a***@example.org".into(),
        },
    ]
}

/// Stands for a signed unsubscribe token in previews (no secret is needed to preview).
const SAMPLE_TOKEN: &str = "sample-unsubscribe-token";

pub fn run(command: MailCommand) -> anyhow::Result<()> {
    let MailCommand::Preview {
        out,
        frontend_url,
        public_url,
        email_from_name,
    } = command;
    let frontend_url = frontend_url.trim_end_matches('/').to_owned();
    let public_url = public_url.unwrap_or_else(|| format!("{frontend_url}/api"));
    let templates = Templates::new(&frontend_url, &public_url, &email_from_name)?;
    let to = Email::parse("ada@example.com", "email").map_err(|e| anyhow::anyhow!(e.msg))?;
    std::fs::create_dir_all(&out).with_context(|| format!("Failed to create {}", out.display()))?;
    for kind in samples() {
        let mail = templates.render(&to, &kind)?;
        // Inline images are written beside the page, which points at them instead of
        // their `cid:` (a browser cannot resolve those).
        let mut html = mail.html.clone();
        for image in &mail.inline_images {
            let name = format!("{}-{}", kind.template(), image.filename);
            let path = out.join(&name);
            std::fs::write(&path, &image.data)
                .with_context(|| format!("Failed to write {}", path.display()))?;
            println!("{}", path.display());
            html = html.replace(&format!("cid:{}", image.content_id), &name);
        }
        for (extension, body) in [("html", &html), ("txt", &mail.text)] {
            let path = out.join(format!("{}.{extension}", kind.template()));
            std::fs::write(&path, body)
                .with_context(|| format!("Failed to write {}", path.display()))?;
            println!("{}", path.display());
        }
    }
    Ok(())
}
