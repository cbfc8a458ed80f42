use clap::Parser;

use api_gateway::{App, Settings};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let settings = Settings::parse();
    if let Err(e) = shared::telemetry::init("addonreg-gateway", &settings.log) {
        eprintln!("api-gateway: {e}");
        return std::process::ExitCode::FAILURE;
    }
    match App::build(&settings).await {
        Ok(app) => {
            app.run(shared::lifecycle::stop_signal()).await;
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(type = "gateway.start", error = %e, "cannot start");
            std::process::ExitCode::FAILURE
        }
    }
}
