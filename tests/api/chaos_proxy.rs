//! A real outage for tests: a TCP proxy in front of the test MongoDB server that a test
//! cuts and restores, and `spawn_app_behind_proxy()`. Used by `outage.rs` (MongoDB's
//! half of the outage tests; SQLite's outage is a moved database file) and `tests/mongo.rs`.

use std::sync::Arc;

use crate::helpers::{mongo_db_name_for, spawn_app_in, TestApp};

/// A TCP proxy between the app and the test MongoDB server that a test can cut and
/// restore: a real outage as the driver sees it (open connections reset, new ones
/// closed at once), with no stand-in store. Modelled on crates.io's `ChaosProxy`.
pub struct ChaosProxy {
    port: u16,
    up: tokio::sync::watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    /// Listens on a free local port and forwards to `backend` (`host:port`).
    pub async fn start(backend: String) -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let (up, _) = tokio::sync::watch::channel(true);
        let watch = up.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*watch.borrow() {
                    // Cut: the connection closes at once, as a dead server's would.
                    drop(client);
                    continue;
                }
                let mut cut = watch.subscribe();
                let backend = backend.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&backend).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Arc::new(Self { port, up, accept })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops every open connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The test MongoDB server's `host:port` (from INTROGY_TEST_MONGO_URL).
pub fn mongo_host_port() -> String {
    let url = std::env::var("INTROGY_TEST_MONGO_URL")
        .expect("an outage test needs INTROGY_TEST_MONGO_URL; run scripts/test");
    url.trim_start_matches("mongodb://")
        .split(['/', '?'])
        .next()
        .expect("host:port in INTROGY_TEST_MONGO_URL")
        .to_owned()
}

/// `spawn_app` on MongoDB through a [`ChaosProxy`], with a 2 s store timeout so an
/// outage answers quickly. MongoDB only: SQLite has no connection to cut.
pub async fn spawn_app_behind_proxy() -> (TestApp, Arc<ChaosProxy>) {
    let proxy = ChaosProxy::start(mongo_host_port()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "mongodb://127.0.0.1:{}/{}?directConnection=true",
        proxy.port(),
        mongo_db_name_for(dir.path())
    );
    let app = spawn_app_in(
        dir,
        &["--database-url", &url, "--store-timeout-seconds", "2"],
        true,
    )
    .await;
    (app, proxy)
}
