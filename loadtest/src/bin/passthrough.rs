//! The benchmark's floor: a bare hyper pass-through proxy.
//! `passthrough --listen 127.0.0.1:18082 --upstream 127.0.0.1:18081 [--workers 1]`.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Forwards every HTTP/1.1 request to the upstream, untouched")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18082")]
    listen: std::net::SocketAddr,
    #[arg(long, default_value = "127.0.0.1:18081")]
    upstream: std::net::SocketAddr,
    /// Worker threads of the multi-threaded runtime.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// A current-thread runtime instead (as riskgate runs with RISKGATE_WORKERS=1).
    #[arg(long)]
    current_thread: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = if args.current_thread {
        loadtest::current_thread()?
    } else {
        loadtest::runtime(args.workers)?
    };
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        eprintln!(
            "passthrough listening on {} -> {}",
            listener.local_addr()?,
            args.upstream
        );
        // On a worker, not the thread that blocks on this future: accepts must not wait
        // for a second thread to be scheduled on a busy core.
        tokio::spawn(loadtest::servers::passthrough(listener, args.upstream)).await?;
        Ok(())
    })
}
