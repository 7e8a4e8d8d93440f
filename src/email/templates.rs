//! Mail templates (minijinja): one HTML layout with inline styles, a plain-text part for
//! each mail, links built from `FRONTEND_URL`. The templates are compiled into the binary.

use minijinja::{context, Environment};

use super::{MailKind, OutgoingMail};
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

pub struct Templates {
    env: Environment<'static>,
    frontend_url: String,
    brand: String,
}

impl Templates {
    pub fn new(frontend_url: &str, brand: &str) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        for (name, source) in SOURCES {
            env.add_template(name, source)?;
        }
        Ok(Self {
            env,
            frontend_url: frontend_url.trim_end_matches('/').to_owned(),
            brand: brand.to_owned(),
        })
    }

    pub fn render(&self, to: &Email, kind: &MailKind) -> anyhow::Result<OutgoingMail> {
        let (subject, code, minutes, link) = match kind {
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
        let template = kind.template();
        let html = self
            .env
            .get_template(&format!("{template}.html"))?
            .render(&ctx)?;
        let text = self
            .env
            .get_template(&format!("{template}.txt"))?
            .render(&ctx)?;
        Ok(OutgoingMail {
            to: to.as_str().to_owned(),
            subject,
            html,
            text,
            kind: kind.name(),
            message_id: format!("<{}@introgy>", crate::auth::random_hex(16)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mail_renders_with_code_link_and_expiry() {
        let templates = Templates::new("https://introgy.ai/", "Introgy").unwrap();
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
        let templates = Templates::new("https://introgy.ai", "Introgy").unwrap();
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
    fn html_is_escaped() {
        let templates = Templates::new("https://introgy.ai", "<b>Brand</b>").unwrap();
        let to = Email::parse("ada@example.com", "email").unwrap();
        let mail = templates.render(&to, &MailKind::SignupAttempt).unwrap();
        assert!(!mail.html.contains("<b>Brand</b>"));
    }

    #[test]
    fn the_old_address_is_told_the_new_one_masked_and_what_to_do_if_it_was_not_them() {
        let templates = Templates::new("https://introgy.ai", "Introgy").unwrap();
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
