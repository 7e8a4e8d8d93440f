//! deploy/setup.sh installs the binary, the systemd unit, the nginx site and a settings
//! file with a generated secret, and running it again changes nothing. Runs with DESTDIR,
//! so no root, systemd or nginx is needed.

use std::path::Path;
use std::process::Command;

fn setup(root: &Path, server_name: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/setup.sh");
    let output = Command::new("bash")
        .arg(script)
        .args([
            "--binary",
            env!("CARGO_BIN_EXE_introgy"),
            "--server-name",
            server_name,
        ])
        .env("DESTDIR", root)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn setup_installs_everything_and_a_second_run_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let first = setup(root.path(), "api.introgy.app");
    for path in [
        "usr/local/bin/introgy",
        "etc/systemd/system/introgy.service",
        "etc/nginx/sites-available/introgy.conf",
        "etc/introgy/introgy.env",
    ] {
        assert!(
            root.path().join(path).exists(),
            "{path} missing after: {first}"
        );
    }
    assert!(root
        .path()
        .join("etc/nginx/sites-enabled/introgy.conf")
        .is_symlink());

    let env = std::fs::read_to_string(root.path().join("etc/introgy/introgy.env")).unwrap();
    let secret = env
        .lines()
        .find_map(|l| l.strip_prefix("JWT_SECRET_KEY="))
        .expect("a generated JWT secret");
    assert_eq!(secret.len(), 128, "64 random bytes in hex");
    assert!(env.contains("ENVIRONMENT=production"));
    assert!(env.contains("TRUSTED_PROXIES=127.0.0.1/32,::1/128"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(root.path().join("etc/introgy/introgy.env"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(
        mode & 0o077,
        0,
        "the settings file is readable by others: {mode:o}"
    );

    let site = std::fs::read_to_string(root.path().join("etc/nginx/sites-available/introgy.conf"))
        .unwrap();
    assert!(site.contains("server_name api.introgy.app;"));
    assert!(
        site.contains("docs|redoc|openapi"),
        "docs are proxied at the root"
    );
    assert!(site.contains("location /api/"));
    let unit =
        std::fs::read_to_string(root.path().join("etc/systemd/system/introgy.service")).unwrap();
    for line in [
        "EnvironmentFile=/etc/introgy/introgy.env",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "User=introgy",
    ] {
        assert!(unit.contains(line), "{line} missing from the unit");
    }

    // Idempotent: nothing changes, and the secret is kept.
    let second = setup(root.path(), "api.introgy.app");
    assert_eq!(second.trim(), "nothing changed");
    let env_again = std::fs::read_to_string(root.path().join("etc/introgy/introgy.env")).unwrap();
    assert_eq!(env_again, env);
    // A changed setting is applied.
    let third = setup(root.path(), "api2.introgy.app");
    assert!(
        third.contains("/etc/nginx/sites-available/introgy.conf"),
        "{third}"
    );
}

#[test]
fn the_generated_settings_pass_introgy_check_except_for_mail() {
    // The settings file is valid for the binary: with a mail transport added, `check`
    // gets past configuration (it then reports the unreachable SMTP host).
    let root = tempfile::tempdir().unwrap();
    setup(root.path(), "_");
    let env = std::fs::read_to_string(root.path().join("etc/introgy/introgy.env")).unwrap();
    let db = root.path().join("introgy.db");
    let mut command = Command::new(env!("CARGO_BIN_EXE_introgy"));
    command.arg("check").env_clear().current_dir(root.path());
    for line in env
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
    {
        let (key, value) = line.split_once('=').unwrap();
        command.env(key, value);
    }
    command
        .env("DATABASE_URL", format!("sqlite:{}", db.display()))
        .env("SMTP_HOST", "127.0.0.1")
        .env("SMTP_PORT", "1")
        .env("SMTP_TLS", "none");
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("environment:    production"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("store:          ok"), "{stdout}");
    assert!(stdout.contains("mail:           FAILED"), "{stdout}");
}
