use std::process::ExitCode;

use clap::Parser;

use api_gateway::purge::{self, settings::PurgerSettings};
use shared::version::VersionInfo;

#[tokio::main]
async fn main() -> ExitCode {
    let settings = PurgerSettings::parse();
    let version = VersionInfo::load(&settings.version_file);
    let telemetry = match shared::telemetry::init("addonreg-edge-purger", &settings.log, &version) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("edge-purger: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match purge::run(&settings, shared::lifecycle::stop_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(type = "purge.start", error = %e, "cannot start");
            ExitCode::FAILURE
        }
    };
    telemetry.finish();
    code
}
