//! The `inclubit` binary: parse, start logging, dispatch.

use inclubit::cli::Parsed;

fn main() -> std::process::ExitCode {
    let cli = match inclubit::cli::parse(std::env::args_os().collect()) {
        Ok(Parsed::Run(cli)) => *cli,
        Ok(Parsed::PrintConfig(text)) => {
            print!("{text}");
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let code = inclubit::commands::run(cli);
    std::process::ExitCode::from(code as u8)
}
