use std::process::ExitCode;

use clap::Parser;

use api_gateway::{App, Settings};
use shared::version::VersionInfo;

#[tokio::main]
async fn main() -> ExitCode {
    let settings = Settings::parse();
    let version = VersionInfo::load(&settings.version_file);
    let telemetry = match shared::telemetry::init("addonreg-gateway", &settings.log, &version) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("api-gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match App::build(&settings).await {
        Ok(app) => {
            app.run(shared::lifecycle::stop_signal()).await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(type = "gateway.start", error = %e, "cannot start");
            ExitCode::FAILURE
        }
    };
    // Sends the errors still queued (for at most a few seconds), then the
    // log lines still buffered, before exiting.
    telemetry.finish();
    code
}
