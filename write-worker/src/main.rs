use std::process::ExitCode;

use clap::Parser;

use write_worker::settings::{Cli, Command};
use write_worker::{App, dlq, migrate};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    // dlq answers a person at a terminal: plain text, no MozLog lines.
    if !matches!(command, Command::Dlq { .. })
        && let Err(e) = shared::telemetry::init("addonreg-write-worker", &cli.settings.log)
    {
        eprintln!("write-worker: {e}");
        return ExitCode::FAILURE;
    }
    let outcome = match command {
        Command::Dlq { command } => return dlq::main(&command, &cli.settings.amqp).await,
        Command::Migrate => migrate::run(&cli.settings).await.map_err(|e| e.to_string()),
        Command::Run => match App::build(cli.settings).await {
            Ok(app) => {
                app.run(shared::lifecycle::stop_signal()).await;
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(type = "worker.fatal", error, "worker failed");
            ExitCode::FAILURE
        }
    }
}
