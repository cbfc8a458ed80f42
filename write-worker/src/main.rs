use std::process::ExitCode;

use clap::Parser;

use shared::version::VersionInfo;
use write_worker::settings::{Cli, Command};
use write_worker::{App, dlq, migrate};

/// Where the container images keep their `version.json` (else the build's own).
const VERSION_FILE: &str = "/app/version.json";

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    // dlq answers a person at a terminal: plain text, no MozLog lines, no Sentry.
    let telemetry = if matches!(command, Command::Dlq { .. }) {
        None
    } else {
        let version = VersionInfo::load(std::path::Path::new(VERSION_FILE));
        match shared::telemetry::init("addonreg-write-worker", &cli.settings.log, &version) {
            Ok(telemetry) => Some(telemetry),
            Err(e) => {
                eprintln!("write-worker: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let outcome = match command {
        Command::Dlq { command } => return dlq::main(&command, &cli.settings.amqp).await,
        Command::Intake(intake) => {
            match write_worker::intake::Intake::build(&intake, &cli.settings.amqp).await {
                Ok(intake) => {
                    intake.run(shared::lifecycle::stop_signal()).await;
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        Command::Migrate => migrate::run(&cli.settings).await.map_err(|e| e.to_string()),
        Command::Run => match App::build(cli.settings).await {
            Ok(app) => {
                app.run(shared::lifecycle::stop_signal()).await;
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
    };
    let code = match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(type = "worker.fatal", error, "worker failed");
            ExitCode::FAILURE
        }
    };
    // Sends the errors still queued (for at most a few seconds), then the
    // log lines still buffered, before exiting.
    if let Some(telemetry) = telemetry {
        telemetry.finish();
    }
    code
}
