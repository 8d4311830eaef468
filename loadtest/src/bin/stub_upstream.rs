//! The benchmark's stub upstream: `stub-upstream --listen 127.0.0.1:18081 [--workers 1]`.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Answers every HTTP/1.1 request 200 {\"ok\":true}")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18081")]
    listen: std::net::SocketAddr,
    /// Runtime worker threads (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    loadtest::runtime(args.workers)?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        eprintln!("stub-upstream listening on {}", listener.local_addr()?);
        // On the worker, not on the thread that blocks on this future: a new connection
        // is then accepted by the thread that serves it, not by a second thread that
        // must first be scheduled on the (busy) core.
        tokio::spawn(loadtest::servers::stub(listener)).await?;
        Ok(())
    })
}
