//! `bit serve`: this machine's devices for `bit train --device ws://host:port` elsewhere,
//! through Burn Remote's server (WebSocket transport).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener};

use bit_model::backend::devices_from_spec;
use burn::server::{RemoteServer, TokenAuthorizer, WebSocketTransport};

/// What `bit serve` serves, and where.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// TCP port to listen on (0: any free port; the address is printed).
    #[arg(long)]
    port: u16,
    /// Address to listen on. The default, 127.0.0.1, lets in only processes of this machine;
    /// any other address (e.g. 0.0.0.0) needs $BIT_REMOTE_TOKEN.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    bind: IpAddr,
    /// The devices to serve, as `bit train --device` names them: cpu, cuda (every GPU),
    /// cuda:0,cuda:1, ... A client picks one by its position (ws://host:port/1) or all of them
    /// (ws://host:port).
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Serves until Ctrl-C or SIGTERM.
pub fn serve(args: &ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let token = std::env::var("BIT_REMOTE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    if token.is_none() && !args.bind.is_loopback() {
        return Err(format!(
            "refusing to serve on {} without a token: set BIT_REMOTE_TOKEN (clients present the \
             same value), or keep the default --bind 127.0.0.1",
            args.bind
        )
        .into());
    }
    let devices = devices_from_spec(&args.device)?;
    let listener = TcpListener::bind((args.bind, args.port))
        .map_err(|e| format!("cannot listen on {}:{}: {e}", args.bind, args.port))?;
    let address = listener.local_addr()?;
    let mut server = RemoteServer::new(devices.clone());
    if let Some(token) = token {
        server = server.with_authorizer(TokenAuthorizer::new(token)?);
    }
    println!(
        "serving {} device(s) ({}) on ws://{address} (train with --device ws://{address}); \
         Ctrl-C to stop",
        devices.len(),
        args.device
    );
    std::io::stdout().flush()?;
    server.serve(WebSocketTransport::from_listener(listener))?;
    Ok(())
}
