use clap::Parser;
use spotter::cli::{run, Cli};
use tracing_subscriber::EnvFilter;

fn main() {
    // Settings of the configuration file become flags the command line does not give.
    let argv = match spotter::cli::config::apply(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(argv);
    // Die quietly on a closed pipe (`spotter search cat | head`) like other Unix tools — except
    // the server, where a client closing its socket early must be an error on that connection
    // only (Rust ignores SIGPIPE by default, so writes to a closed socket return EPIPE).
    #[cfg(unix)]
    if !cli.command.is_server() {
        // SAFETY: restoring the default SIGPIPE disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let default_level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,spotter={default_level},spotter_model={default_level}"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    if let Err(err) = run(cli) {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}
