//! Mail templates (minijinja): one HTML layout with inline styles, a plain-text part for
//! each mail, links built from `FRONTEND_URL`. The templates are compiled into the binary.

use minijinja::{context, Environment};

use super::{InlineImage, MailKind, OutgoingMail};
use crate::domain::Email;

const SOURCES: &[(&str, &str)] = &[
    ("layout.html", include_str!("templates/layout.html")),
    (
        "verification_code.html",
        include_str!("templates/verification_code.html"),
    ),
    (
        "verification_code.txt",
        include_str!("templates/verification_code.txt"),
    ),
    ("reset_code.html", include_str!("templates/reset_code.html")),
    ("reset_code.txt", include_str!("templates/reset_code.txt")),
    (
        "verification_code_again.html",
        include_str!("templates/verification_code_again.html"),
    ),
    (
        "verification_code_again.txt",
        include_str!("templates/verification_code_again.txt"),
    ),
    (
        "signup_incomplete.html",
        include_str!("templates/signup_incomplete.html"),
    ),
    (
        "signup_incomplete.txt",
        include_str!("templates/signup_incomplete.txt"),
    ),
    (
        "signup_attempt.html",
        include_str!("templates/signup_attempt.html"),
    ),
    (
        "signup_attempt.txt",
        include_str!("templates/signup_attempt.txt"),
    ),
    (
        "password_changed.html",
        include_str!("templates/password_changed.html"),
    ),
    (
        "password_changed.txt",
        include_str!("templates/password_changed.txt"),
    ),
    (
        "password_updated.html",
        include_str!("templates/password_updated.html"),
    ),
    (
        "password_updated.txt",
        include_str!("templates/password_updated.txt"),
    ),
    (
        "low_battery.html",
        include_str!("templates/low_battery.html"),
    ),
    ("low_battery.txt", include_str!("templates/low_battery.txt")),
    (
        "weekly_summary.html",
        include_str!("templates/weekly_summary.html"),
    ),
    (
        "weekly_summary.txt",
        include_str!("templates/weekly_summary.txt"),
    ),
    (
        "email_change_code.html",
        include_str!("templates/email_change_code.html"),
    ),
    (
        "email_change_code.txt",
        include_str!("templates/email_change_code.txt"),
    ),
    (
        "email_change_taken.html",
        include_str!("templates/email_change_taken.html"),
    ),
    (
        "email_change_taken.txt",
        include_str!("templates/email_change_taken.txt"),
    ),
    (
        "email_changed.html",
        include_str!("templates/email_changed.html"),
    ),
    (
        "email_changed.txt",
        include_str!("templates/email_changed.txt"),
    ),
];

/// The `Content-ID` of the weekly summary's chart.
pub const CHART_CONTENT_ID: &str = "week-chart@introgy";

/// A rendered mail of `kind` from its subject and `(html, text)` parts; not a list mail,
/// no images.
fn assemble(
    to: &Email,
    kind: &MailKind,
    subject: String,
    (html, text): (String, String),
) -> OutgoingMail {
    OutgoingMail {
        to: to.as_str().to_owned(),
        subject,
        html,
        text,
        kind: kind.name(),
        message_id: format!("<{}@introgy>", crate::auth::random_hex(16)),
        list_unsubscribe: None,
        inline_images: Vec::new(),
    }
}

pub struct Templates {
    env: Environment<'static>,
    frontend_url: String,
    /// This service's public base URL (the unsubscribe link).
    public_url: String,
    brand: String,
}

impl Templates {
    pub fn new(frontend_url: &str, public_url: &str, brand: &str) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        for (name, source) in SOURCES {
            env.add_template(name, source)?;
        }
        Ok(Self {
            env,
            frontend_url: frontend_url.trim_end_matches('/').to_owned(),
            public_url: public_url.trim_end_matches('/').to_owned(),
            brand: brand.to_owned(),
        })
    }

    /// The one-click unsubscribe URL for a token.
    pub fn unsubscribe_url(&self, token: &str) -> String {
        // Tokens are base64url and `.`: nothing to escape in a query.
        format!("{}/unsubscribe?token={token}", self.public_url)
    }

    fn both_parts(
        &self,
        template: &str,
        ctx: &minijinja::Value,
    ) -> anyhow::Result<(String, String)> {
        let html = self
            .env
            .get_template(&format!("{template}.html"))?
            .render(ctx)?;
        let text = self
            .env
            .get_template(&format!("{template}.txt"))?
            .render(ctx)?;
        Ok((html, text))
    }

    /// The nudges: list mails with an unsubscribe link, the summary with its chart.
    fn render_nudge(&self, to: &Email, kind: &MailKind) -> anyhow::Result<OutgoingMail> {
        let (subject, token, ctx, images) = match kind {
            MailKind::LowBattery {
                level,
                unsubscribe_token,
            } => (
                format!("Your social battery is at {level}%"),
                unsubscribe_token,
                context! { level => level },
                Vec::new(),
            ),
            MailKind::WeeklySummary {
                summary,
                unsubscribe_token,
            } => {
                let show = |level: Option<u8>| level.map_or("–".to_owned(), |l| format!("{l}%"));
                let days: Vec<_> = summary
                    .closes
                    .iter()
                    .enumerate()
                    .map(|(i, level)| {
                        let day = summary.monday + chrono::TimeDelta::days(i as i64);
                        context! { name => day.format("%a %-d %b").to_string(), level => show(*level) }
                    })
                    .collect();
                let week_label = summary.monday.format("%-d %B %Y").to_string();
                (
                    format!("Your week in {}: {week_label}", self.brand),
                    unsubscribe_token,
                    context! {
                        week_label => week_label,
                        days => days,
                        opening => show(summary.opening),
                        interactions => summary.interactions,
                        drained => summary.drained,
                        recharged => summary.recharged,
                        chart_cid => CHART_CONTENT_ID,
                    },
                    vec![InlineImage {
                        content_id: CHART_CONTENT_ID.to_owned(),
                        content_type: "image/png",
                        filename: format!("{}.png", summary.week),
                        data: crate::nudges::chart::render(&summary.levels()),
                    }],
                )
            }
            other => anyhow::bail!("{} is not a nudge", other.name()),
        };
        let unsubscribe_url = self.unsubscribe_url(token);
        let ctx = context! {
            brand => self.brand,
            frontend_url => self.frontend_url,
            email => to.as_str(),
            link => format!("{}/", self.frontend_url),
            subject => subject,
            unsubscribe_url => unsubscribe_url,
            ..ctx
        };
        let parts = self.both_parts(kind.template(), &ctx)?;
        Ok(OutgoingMail {
            list_unsubscribe: Some(unsubscribe_url),
            inline_images: images,
            ..assemble(to, kind, subject, parts)
        })
    }

    pub fn render(&self, to: &Email, kind: &MailKind) -> anyhow::Result<OutgoingMail> {
        let (subject, code, minutes, link) = match kind {
            MailKind::LowBattery { .. } | MailKind::WeeklySummary { .. } => {
                return self.render_nudge(to, kind)
            }
            MailKind::VerificationCode {
                code,
                valid_minutes,
                repeated: false,
            } => (
                format!("{code} is your {} verification code", self.brand),
                Some(code.as_str()),
                Some(*valid_minutes),
                format!("{}/verify-email", self.frontend_url),
            ),
            MailKind::VerificationCode {
                code,
                valid_minutes,
                repeated: true,
            } => (
                format!(
                    "Another sign-up for {}: use {code} only if it was you",
                    self.brand
                ),
                Some(code.as_str()),
                Some(*valid_minutes),
                format!("{}/verify-email", self.frontend_url),
            ),
            MailKind::ResetCode {
                code,
                valid_minutes,
            } => (
                format!("{code} is your {} password reset code", self.brand),
                Some(code.as_str()),
                Some(*valid_minutes),
                format!("{}/reset-password", self.frontend_url),
            ),
            MailKind::SignupAttempt => (
                format!(
                    "Someone tried to sign up for {} with your address",
                    self.brand
                ),
                None,
                None,
                format!("{}/login", self.frontend_url),
            ),
            MailKind::SignupIncomplete => (
                format!("Finish signing up for {}", self.brand),
                None,
                None,
                format!("{}/register", self.frontend_url),
            ),
            MailKind::PasswordChanged | MailKind::PasswordUpdated { .. } => (
                format!("Your {} password was changed", self.brand),
                None,
                None,
                format!("{}/reset-password", self.frontend_url),
            ),
            MailKind::EmailChangeCode {
                code,
                valid_minutes,
            } => (
                format!(
                    "{code} is your {} code to confirm your new address",
                    self.brand
                ),
                Some(code.as_str()),
                Some(*valid_minutes),
                format!("{}/settings", self.frontend_url),
            ),
            MailKind::EmailChangeTaken => (
                format!(
                    "Someone tried to move another {} account to your address",
                    self.brand
                ),
                None,
                None,
                format!("{}/login", self.frontend_url),
            ),
            MailKind::EmailChanged { .. } => (
                format!("The address of your {} account was changed", self.brand),
                None,
                None,
                format!("{}/login", self.frontend_url),
            ),
        };
        let new_email = match kind {
            MailKind::EmailChanged { new_email } => Some(new_email.as_str()),
            _ => None,
        };
        let others_signed_out = matches!(
            kind,
            MailKind::PasswordUpdated {
                others_signed_out: true
            }
        );
        let ctx = context! {
            brand => self.brand,
            frontend_url => self.frontend_url,
            email => to.as_str(),
            code => code,
            minutes => minutes,
            link => link,
            others_signed_out => others_signed_out,
            new_email => new_email,
            subject => subject,
        };
        let parts = self.both_parts(kind.template(), &ctx)?;
        Ok(assemble(to, kind, subject, parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mail_renders_with_code_link_and_expiry() {
        let templates =
            Templates::new("https://introgy.ai/", "https://api.introgy.ai", "Introgy").unwrap();
        let to = Email::parse("ada@example.com", "email").unwrap();
        let kinds = [
            MailKind::VerificationCode {
                code: "012345".into(),
                valid_minutes: 10,
                repeated: false,
            },
            MailKind::VerificationCode {
                code: "024680".into(),
                valid_minutes: 10,
                repeated: true,
            },
            MailKind::ResetCode {
                code: "987654".into(),
                valid_minutes: 10,
            },
            MailKind::SignupAttempt,
            MailKind::SignupIncomplete,
            MailKind::PasswordChanged,
            MailKind::PasswordUpdated {
                others_signed_out: true,
            },
            MailKind::EmailChangeCode {
                code: "314159".into(),
                valid_minutes: 10,
            },
            MailKind::EmailChangeTaken,
            MailKind::EmailChanged {
                new_email: "n***@example.org".into(),
            },
        ];
        for kind in kinds {
            let mail = templates.render(&to, &kind).unwrap();
            // HTML escaping writes `/` as `&#x2f;`, which mail clients decode in attributes.
            assert!(
                mail.html.contains("href=\"https:"),
                "{} html link",
                kind.name()
            );
            assert!(
                mail.text.contains("https://introgy.ai/"),
                "{} text link",
                kind.name()
            );
            assert!(mail.html.contains("<html"), "{} layout", kind.name());
            if let MailKind::VerificationCode { code, .. }
            | MailKind::ResetCode { code, .. }
            | MailKind::EmailChangeCode { code, .. } = &kind
            {
                assert!(mail.html.contains(code.as_str()) && mail.text.contains(code.as_str()));
                assert!(mail.text.contains("10 minutes"), "{} expiry", kind.name());
            }
        }
    }

    #[test]
    fn a_repeated_attempt_says_to_use_its_code_only_after_signing_up() {
        let templates =
            Templates::new("https://introgy.ai", "https://api.introgy.ai", "Introgy").unwrap();
        let to = Email::parse("ada@example.com", "email").unwrap();
        let code = |repeated| MailKind::VerificationCode {
            code: "135790".into(),
            valid_minutes: 10,
            repeated,
        };
        let again = templates.render(&to, &code(true)).unwrap();
        assert_eq!(again.kind, "verification_code");
        assert!(again
            .text
            .contains("Use this code only if you just signed up"));
        assert!(again
            .html
            .contains("Use this code only if you just signed up"));
        assert!(again.subject.contains("only if it was you"));
        let first = templates.render(&to, &code(false)).unwrap();
        assert!(!first.text.contains("only if you just signed up"));
    }

    #[test]
    fn nudges_carry_their_unsubscribe_link_and_the_summary_its_chart() {
        let templates =
            Templates::new("https://introgy.ai", "https://api.introgy.ai/", "Introgy").unwrap();
        let to = Email::parse("ada@example.com", "email").unwrap();
        let nudges: Vec<MailKind> = crate::cli::mail::samples()
            .into_iter()
            .filter(|k| {
                matches!(
                    k,
                    MailKind::LowBattery { .. } | MailKind::WeeklySummary { .. }
                )
            })
            .collect();
        assert_eq!(nudges.len(), 2);
        for kind in nudges {
            let mail = templates.render(&to, &kind).unwrap();
            let url = "https://api.introgy.ai/unsubscribe?token=sample-unsubscribe-token";
            assert_eq!(
                mail.list_unsubscribe.as_deref(),
                Some(url),
                "{}",
                kind.name()
            );
            assert!(mail.text.contains(url), "{} text", kind.name());
            assert!(mail
                .html
                .contains("unsubscribe?token=sample-unsubscribe-token"));
            if let MailKind::WeeklySummary { .. } = kind {
                assert_eq!(mail.inline_images.len(), 1);
                let image = &mail.inline_images[0];
                assert!(mail.html.contains(&format!("cid:{}", image.content_id)));
                assert!(image.data.starts_with(b"\x89PNG"));
                // The numbers are in the text: each day's close and the totals.
                for needle in [
                    "Mon 23 Nov: 62%",
                    "Sun 29 Nov: 74%",
                    "121 drained",
                    "125 recharged",
                ] {
                    assert!(mail.text.contains(needle), "{needle} in {}", mail.text);
                }
            } else {
                assert!(mail.inline_images.is_empty());
                assert!(mail.subject.contains("15%"));
            }
        }
    }

    #[test]
    fn html_is_escaped() {
        let templates = Templates::new(
            "https://introgy.ai",
            "https://api.introgy.ai",
            "<b>Brand</b>",
        )
        .unwrap();
        let to = Email::parse("ada@example.com", "email").unwrap();
        let mail = templates.render(&to, &MailKind::SignupAttempt).unwrap();
        assert!(!mail.html.contains("<b>Brand</b>"));
    }

    #[test]
    fn the_old_address_is_told_the_new_one_masked_and_what_to_do_if_it_was_not_them() {
        let templates =
            Templates::new("https://introgy.ai", "https://api.introgy.ai", "Introgy").unwrap();
        let to = Email::parse("old@example.com", "email").unwrap();
        let kind = MailKind::EmailChanged {
            new_email: "n***@example.org".into(),
        };
        let mail = templates.render(&to, &kind).unwrap();
        for body in [&mail.text, &mail.html] {
            assert!(body.contains("n***@example.org"), "{body}");
            assert!(body.contains("If this was not you"), "{body}");
        }
        assert_eq!(mail.kind, "email_changed");
    }
}
