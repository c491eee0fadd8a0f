use std::process::ExitCode;

fn main() -> ExitCode {
    microclaw::install_tls_provider();
    microclaw::cli::main()
}
