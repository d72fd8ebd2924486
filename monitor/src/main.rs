use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = monitor::cli::Cli::parse();
    monitor::telemetry::logging::init(&cli.log);
    // One thread: the ring reader and the processor are tasks of the same thread, so a batch
    // handed from one to the other wakes nobody (on a multi-threaded runtime each batch
    // woke a parked worker: a third of the daemon's CPU per fork+exec went to the scheduler).
    // What may block has threads of its own: the OTLP exporter, the stdout writers, the
    // fanotify guards, the liveness file (blocking pool). Container look-ups are async tasks
    // of this thread.
    let runtime = match tokio::runtime::Builder::new_current_thread()
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
