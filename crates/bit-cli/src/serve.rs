//! `bit serve`: this machine's devices for `bit train --device ws://...` or `iroh://...`
//! elsewhere, through Burn Remote's server and its two transports.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
    refuse_hostile_peers();
    server.serve(transport)?;
    Ok(())
}

/// Burn's server tasks panic on some of what a peer can send (a frame claiming more than the
/// transport's 1 GiB limit, which Burn 0.22 does not let us lower; bytes that decode to no
/// message): the server survives, the connection ends, and that is a refusal of the peer, not
/// a crash. Such panics print one warning line instead of a crash report with a backtrace, and
/// the memory the refused frame took is handed back to the system (glibc keeps freed memory
/// otherwise: a 64 MiB frame left ~280 MB resident). Any other panic is reported as before.
fn refuse_hostile_peers() {
    let refused = Arc::new(AtomicBool::new(false));
    let report = std::panic::take_hook();
    let flag = refused.clone();
    std::panic::set_hook(Box::new(move |info| {
        let transport = info.location().is_some_and(|l| {
            l.file().contains("burn-communication-") || l.file().contains("/transport/")
        });
        if !transport {
            return report(info);
        }
        let message = match (
            info.payload().downcast_ref::<String>(),
            info.payload().downcast_ref::<&str>(),
        ) {
            (Some(m), _) => m.as_str(),
            (_, Some(m)) => m,
            _ => "a malformed message",
        };
        eprintln!("bit serve: refused a connection: {message}");
        flag.store(true, Ordering::SeqCst);
    }));
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            if refused.swap(false, Ordering::SeqCst) {
                // The panicking task unwinds and frees the frame after the hook: wait for it.
                std::thread::sleep(Duration::from_millis(500));
                // SAFETY: malloc_trim only returns free heap pages to the kernel; it takes the
                // allocator's own locks and touches no memory in use.
                unsafe { libc::malloc_trim(0) };
            }
        }
    });
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
