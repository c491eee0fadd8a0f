use std::process::ExitCode;

fn main() -> ExitCode {
    // reqwest is built without a default TLS provider so the tree holds only ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    microclaw::cli::main()
}
