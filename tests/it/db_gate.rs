//! A TCP relay on loopback in front of the tests' Postgres that can cut every
//! connection through it and hold new ones until it is opened again: what a
//! process sees of a database restart, without touching the database the
//! test itself reads.

use std::sync::{Arc, Mutex};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};

use crate::helpers::postgres_base;

pub struct DbGate {
    url: reqwest::Url,
    open: watch::Sender<bool>,
    relays: Arc<Mutex<JoinSet<()>>>,
}

impl DbGate {
    /// An open gate to the tests' Postgres.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (server, url) = relayed_through(&listener);
        let (open, _) = watch::channel(true);
        let relays = Arc::new(Mutex::new(JoinSet::new()));
        tokio::spawn({
            let (open, relays) = (open.subscribe(), relays.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let (mut open, server) = (open.clone(), server.clone());
                    relays.lock().unwrap().spawn(async move {
                        // Held (not refused) while the gate is shut.
                        if open.wait_for(|open| *open).await.is_err() {
                            return;
                        }
                        if let Ok(mut server) = TcpStream::connect(server).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            }
        });
        Self { url, open, relays }
    }

    /// A database URL through the gate; `{db}` stands for the test database.
    pub fn database_url(&self) -> String {
        format!("{}/{{db}}?sslmode=disable", self.url)
    }

    /// Cuts every connection through the gate and holds new ones.
    pub fn shut(&self) {
        self.open.send_replace(false);
        self.relays.lock().unwrap().abort_all();
    }

    /// Lets the held connections and new ones through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

/// For a relay listening on `listener`: the tests' Postgres server address
/// (`host:port`), and its URL with the relay's address instead.
pub fn relayed_through(listener: &TcpListener) -> (String, reqwest::Url) {
    let mut url = reqwest::Url::parse(&postgres_base()).expect("MICROCLAW_TEST_POSTGRES");
    let server = format!(
        "{}:{}",
        url.host_str().expect("a Postgres host"),
        url.port().unwrap_or(5432)
    );
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(listener.local_addr().unwrap().port()))
        .unwrap();
    (server, url)
}
