//! `deploy/setup.sh` under `DESTDIR`: what it installs, with which permissions, that a
//! re-run changes nothing and keeps what certbot added, the stock `default` site, and the
//! preflight that refuses to start without nginx.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::{introgy_bin, repo, setup, setup_output};

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn read(root: &Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn setup_installs_everything_with_sane_modes_and_a_second_run_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let first = setup(root, "api.introgy.app");
    for path in [
        "usr/local/bin/introgy",
        "etc/systemd/system/introgy.service",
        "etc/nginx/sites-available/introgy.conf",
        "etc/nginx/snippets/introgy-proxy.conf",
        "etc/nginx/conf.d/introgy-upstream.conf",
        "etc/introgy/introgy.env",
    ] {
        assert!(root.join(path).exists(), "{path} missing after: {first}");
    }
    let link = root.join("etc/nginx/sites-enabled/introgy.conf");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("../sites-available/introgy.conf"),
        "a relative link works inside DESTDIR and on the host"
    );

    // Only the settings file and the data folder are private: the umask used for the
    // settings file does not leak into the folders and files installed after it.
    assert_eq!(mode(&root.join("etc/introgy/introgy.env")), 0o600);
    assert_eq!(mode(&root.join("var/lib/introgy")), 0o700);
    for dir in [
        "etc/nginx/sites-available",
        "etc/nginx/snippets",
        "etc/nginx/conf.d",
        "etc/systemd/system",
        "usr/local/bin",
        "etc/introgy",
    ] {
        assert_eq!(mode(&root.join(dir)), 0o755, "{dir}");
    }
    assert_eq!(
        mode(&root.join("etc/nginx/sites-available/introgy.conf")),
        0o644
    );
    assert_eq!(mode(&root.join("usr/local/bin/introgy")), 0o755);

    let env = read(root, "etc/introgy/introgy.env");
    let secret = env
        .lines()
        .find_map(|l| l.strip_prefix("JWT_SECRET_KEY="))
        .expect("a generated JWT secret");
    assert_eq!(secret.len(), 128, "64 random bytes in hex");
    for line in [
        "ENVIRONMENT=production",
        "HOST=127.0.0.1",
        "TRUSTED_PROXIES=127.0.0.1/32,::1/128",
        "METRICS_ADDR=127.0.0.1:9187",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} missing: {env}");
    }

    let site = read(root, "etc/nginx/sites-available/introgy.conf");
    assert!(site.contains("server_name api.introgy.app;"), "{site}");
    assert!(site.contains("include snippets/introgy-proxy.conf;"));
    assert!(
        !site.contains("default_server"),
        "a named site leaves the default alone"
    );
    let proxy = read(root, "etc/nginx/snippets/introgy-proxy.conf");
    assert!(
        proxy.contains("docs|redoc|openapi"),
        "docs are proxied at the root"
    );
    assert!(proxy.contains("location /api/"));
    assert!(read(root, "etc/nginx/conf.d/introgy-upstream.conf").contains("server 127.0.0.1:8000;"));
    let unit = read(root, "etc/systemd/system/introgy.service");
    for line in [
        "EnvironmentFile=/etc/introgy/introgy.env",
        "ExecStart=/usr/local/bin/introgy serve",
        "RestartPreventExitStatus=2",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "User=introgy",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line} missing from the unit"
        );
    }

    // Idempotent: nothing changes, and the secret is kept.
    let second = setup(root, "api.introgy.app");
    assert_eq!(second.trim(), "nothing changed");
    assert_eq!(read(root, "etc/introgy/introgy.env"), env);
    // A changed setting is applied to the site setup still owns.
    let third = setup(root, "api2.introgy.app");
    assert!(
        third.contains("/etc/nginx/sites-available/introgy.conf"),
        "{third}"
    );
    assert!(read(root, "etc/nginx/sites-available/introgy.conf")
        .contains("server_name api2.introgy.app;"));
    // The backend port follows PORT in the settings file.
    let env_path = root.join("etc/introgy/introgy.env");
    std::fs::write(&env_path, env.replace("PORT=8000", "PORT=8123")).unwrap();
    setup(root, "api2.introgy.app");
    assert!(read(root, "etc/nginx/conf.d/introgy-upstream.conf").contains("server 127.0.0.1:8123;"));
}

/// What `certbot --nginx -d NAME` leaves: the server block moved to 443 with its
/// certificate, and a new port-80 server that redirects.
pub fn certbot_edit(site: &str, name: &str, tls_port: u16, cert: &Path, key: &Path) -> String {
    let server_start = site.find("server {").expect("a server block");
    let server_end = server_start + site[server_start..].find("\n}\n").expect("its end") + 3;
    let original = &site[server_start..server_end];
    let tls = original
        .lines()
        .filter(|l| !l.trim_start().starts_with("listen "))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "\n}",
            &format!(
                "\n    listen {tls_port} ssl; # managed by Certbot\n    ssl_certificate {}; # managed by Certbot\n    ssl_certificate_key {}; # managed by Certbot\n}}",
                cert.display(),
                key.display()
            ),
        );
    let listen_lines: Vec<&str> = original
        .lines()
        .filter(|l| l.trim_start().starts_with("listen "))
        .collect();
    let redirect = format!(
        "server {{\n    if ($host = {name}) {{\n        return 301 https://$host$request_uri;\n    }} # managed by Certbot\n\n{}\n    server_name {name};\n    return 404; # managed by Certbot\n}}\n",
        listen_lines.join("\n")
    );
    format!(
        "{}{}\n{}{}",
        &site[..server_start],
        tls,
        &site[server_end..],
        redirect
    )
}

#[test]
fn a_re_run_keeps_the_tls_server_certbot_added() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    setup(root, "api.introgy.app");
    let path = root.join("etc/nginx/sites-available/introgy.conf");
    let edited = certbot_edit(
        &std::fs::read_to_string(&path).unwrap(),
        "api.introgy.app",
        443,
        Path::new("/etc/letsencrypt/live/api.introgy.app/fullchain.pem"),
        Path::new("/etc/letsencrypt/live/api.introgy.app/privkey.pem"),
    );
    std::fs::write(&path, &edited).unwrap();

    let again = setup(root, "api.introgy.app");
    assert!(
        again.contains("kept: /etc/nginx/sites-available/introgy.conf"),
        "{again}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        edited,
        "certbot's edit is gone"
    );
    assert!(edited.contains("listen 443 ssl; # managed by Certbot"));
    // What upgrades change still arrives, through the files setup owns.
    let snippet = root.join("etc/nginx/snippets/introgy-proxy.conf");
    std::fs::write(&snippet, "# an older version\n").unwrap();
    let upgraded = setup(root, "api.introgy.app");
    assert!(
        upgraded.contains("changed: /etc/nginx/snippets/introgy-proxy.conf"),
        "{upgraded}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), edited);
}

#[test]
fn a_catch_all_site_disables_the_stock_default_site_and_says_so() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let enabled = root.join("etc/nginx/sites-enabled");
    std::fs::create_dir_all(&enabled).unwrap();
    std::os::unix::fs::symlink(
        "/etc/nginx/sites-available/default",
        enabled.join("default"),
    )
    .unwrap();

    // With a server name, both sites live side by side.
    setup(root, "api.introgy.app");
    assert!(enabled.join("default").is_symlink());

    // Without one, the Introgy site must be the default server: the stock site goes.
    let output = setup(root, "_");
    assert!(!enabled.join("default").is_symlink(), "{output}");
    assert!(output.contains("DISABLED the stock nginx site"), "{output}");
    let site =
        std::fs::read_to_string(root.join("etc/nginx/sites-available/introgy.conf")).unwrap();
    assert!(site.contains("listen 80 default_server;"), "{site}");
    assert!(site.contains("server_name _;"));
}

#[test]
fn bad_arguments_are_refused_before_anything_is_installed() {
    let root = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (vec!["--server-name", "bad name;"], "must be a host name"),
        (vec!["--frobnicate"], "unknown argument"),
    ] {
        let output = setup_output(root.path(), &args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(expected),
            "{args:?}"
        );
    }
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}

#[test]
fn without_nginx_setup_stops_with_a_clear_message_before_changing_anything() {
    // A real (not DESTDIR) run, but as an unprivileged user and with a PATH without
    // nginx: the preflight must stop it at once, and even a broken preflight could not
    // change the machine as that user.
    let mut command = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"]);
        c
    } else {
        Command::new("bash")
    };
    let binary = tempfile::tempdir().unwrap();
    let copy = binary.path().join("introgy");
    std::fs::copy(introgy_bin(), &copy).unwrap();
    std::fs::set_permissions(binary.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = command
        .arg(repo("deploy/setup.sh"))
        .arg("--binary")
        .arg(&copy)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("nginx is not installed: sudo apt-get install nginx"),
        "{stderr}"
    );
}

#[test]
fn the_generated_settings_pass_introgy_check_read_with_env_file_once_mail_is_set() {
    let root = tempfile::tempdir().unwrap();
    setup(root.path(), "_");
    let env_path = root.path().join("etc/introgy/introgy.env");
    let db = root.path().join("introgy.db");
    // A live setup creates the database with `introgy init` before it checks.
    let init = Command::new(introgy_bin())
        .args(["init", "--env-file"])
        .arg(&env_path)
        .env_clear()
        .env("DATABASE_URL", format!("sqlite:{}", db.display()))
        .current_dir(root.path())
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let output = Command::new(introgy_bin())
        .args(["check", "--env-file"])
        .arg(&env_path)
        .env_clear()
        .env("DATABASE_URL", format!("sqlite:{}", db.display()))
        // Mail is the one thing the operator must add; an unreachable relay is reported.
        .env("SMTP_HOST", "127.0.0.1")
        .env("SMTP_PORT", "1")
        .env("SMTP_TLS", "none")
        .current_dir(root.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("environment:    production"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("jwt secret:     set"), "{stdout}");
    assert!(stdout.contains("store:          ok"), "{stdout}");
    assert!(stdout.contains("mail:           FAILED"), "{stdout}");
    assert!(!output.status.success());

    // Without mail, production refuses the settings: the exit code the unit does not
    // restart on (RestartPreventExitStatus=2).
    let output = Command::new(introgy_bin())
        .args(["check", "--env-file"])
        .arg(&env_path)
        .env_clear()
        .current_dir(root.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("mail transport"));
}

#[test]
fn the_installed_unit_passes_systemd_analyze_and_scores_as_documented() {
    let root = tempfile::tempdir().unwrap();
    setup(root.path(), "_");
    crate::verify_unit(root.path(), "/etc/systemd/system/introgy.service");
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(root.path().join("etc/systemd/system/introgy.service"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    let score = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for introgy.service: ")
                .nth(1)
        })
        .unwrap_or_else(|| panic!("no score in:\n{report}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let documented = format!("Overall exposure level for introgy.service: {score} OK");
    let doc = std::fs::read_to_string(repo("docs/deploy.md")).unwrap();
    assert!(
        doc.contains(&documented),
        "docs/deploy.md does not show `{documented}`"
    );
    let unit = std::fs::read_to_string(repo("deploy/introgy.service")).unwrap();
    assert!(
        unit.contains(&format!("scores it {score} (OK")),
        "the unit's comment is stale"
    );
}
