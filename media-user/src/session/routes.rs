//! The data-plane routes of a call: what each local port forwards to
//! where (and which sources it accepts), computed from the call model and
//! (re)programmed through the [`Backend`] after every change.

use std::{net::SocketAddr, time::Instant};

use tracing::debug;

use super::{
    backend::{Backend, Route},
    engine::Engine,
    model::Mono,
};

impl<B: Backend> Engine<B> {
    /// The routes of one direction: packets `a` sends to the relay go to
    /// `b`. `None` entries remove a route: where `b` has no port pair for
    /// the media (rejected, or not there yet), `a`'s pair forwards nothing
    /// (a route left from before would send from a pair released to the
    /// allocator, maybe leased to another call by now).
    pub(super) fn routes(a: &Mono, b: &Mono, i: usize) -> [(Option<SocketAddr>, Option<Route>); 2] {
        let Some((a_rtp, a_rtcp)) = a.media.get(i).and_then(|ma| ma.locals(a.local)) else {
            return [(None, None), (None, None)];
        };
        let (Some(ma), Some(mb)) = (a.media.get(i), b.media.get(i)) else {
            return [(Some(a_rtp), None), (Some(a_rtcp), None)];
        };
        let Some((b_rtp, b_rtcp)) = mb.locals(b.local) else {
            return [(Some(a_rtp), None), (Some(a_rtcp), None)];
        };
        let b_out_rtcp = if mb.mux { b_rtp } else { b_rtcp };
        let dest_rtp = mb.rtp.endpoint();
        let dest_rtcp = if mb.mux { dest_rtp } else { mb.rtcp.endpoint() };
        let rtp = dest_rtp.map(|dest| Route {
            out: b_rtp,
            dest,
            source: ma.rtp.source(),
            rtp: true,
            clock_rate: ma.clock_rate.unwrap_or(0),
            demux_rtcp: (ma.mux && !mb.mux)
                .then_some(dest_rtcp.map(|d| (b_out_rtcp, d)))
                .flatten(),
        });
        let rtcp = dest_rtcp.map(|dest| Route {
            out: b_out_rtcp,
            dest,
            source: ma.rtcp.source(),
            rtp: false,
            clock_rate: 0,
            demux_rtcp: None,
        });
        [(Some(a_rtp), rtp), (Some(a_rtcp), rtcp)]
    }

    /// (Re)program every route of the dialogue of party `x`.
    pub(super) fn program(&mut self, call_id: &str, x: usize, _now: Instant) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        let Some(xm) = call.monos.get(x) else {
            return;
        };
        let Some(ym) = xm.peer.and_then(|y| call.monos.get(y)) else {
            return;
        };
        let n = xm.media.len().max(ym.media.len());
        let mut todo = Vec::new();
        for i in 0..n {
            for (a, b) in [(xm, ym), (ym, xm)] {
                for (local, route) in Self::routes(a, b, i) {
                    if let Some(local) = local {
                        todo.push((local, route));
                    }
                }
            }
        }
        for (local, route) in todo {
            debug!(
                %call_id,
                %local,
                dest = ?route.as_ref().map(|r| r.dest),
                source = ?route.as_ref().map(|r| &r.source),
                "route"
            );
            self.backend.set_route(local, route);
        }
    }
}
