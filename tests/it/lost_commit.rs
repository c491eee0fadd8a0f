//! A Postgres wire-protocol relay on loopback that loses the answer to one
//! commit: the first transaction whose statements contain a marker is let
//! commit, and then its connection is cut before the client hears back. The
//! client sees the connection close at `COMMIT`: whether it committed is
//! unknown to it, though it did.
//!
//! The relay reads the frontend's messages (a startup packet, then a type
//! byte and a length each) to spot the marker in a `Parse` (the first time the
//! connection prepares the statement, so: the first such transaction of a
//! fresh pool) and the `COMMIT` after it; the backend's bytes are copied as
//! they come. Clients connect with `sslmode=disable`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use crate::db_gate::relayed_through;

/// The SSLRequest and GSSENCRequest codes of a startup packet.
const ENCRYPTION_REQUESTS: [u32; 2] = [80_877_103, 80_877_104];

pub struct LostCommitRelay {
    /// The test server's URL with the relay's address in it.
    url: reqwest::Url,
    lost: Arc<AtomicBool>,
}

impl LostCommitRelay {
    /// Relays to the tests' Postgres; loses the answer to the commit of the
    /// first transaction with a statement containing `marker`.
    pub async fn start(marker: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (server, url) = relayed_through(&listener);
        let lost = Arc::new(AtomicBool::new(false));
        tokio::spawn({
            let lost = lost.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(relay(client, server.clone(), marker, lost.clone()));
                }
            }
        });
        Self { url, lost }
    }

    /// A database URL through the relay; `{db}` stands for the test database.
    pub fn database_url(&self) -> String {
        format!("{}/{{db}}?sslmode=disable", self.url)
    }

    /// Whether a commit's answer was lost.
    pub fn lost_a_commit(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

/// One client connection: frontend messages inspected on the way in, backend
/// bytes copied (or, once this connection's commit is to be lost, read and
/// dropped with the connection).
async fn relay(client: TcpStream, server: String, marker: &'static str, lost: Arc<AtomicBool>) {
    let Ok(server) = TcpStream::connect(server).await else {
        return;
    };
    let (client_in, client_out) = client.into_split();
    let (server_in, server_out) = server.into_split();
    let losing = Arc::new(AtomicBool::new(false));
    tokio::spawn(backend_to_client(
        server_in,
        client_out,
        losing.clone(),
        lost.clone(),
    ));
    let _ = frontend_to_server(client_in, server_out, marker, losing, lost).await;
}

async fn frontend_to_server(
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
    marker: &str,
    losing: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let length = client.read_u32().await?;
    let mut startup = vec![0; (length as usize).saturating_sub(4)];
    client.read_exact(&mut startup).await?;
    assert!(
        !startup.get(..4).is_some_and(
            |code| ENCRYPTION_REQUESTS.contains(&u32::from_be_bytes(code.try_into().unwrap()))
        ),
        "connect through the relay with sslmode=disable"
    );
    server.write_u32(length).await?;
    server.write_all(&startup).await?;
    // Whether the transaction under way prepared a statement with the marker.
    let mut marked = false;
    loop {
        let kind = client.read_u8().await?;
        let length = client.read_u32().await?;
        let mut body = vec![0; (length as usize).saturating_sub(4)];
        client.read_exact(&mut body).await?;
        match kind {
            b'P' => marked |= String::from_utf8_lossy(&body).contains(marker),
            // sqlx sends BEGIN, COMMIT and ROLLBACK as simple queries (and its
            // type lookups, within transactions too).
            b'Q' => {
                let statement = body.strip_suffix(b"\0").unwrap_or(&body);
                if marked && statement == b"COMMIT" && !lost.load(Ordering::SeqCst) {
                    losing.store(true, Ordering::SeqCst);
                }
                if matches!(statement, b"BEGIN" | b"COMMIT" | b"ROLLBACK") {
                    marked = false;
                }
            }
            _ => {}
        }
        server.write_u8(kind).await?;
        server.write_u32(length).await?;
        server.write_all(&body).await?;
    }
}

async fn backend_to_client(
    mut server: OwnedReadHalf,
    mut client: OwnedWriteHalf,
    losing: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = match server.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if losing.load(Ordering::SeqCst) {
            // The backend answered the COMMIT (whether it committed is for
            // the test to check). The client never hears it; its connection
            // closes.
            lost.store(true, Ordering::SeqCst);
            let _ = client.shutdown().await;
            return;
        }
        if client.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
