//! `bit serve`: this machine's devices for `bit train --device ws://...` or `iroh://...`
//! elsewhere, through Burn Remote's server and its two transports.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::PathBuf;

use bit_device::devices_from_spec;
use burn::server::{
    IrohIdentity, IrohRelays, IrohTransport, RemoteServer, TokenAuthorizer, Transport,
    WebSocketTransport,
};

/// What `bit serve` serves, and where.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Port to listen on: TCP for WebSocket (0: any free port; the address is printed), UDP for
    /// Iroh (a fixed port: clients dial it).
    #[arg(long)]
    port: u16,
    /// Address to listen on. The default, 127.0.0.1, lets in only processes of this machine;
    /// any other address (e.g. 0.0.0.0) needs $BIT_REMOTE_TOKEN. Iroh always binds every
    /// interface, so it needs `--bind 0.0.0.0` said explicitly (and the token).
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    bind: IpAddr,
    /// The devices to serve, as `bit train --device` names them: cpu, cuda (every GPU),
    /// cuda:0,cuda:1, ... A client picks one by its position (ws://host:port/1) or all of them
    /// (ws://host:port).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// `websocket`: unencrypted, for this machine or a trusted network (or through an SSH
    /// tunnel). `iroh`: QUIC, encrypted, and the server authenticated by its key (clients dial
    /// iroh://ID@host:port, the id printed at start); the token still decides who gets in.
    #[arg(long, value_enum, default_value_t = ServeTransport::Websocket)]
    transport: ServeTransport,
    /// Iroh: the file of the server's secret key, created on first use (keep it private; its
    /// public id is what clients dial, and stays the same across restarts).
    #[arg(long, default_value = "bit-serve.key")]
    key: PathBuf,
}

/// Burn Remote's transports.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServeTransport {
    /// WebSocket over TCP: unencrypted.
    Websocket,
    /// Iroh (QUIC over UDP): encrypted, server authenticated by its key.
    Iroh,
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
    let (transport, address): (Transport, String) = match args.transport {
        ServeTransport::Websocket => {
            let listener = TcpListener::bind((args.bind, args.port))
                .map_err(|e| format!("cannot listen on {}:{}: {e}", args.bind, args.port))?;
            let address = format!("ws://{}", listener.local_addr()?);
            (WebSocketTransport::from_listener(listener).into(), address)
        }
        ServeTransport::Iroh => iroh(args)?,
    };
    let mut server = RemoteServer::new(devices.clone());
    if let Some(token) = token {
        server = server.with_authorizer(TokenAuthorizer::new(token)?);
    }
    let dial = if args.bind.is_unspecified() {
        "(clients put an address of this machine in place of the unspecified one) "
    } else {
        ""
    };
    println!(
        "serving {} device(s) ({}) on {address} {dial}(Ctrl-C to stop)",
        devices.len(),
        args.device
    );
    std::io::stdout().flush()?;
    server.serve(transport)?;
    Ok(())
}

/// The Iroh transport of `args` (direct connections only: no relay servers are contacted) and
/// the address clients dial, with the bind address standing for the machine's own.
fn iroh(args: &ServeArgs) -> Result<(Transport, String), Box<dyn std::error::Error>> {
    if args.bind.is_loopback() {
        return Err(
            "Iroh binds every interface (Burn's transport takes no address): pass \
                    --bind 0.0.0.0 to serve beyond this machine, or use the default WebSocket \
                    transport for this machine only"
                .into(),
        );
    }
    if args.port == 0 {
        return Err("Iroh needs a fixed --port: clients dial it directly".into());
    }
    let identity = IrohIdentity::load_or_create(&args.key)
        .map_err(|e| format!("cannot read or create the key {}: {e}", args.key.display()))?;
    let transport = IrohTransport::new(identity)
        .with_relays(IrohRelays::Disabled)
        .with_port(args.port);
    let address = format!("iroh://{}@{}:{}", transport.id(), args.bind, args.port);
    Ok((transport.into(), address))
}
