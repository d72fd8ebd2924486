use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = monitor::cli::Cli::parse();
    monitor::telemetry::logging::init(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("monitor: failed to start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(monitor::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) if err.is::<monitor::cli::CheckFailed>() => std::process::ExitCode::from(1),
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("monitor: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
