//! A Postgres cluster and a Redis server of the suite's own, so it can stop and
//! restart them under load without touching the machine's shared servers.
//!
//! Postgres runs from the server binaries of the installed PostgreSQL
//! (`/usr/lib/postgresql/<version>/bin`, the Debian layout; `.ci/run` installs
//! the `postgresql` package). initdb refuses to run as root, so as root the
//! cluster belongs to the `postgres` user the package creates.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// A free loopback port (bound, then released for a server to take).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn postgres_bin() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context(
            "the fault suite needs the PostgreSQL server binaries (apt-get install postgresql)",
        )?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no /usr/lib/postgresql/<version>/bin/pg_ctl (apt-get install postgresql)")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A private Postgres cluster on a port of its own.
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
}

impl Postgres {
    /// Creates the cluster under `dir` and starts it.
    pub async fn start_new(dir: &Path) -> anyhow::Result<Self> {
        let postgres = Self {
            bin: postgres_bin()?,
            dir: dir.join("postgres"),
            port: free_port()?,
        };
        std::fs::create_dir_all(&postgres.dir)?;
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&postgres.dir)
                .status()
                .await?;
            if !status.success() {
                bail!("chown to the postgres user failed (is the postgresql package installed?)");
            }
        }
        postgres
            .run(
                "initdb",
                &[
                    "-D",
                    &postgres.data(),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                ],
            )
            .await?;
        postgres.start().await?;
        Ok(postgres)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Runs one of the server's programs to completion, as `postgres` when root.
    async fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let path = self.bin.join(program);
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        let output = command
            .args(args)
            .current_dir("/tmp")
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", path.display()))?;
        if !output.status.success() {
            bail!(
                "{program} {args:?} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    pub async fn start(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .await
    }

    /// Stops the server: `immediate` is a crash (no checkpoint, recovery from
    /// the WAL at the next start), `fast` a clean shutdown.
    pub async fn stop(&self, mode: &str) -> anyhow::Result<()> {
        self.run("pg_ctl", &["-D", &self.data(), "-m", mode, "-w", "stop"])
            .await
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data();
        let mut command = if is_root() {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(pg_ctl);
            command
        } else {
            std::process::Command::new(pg_ctl)
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "stop"])
            .current_dir("/tmp")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A private Redis without persistence, on a port of its own.
pub struct Redis {
    pub port: u16,
    process: Option<Child>,
}

impl Redis {
    pub async fn start_new() -> anyhow::Result<Self> {
        let mut redis = Self {
            port: free_port()?,
            process: None,
        };
        redis.start().await?;
        Ok(redis)
    }

    pub async fn start(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("the fault suite needs redis-server (apt-get install redis-server)")?;
        self.process = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("redis-server did not listen on {} within 5 s", self.port)
    }

    /// Kills the server (SIGKILL): what it held is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill().await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}
