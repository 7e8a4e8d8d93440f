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

pub fn run(command: MailCommand) -> anyhow::Result<()> {
    let MailCommand::Preview {
        out,
        frontend_url,
        email_from_name,
    } = command;
    let templates = Templates::new(&frontend_url, &email_from_name)?;
    let to = Email::parse("ada@example.com", "email").map_err(|e| anyhow::anyhow!(e.msg))?;
    std::fs::create_dir_all(&out).with_context(|| format!("Failed to create {}", out.display()))?;
    for kind in samples() {
        let mail = templates.render(&to, &kind)?;
        for (extension, body) in [("html", &mail.html), ("txt", &mail.text)] {
            let path = out.join(format!("{}.{extension}", kind.template()));
            std::fs::write(&path, body)
                .with_context(|| format!("Failed to write {}", path.display()))?;
            println!("{}", path.display());
        }
    }
    Ok(())
}
