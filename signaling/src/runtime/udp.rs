//! SIP over UDP: one reader per listen socket, datagrams framed and parsed
//! here and handed to the agent's task (dropped, counted, when its queue
//! is full).

use std::{net::SocketAddr, sync::Arc};

use tokio::net::UdpSocket;

use super::Context;
use crate::{
    message::{self, Frame},
    proxy::{Peer, Transport},
};

pub(super) async fn reader(socket: Arc<UdpSocket>, local: SocketAddr, ctx: Arc<Context>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            () = ctx.events.closed() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        let Ok((n, remote)) = received else {
            continue;
        };
        let peer = Peer {
            transport: Transport::Udp,
            conn: None,
            local,
            remote,
        };
        match message::datagram(&buf[..n], ctx.cfg.max_message) {
            Ok(Frame::Message(bytes)) => {
                ctx.deliver(peer, bytes);
            }
            Ok(Frame::Ping) => {
                // RFC 5626 §3.5.1 (datagram keepalives are CRLFCRLF too).
                let _ = socket.try_send_to(b"\r\n", remote);
            }
            Ok(Frame::Pong) => {}
            Err(e) => {
                ctx.malformed(peer, &buf[..n], e);
            }
        }
    }
}
