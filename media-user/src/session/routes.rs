//! The data-plane routes of a call: what each local port forwards to
//! where (and which sources it accepts), computed from the call model and
//! (re)programmed through the [`Backend`] after every change.

use std::{net::SocketAddr, time::Instant};

use tracing::{debug, warn};

use super::{
    backend::{At, Backend, Route},
    engine::Engine,
    latch::{Latch, Source},
    model::{Call, Mono, Owner},
    sharing::Expecting,
};

/// A route to program, and (port sharing) whose it is.
pub(super) struct Todo {
    local: SocketAddr,
    route: Option<Route>,
    owner: Owner,
    slot: Option<SocketAddr>,
    expecting: Expecting,
    /// The source its key (and XDP flow) is for.
    key: Option<SocketAddr>,
}

/// What a stream on a shared port expects, for attribution (`ssrcs`: the
/// SSRCs its party announced, for the RTP stream).
fn expecting(l: &Latch, ssrcs: &[u32]) -> Expecting {
    let parts = l.parts();
    let source = l.source();
    Expecting {
        advertised: parts.advertised,
        sip_source: parts.sip_source,
        ssrcs: ssrcs.to_vec(),
        learning: l.is_learning(),
        relatch_ssrc: match source {
            Source::Latched { relatch_ssrc, .. } => relatch_ssrc,
            _ => None,
        },
    }
}

/// The source a shared stream's key is for.
fn key_of(l: &Latch) -> Option<SocketAddr> {
    match l.source() {
        Source::Learning(a) => a,
        Source::Latched { addr, .. } => Some(addr),
        Source::Any => None,
    }
}

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
        let todo = Self::todo(call, call_id, x);
        self.apply(call_id, todo, false);
    }

    /// The routes of the dialogue of party `x` of `call` (not yet in the
    /// engine's table, for one: an adopted call).
    pub(super) fn todo(call: &Call, call_id: &str, x: usize) -> Vec<Todo> {
        let Some(xm) = call.monos.get(x) else {
            return Vec::new();
        };
        let Some(ym) = xm.peer.and_then(|y| call.monos.get(y)) else {
            return Vec::new();
        };
        let n = xm.media.len().max(ym.media.len());
        let y = xm.peer.unwrap_or_default();
        let mut todo = Vec::new();
        let id: std::sync::Arc<str> = call_id.into();
        for i in 0..n {
            for (who, a, b) in [(x, xm, ym), (y, ym, xm)] {
                let Some(ma) = a.media.get(i) else {
                    continue;
                };
                for (component, (local, route)) in Self::routes(a, b, i).into_iter().enumerate() {
                    let latch = if component == 0 { &ma.rtp } else { &ma.rtcp };
                    if let Some(local) = local {
                        todo.push(Todo {
                            local,
                            route,
                            owner: Owner {
                                call: id.clone(),
                                mono: who,
                                media: i,
                                component: component as u8,
                            },
                            slot: ma.slot,
                            expecting: expecting(
                                latch,
                                if component == 0 { &ma.ssrcs } else { &[] },
                            ),
                            key: key_of(latch),
                        });
                    }
                }
            }
        }
        todo
    }

    /// Program routes [`todo`](Self::todo) computed; `adopted`: all the
    /// routes of a call just taken back from its record, whose streams are
    /// new to the engine the first time `todo` names them (see
    /// [`SharedOwners::set_keyed`]).
    ///
    /// [`SharedOwners::set_keyed`]: super::shared_owners::SharedOwners::set_keyed
    pub(super) fn apply(&mut self, call_id: &str, todo: Vec<Todo>, adopted: bool) {
        if self.sharing.is_some() {
            self.program_shared(todo, adopted);
            return;
        }
        for Todo { local, route, .. } in todo {
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

impl<B: Backend> Engine<B> {
    /// Port sharing: each stream registered with what it expects, its key
    /// moved to the source it accepts, its route set under its slot. A
    /// source another stream of the port holds is refused (the stream
    /// keeps no route meanwhile): never two calls' media on one key.
    fn program_shared(&mut self, todo: Vec<Todo>, adopted: bool) {
        let Some(s) = self.sharing.as_mut() else {
            return;
        };
        // An adopted call's streams named so far (a handful).
        let mut added: Vec<(usize, usize, u8)> = Vec::new();
        for t in todo {
            let Todo {
                local,
                mut route,
                owner,
                slot,
                expecting,
                key,
            } = t;
            let which = (owner.mono, owner.media, owner.component);
            let new = adopted && !added.contains(&which);
            if new {
                added.push(which);
            }
            if let Err(e) = s.owners.set_keyed(local, &owner, expecting, key, new) {
                warn!(call_id = %owner.call, %local, error = %e, "shared port: source taken by another call; no route");
                route = None;
            }
            let Some(slot) = slot else {
                continue;
            };
            debug!(
                call_id = %owner.call,
                %local,
                %slot,
                dest = ?route.as_ref().map(|r| r.dest),
                source = ?route.as_ref().map(|r| &r.source),
                "shared route"
            );
            self.backend.set_route_at(At::Shared { local, slot }, route);
        }
    }
}
