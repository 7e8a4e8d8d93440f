//! The shipped site behind a real nginx from Debian's package, next to the package's stock
//! `default` site, with the service behind it, everything on free ports: the docs and the
//! API answer 200 through nginx, client addresses reach the service's rate limiter via
//! `X-Forwarded-For`, and after a certbot-style edit a re-run of setup keeps the TLS
//! server, which then serves the same locations over HTTPS.
//!
//! nginx comes from `INTROGY_TEST_NGINX_ROOT` (the `nginx` and `nginx-common` packages
//! extracted by scripts/test, so no daemon is installed or started on the machine), or
//! from an installed nginx. Its stock `nginx.conf` is used with the paths moved into a
//! temporary folder: `/etc/nginx/` → the DESTDIR setup installed into, `/var/log/nginx`
//! and `/run` → scratch folders, port 80 → a free port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::setup::certbot_edit;
use crate::{free_port, setup, wait_for_port, Process};

const NAME: &str = "api.introgy.test";

/// Where nginx and its stock configuration are: (the nginx binary, the folder holding
/// `nginx.conf`, `mime.types` and `sites-available/default`).
fn nginx() -> (PathBuf, PathBuf) {
    let root = match std::env::var("INTROGY_TEST_NGINX_ROOT") {
        Ok(root) if !root.is_empty() => PathBuf::from(root),
        _ => PathBuf::from("/"),
    };
    let binary = root.join("usr/sbin/nginx");
    let conf = root.join("etc/nginx");
    assert!(
        binary.exists() && conf.join("sites-available/default").exists(),
        "this test needs nginx from Debian's package: run scripts/test, or \
         INTROGY_TEST_NGINX_ROOT=$(scripts/fetch-nginx) cargo test --test deploy"
    );
    (binary, conf)
}

fn ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// Rewrites one installed configuration file for this run (paths and ports).
fn localise(text: &str, etc: &Path, scratch: &Path, http_port: u16) -> String {
    let etc_prefix = format!("{}/", etc.display());
    // A file localised before (the kept site) already names the DESTDIR.
    let mut text = if text.contains(&etc_prefix) {
        text.to_owned()
    } else {
        text.replace("/etc/nginx/", &etc_prefix)
    };
    text = text
        .replace("/var/log/nginx", &scratch.join("log").display().to_string())
        .replace(
            "/run/nginx.pid",
            &scratch.join("nginx.pid").display().to_string(),
        );
    for (from, to) in [
        ("listen 80;", format!("listen {http_port};")),
        ("listen 80 ", format!("listen {http_port} ")),
        ("listen [::]:80;", format!("listen [::]:{http_port};")),
        ("listen [::]:80 ", format!("listen [::]:{http_port} ")),
    ] {
        text = text.replace(from, &to);
    }
    if !ipv6_loopback() {
        // A container without IPv6 cannot bind [::]; the IPv4 listeners are what is tested.
        text = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("listen [::]"))
            .collect::<Vec<_>>()
            .join("\n");
    }
    text
}

struct Nginx {
    binary: PathBuf,
    conf: PathBuf,
    scratch: PathBuf,
    _process: Option<Process>,
}

impl Nginx {
    fn args(&self) -> Vec<String> {
        vec![
            "-p".into(),
            format!("{}/", self.scratch.display()),
            "-c".into(),
            self.conf.display().to_string(),
            "-e".into(),
            self.scratch.join("log/error.log").display().to_string(),
        ]
    }

    /// `nginx -t`; returns its output (which must not warn about server names).
    fn test_config(&self) -> String {
        let output = Command::new(&self.binary)
            .args(self.args())
            .arg("-t")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "nginx -t failed:\n{text}");
        assert!(!text.contains("conflicting server name"), "{text}");
        text
    }

    fn start(&mut self, ports: &[u16]) {
        self.test_config();
        let mut command = Command::new(&self.binary);
        command.args(self.args()).args(["-g", "daemon off;"]);
        self._process = Some(Process::spawn(command));
        for port in ports {
            wait_for_port(*port, Duration::from_secs(15));
        }
    }

    fn stop(&mut self) {
        self._process = None;
    }
}

/// Installs the site with setup into `root`, next to the stock default site, and writes
/// an nginx.conf (the package's, localised) that serves it on `http_port`.
fn install(
    root: &Path,
    scratch: &Path,
    server_name: &str,
    backend_port: u16,
    http_port: u16,
) -> Nginx {
    let (binary, stock) = nginx();
    let etc = root.join("etc/nginx");
    std::fs::create_dir_all(etc.join("sites-available")).unwrap();
    std::fs::create_dir_all(etc.join("sites-enabled")).unwrap();
    std::fs::copy(
        stock.join("sites-available/default"),
        etc.join("sites-available/default"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/etc/nginx/sites-available/default",
        etc.join("sites-enabled/default"),
    )
    .unwrap();
    for file in ["mime.types", "nginx.conf"] {
        std::fs::copy(stock.join(file), etc.join(file)).unwrap();
    }
    // The first run writes the settings file; the backend port is set there and setup
    // carries it into the upstream.
    setup(root, server_name);
    let env_path = root.join("etc/introgy/introgy.env");
    let env = std::fs::read_to_string(&env_path).unwrap();
    std::fs::write(
        &env_path,
        env.replace("PORT=8000", &format!("PORT={backend_port}")),
    )
    .unwrap();
    setup(root, server_name);
    localise_tree(root, scratch, http_port);
    Nginx {
        binary,
        conf: etc.join("nginx.conf"),
        scratch: scratch.to_owned(),
        _process: None,
    }
}

/// Localises every configuration file nginx reads (again after a re-run of setup).
fn localise_tree(root: &Path, scratch: &Path, http_port: u16) {
    let etc = root.join("etc/nginx");
    std::fs::create_dir_all(scratch.join("log")).unwrap();
    let mut files = vec![etc.join("nginx.conf")];
    for dir in ["sites-available", "snippets", "conf.d"] {
        if let Ok(entries) = std::fs::read_dir(etc.join(dir)) {
            files.extend(entries.map(|e| e.unwrap().path()));
        }
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut local = localise(&text, &etc, scratch, http_port);
        if file.ends_with("nginx.conf") {
            // As root, workers would switch to www-data, which may not exist here.
            let user = if unsafe { libc::geteuid() } == 0 {
                "user root;"
            } else {
                ""
            };
            local = local
                .replace("user www-data;", user)
                .lines()
                .filter(|l| !l.contains("modules-enabled"))
                .collect::<Vec<_>>()
                .join("\n");
            let temp = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
                .iter()
                .map(|t| format!("\t{t}_temp_path {};\n", scratch.join(t).display()))
                .collect::<String>();
            if !local.contains("proxy_temp_path") {
                local = local.replacen("http {\n", &format!("http {{\n{temp}"), 1);
            }
        }
        std::fs::write(&file, local).unwrap();
    }
    // The stock site links absolutely; inside the DESTDIR it must point there.
    let default = etc.join("sites-enabled/default");
    if default.is_symlink() {
        std::fs::remove_file(&default).unwrap();
        std::os::unix::fs::symlink(etc.join("sites-available/default"), &default).unwrap();
    }
}

/// The service as the unit runs it: the installed binary and settings file, with what
/// differs on this machine in the environment (which wins over the file).
fn start_service(root: &Path, dir: &Path) -> (Process, u16) {
    let env_file = root.join("etc/introgy/introgy.env");
    // As setup.sh does on a live install: the production database is created by `init`.
    let init = Command::new(root.join("usr/local/bin/introgy"))
        .arg("init")
        .arg("--env-file")
        .arg(&env_file)
        .current_dir(dir)
        .env_clear()
        .env(
            "DATABASE_URL",
            format!("sqlite:{}", dir.join("introgy.db").display()),
        )
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let mut command = Command::new(root.join("usr/local/bin/introgy"));
    command
        .arg("serve")
        .arg("--env-file")
        .arg(&env_file)
        .current_dir(dir)
        .env_clear()
        .env(
            "DATABASE_URL",
            format!("sqlite:{}", dir.join("introgy.db").display()),
        )
        .env("PORT", "0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        // Production needs a mail transport; mail is not under test here.
        .env("SMTP_HOST", "127.0.0.1")
        .env("SMTP_PORT", "1")
        .env("SMTP_TLS", "none")
        .env("AUTH_RATE_LIMIT_PER_MINUTE", "3");
    let mut process = Process::spawn(command);
    let address = process.listening_address("introgy listening");
    let port = address.rsplit(':').next().unwrap().parse().unwrap();
    (process, port)
}

fn client_from(source: Ipv4Addr, http_port: u16) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(source))
        .resolve(NAME, SocketAddr::from(([127, 0, 0, 1], http_port)))
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let response = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn the_site_serves_docs_and_api_through_nginx_next_to_the_stock_default_site() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let scratch = dir.path().join("nginx");
    let (_service, backend_port) = start_service_after_setup(&root, dir.path());
    let http_port = free_port();
    let mut nginx = install(&root, &scratch, NAME, backend_port, http_port);
    nginx.start(&[http_port]);

    let base = format!("http://{NAME}:{http_port}");
    let client = client_from(Ipv4Addr::new(127, 0, 0, 2), http_port);
    for (path, needle) in [
        ("/docs", "swagger"),
        ("/docs/", "swagger"),
        ("/redoc", "redoc"),
        ("/openapi.json", "\"openapi\""),
        ("/api/openapi.json", "\"openapi\""),
        ("/api/docs/", "swagger"),
        ("/health", "\"connected\""),
        ("/api/health", "\"connected\""),
        ("/health/ready", "\"ready\""),
    ] {
        let (status, body) = get(&client, &format!("{base}{path}")).await;
        assert_eq!(status, 200, "{path} through nginx: {body}");
        assert!(
            body.to_lowercase().contains(&needle.to_lowercase()),
            "{path}: {body}"
        );
    }
    // Another host name reaches the stock default site, which is still there.
    let (status, body) = get(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{http_port}/health"),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("nginx"), "{body}");
    // Metrics are not published through the site.
    let (status, _) = get(&client, &format!("{base}/metrics")).await;
    assert_eq!(status, 404);

    // `introgy smoke` through nginx, as setup runs it (name resolved to 127.0.0.1).
    let smoke = Command::new(crate::introgy_bin())
        .args([
            "smoke",
            &format!("http://{NAME}:{http_port}"),
            "--connect-to",
            "127.0.0.1",
        ])
        .env_clear()
        .output()
        .unwrap();
    assert!(
        smoke.status.success(),
        "{}",
        String::from_utf8_lossy(&smoke.stdout)
    );

    // Client addresses reach the rate limiter: 127.0.0.2 uses up its budget of 3 auth
    // calls per minute (a forged X-Forwarded-For does not help it), 127.0.0.3 still has
    // all of its own.
    let code = |client: reqwest::Client, forged: Option<&'static str>| {
        let url = format!("{base}/auth/send-verification-code");
        async move {
            let mut request = client
                .post(url)
                .json(&json!({"email": "someone@example.com"}));
            if let Some(forged) = forged {
                request = request.header("x-forwarded-for", forged);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    for _ in 0..3 {
        assert_eq!(code(client.clone(), None).await.0, 202);
    }
    let (status, body) = code(client.clone(), Some("203.0.113.9")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        body["code"], "rate_limited",
        "the service's limit, not nginx's: {body}"
    );
    let other = client_from(Ipv4Addr::new(127, 0, 0, 3), http_port);
    assert_eq!(code(other, None).await.0, 202);
    nginx.stop();
}

#[tokio::test]
async fn after_certbot_a_re_run_of_setup_keeps_https_and_its_locations() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let scratch = dir.path().join("nginx");
    let (_service, backend_port) = start_service_after_setup(&root, dir.path());
    let (http_port, tls_port) = (free_port(), free_port());
    let mut nginx = install(&root, &scratch, NAME, backend_port, http_port);

    // What certbot leaves (with a self-signed certificate instead of Let's Encrypt's).
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let openssl = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        ])
        .arg(format!("/CN={NAME}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        openssl.status.success(),
        "{}",
        String::from_utf8_lossy(&openssl.stderr)
    );
    let site = root.join("etc/nginx/sites-available/introgy.conf");
    let edited = certbot_edit(
        &std::fs::read_to_string(&site).unwrap(),
        NAME,
        tls_port,
        &cert,
        &key,
    );
    std::fs::write(&site, &edited).unwrap();

    // The upgrade: setup runs again (a changed snippet is rewritten; the site is kept).
    std::fs::write(
        root.join("etc/nginx/snippets/introgy-proxy.conf"),
        "# older\n",
    )
    .unwrap();
    let output = setup(&root, NAME);
    assert!(
        output.contains("kept: /etc/nginx/sites-available/introgy.conf"),
        "{output}"
    );
    assert_eq!(std::fs::read_to_string(&site).unwrap(), edited);
    localise_tree(&root, &scratch, http_port);
    nginx.start(&[http_port, tls_port]);

    let https = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve(NAME, SocketAddr::from(([127, 0, 0, 1], tls_port)))
        .build()
        .unwrap();
    for path in ["/health", "/docs/", "/openapi.json", "/api/health"] {
        let (status, body) = get(&https, &format!("https://{NAME}:{tls_port}{path}")).await;
        assert_eq!(status, 200, "{path} over HTTPS: {body}");
    }
    // Plain HTTP now redirects to HTTPS, as certbot set it up.
    let plain = reqwest::Client::builder()
        .resolve(NAME, SocketAddr::from(([127, 0, 0, 1], http_port)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = plain
        .get(format!("http://{NAME}:{http_port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 301);
    assert!(response.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("https://"));
    nginx.stop();
}

/// Installs with setup (for the binary and the settings file) and starts the service
/// from them; returns it and its port.
fn start_service_after_setup(root: &Path, dir: &Path) -> (Process, u16) {
    std::fs::create_dir_all(root).unwrap();
    setup(root, NAME);
    let service_dir = dir.join("service");
    std::fs::create_dir_all(&service_dir).unwrap();
    start_service(root, &service_dir)
}

#[tokio::test]
async fn without_a_server_name_the_site_answers_every_name_instead_of_the_stock_site() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let scratch = dir.path().join("nginx");
    let (_service, backend_port) = start_service_after_setup(&root, dir.path());
    let http_port = free_port();
    // The stock site is enabled when setup runs; setup must take it out of the way.
    let mut nginx = install(&root, &scratch, "_", backend_port, http_port);
    assert!(!root.join("etc/nginx/sites-enabled/default").exists());
    nginx.start(&[http_port]);
    for host in ["127.0.0.1", "localhost"] {
        let (status, body) = get(
            &reqwest::Client::new(),
            &format!("http://{host}:{http_port}/health"),
        )
        .await;
        assert_eq!(status, 200, "{host}: {body}");
        assert!(body.contains("\"connected\""), "{body}");
    }
    nginx.stop();
}
