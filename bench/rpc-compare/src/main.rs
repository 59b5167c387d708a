//! Calls per second through each RPC stack on loopback, 1 and 64 concurrent
//! callers, each with its own connection and one call in flight, carrying a
//! 128-byte body (about a metadata request).

use sparefs_wire::frame;
use sparefs_proto::msg::{Reply, Request, RequestFrame, ResponseFrame, RpcError};
use sparefs_wire::service::{CallFuture, Peer, Service};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod echo {
    tonic::include_proto!("echo");
}

struct Framed;
impl Service for Framed {
    fn call(self: Arc<Self>, _peer: Peer, req: Request) -> CallFuture {
        Box::pin(async move {
            match req {
                Request::PutFragment { data, .. } => Ok(Reply::Bytes(data)),
                _ => Err(RpcError::Busy),
            }
        })
    }
}

struct Grpc;
#[tonic::async_trait]
impl echo::echo_server::Echo for Grpc {
    async fn call(&self, r: tonic::Request<echo::Msg>) -> Result<tonic::Response<echo::Msg>, tonic::Status> {
        Ok(tonic::Response::new(r.into_inner()))
    }
}

const SECS: u64 = 5;

/// Calls per second of `clients` callers, each running `caller` (which
/// counts its calls in the counter until the deadline) at once.
async fn calls_per_second<F, Fut>(clients: usize, caller: F) -> f64
where
    F: Fn(Instant, Arc<AtomicU64>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let n = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(SECS);
    let tasks: Vec<_> = (0..clients).map(|_| tokio::spawn(caller(stop, n.clone()))).collect();
    for t in tasks {
        t.await.expect("task");
    }
    n.load(Ordering::Relaxed) as f64 / SECS as f64
}

async fn framed_run(addr: String, clients: usize) -> f64 {
    calls_per_second(clients, |stop, n| {
        let addr = addr.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
            s.set_nodelay(true).expect("nodelay");
            let cap = sparefs_proto::layout::Capability { block: sparefs_proto::BlockId(1), write: true, expires: 0, macs: Vec::new() };
            let mut buf = Vec::new();
            let mut call = 0;
            while Instant::now() < stop {
                call += 1;
                let body = Request::PutFragment { cap: cap.clone(), block: sparefs_proto::BlockId(1), index: 0, data: vec![7; 128], table: Vec::new() };
                frame::write_frame(&mut s, &RequestFrame { call, body }).await.expect("write");
                frame::read_frame(&mut s, &mut buf).await.expect("read");
                let _: ResponseFrame = frame::decode(&buf).expect("decode");
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
    .await
}

async fn grpc_run(addr: String, clients: usize) -> f64 {
    calls_per_second(clients, |stop, n| {
        let addr = addr.clone();
        async move {
            let mut c = echo::echo_client::EchoClient::connect(format!("http://{addr}")).await.expect("connect");
            let mut id = 0;
            while Instant::now() < stop {
                id += 1;
                c.call(echo::Msg { id, body: vec![7; 128] }).await.expect("call");
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
    .await
}

#[tokio::main]
async fn main() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let framed_addr = l.local_addr().expect("addr").to_string();
    tokio::spawn(sparefs_wire::service::serve(l, Arc::new(Framed), None));
    let g = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let grpc_addr = g.local_addr().expect("addr").to_string();
    drop(g);
    let ga: std::net::SocketAddr = grpc_addr.parse().expect("addr");
    tokio::spawn(tonic::transport::Server::builder().add_service(echo::echo_server::EchoServer::new(Grpc)).serve(ga));
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("| stack | 1 caller calls/s | 64 callers calls/s |\n|---|---|---|");
    let f1 = framed_run(framed_addr.clone(), 1).await;
    let f64_ = framed_run(framed_addr, 64).await;
    println!("| framed postcard (proto::service) | {f1:.0} | {f64_:.0} |");
    let g1 = grpc_run(grpc_addr.clone(), 1).await;
    let g64 = grpc_run(grpc_addr, 64).await;
    println!("| tonic 0.14 unary gRPC | {g1:.0} | {g64:.0} |");
}
