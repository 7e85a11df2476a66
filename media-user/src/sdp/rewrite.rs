//! Apply a [`Rewrite`] to the original text, line by line.
//!
//! The rewrite is planned as one [`Edit`] per original line plus lines to
//! insert after it, then rendered. A line is only regenerated when what it
//! says changes; everything else, including its terminator, is copied.

use std::{borrow::Cow, net::IpAddr};

use super::{
    MediaRewrite, Rewrite, RtcpAttr, RtcpOut, SdpError,
    document::{Attr, Document, Located, Media},
    text,
};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Edit {
    Keep,
    Replace(String),
    Remove,
}

struct Plan {
    /// One per original line.
    edits: Vec<Edit>,
    /// New lines (without terminator) to write after each original line.
    inserts: Vec<Vec<String>>,
}

pub(super) fn apply(document: &Document<'_>, rw: &Rewrite) -> Result<Vec<u8>, SdpError> {
    // Destructured so that a new field cannot be forgotten here.
    let Rewrite {
        media,
        session_address,
        replace_origin,
        origin_version,
        strip_ice,
    } = rw;
    if media.len() != document.media.len() {
        return Err(SdpError::MediaCount {
            media: document.media.len(),
            rewrites: media.len(),
        });
    }
    let mut plan = Plan {
        edits: vec![Edit::Keep; document.lines.len()],
        inserts: vec![Vec::new(); document.lines.len()],
    };

    plan.origin(document, *session_address, *replace_origin, *origin_version);

    let session = &document.session;
    if let Some(c) = session.connection
        && c.value != *session_address
    {
        plan.set(c.line, Edit::Replace(connection_line(*session_address)));
    }
    if *strip_ice {
        plan.remove_ice(&session.attributes);
    }
    // RFC 8866 §5.7: a media without its own c= uses the session's.
    let inherited = session.connection.map(|_| *session_address);

    for (media, out) in document.media.iter().zip(media) {
        plan.media(document, media, out, inherited, *strip_ice);
    }
    Ok(plan.render(document))
}

impl Plan {
    fn set(&mut self, line: usize, edit: Edit) {
        if let Some(slot) = self.edits.get_mut(line) {
            *slot = edit;
        }
    }

    fn insert_after(&mut self, line: usize, new: String) {
        if let Some(slot) = self.inserts.get_mut(line) {
            slot.push(new);
        }
    }

    fn is_removed(&self, line: usize) -> bool {
        self.edits.get(line) == Some(&Edit::Remove)
    }

    /// RFC 3264 §8: the offerer/answerer bumps sess-version when the SDP
    /// changes; the session layer decides, we only write it. With
    /// `replace_origin` the o= address no longer reveals the endpoint.
    fn origin(
        &mut self,
        document: &Document<'_>,
        address: IpAddr,
        replace_origin: bool,
        version: Option<u64>,
    ) {
        let origin = &document.origin;
        let mut splices = Vec::new();
        if let Some(version) = version
            && version != origin.version
        {
            splices.push((origin.version_at.clone(), version.to_string()));
        }
        if replace_origin && origin.address != Some(address) {
            splices.push((origin.nettype_at.clone(), "IN".to_owned()));
            splices.push((origin.addrtype_at.clone(), addrtype(address).to_owned()));
            splices.push((origin.address_at.clone(), address.to_string()));
        }
        if splices.is_empty() {
            return;
        }
        if let Some(line) = document.lines.get(origin.line) {
            self.set(origin.line, Edit::Replace(text::splice(line.text, splices)));
        }
    }

    fn remove_ice(&mut self, attributes: &[Located<Attr>]) {
        for attr in attributes {
            if attr.value == Attr::Ice {
                self.set(attr.line, Edit::Remove);
            }
        }
    }

    fn media(
        &mut self,
        document: &Document<'_>,
        media: &Media,
        out: &MediaRewrite,
        inherited: Option<IpAddr>,
        strip_ice: bool,
    ) {
        let MediaRewrite {
            port,
            address,
            rtcp,
            rtcp_mux,
        } = *out;
        let section = &media.section;

        if port != media.port
            && let Some(line) = document.lines.get(media.line)
        {
            let m_line = text::splice(line.text, vec![(media.port_at.clone(), port.to_string())]);
            self.set(media.line, Edit::Replace(m_line));
        }

        match section.connection {
            Some(c) => {
                if c.value != address {
                    self.set(c.line, Edit::Replace(connection_line(address)));
                }
            }
            // RFC 8866 §5: m, i, c, b, k, a. A rejected stream's address is
            // not significant (RFC 3264 §6), so none is added to one.
            None => {
                if port != 0 && inherited != Some(address) {
                    let after = media.title.unwrap_or(media.line);
                    self.insert_after(after, connection_line(address));
                }
            }
        }

        if strip_ice {
            self.remove_ice(&section.attributes);
        }

        let mut added = Vec::new();
        let rtcp = match rtcp {
            RtcpOut::Omit => None,
            RtcpOut::Port(port) => Some(RtcpAttr {
                port,
                address: None,
            }),
            RtcpOut::Full(port, address) => Some(RtcpAttr {
                port,
                address: Some(address),
            }),
        };
        match (section.rtcp(), rtcp) {
            (Some(old), None) => self.set(old.line, Edit::Remove),
            (Some(old), Some(new)) if old.value != new => {
                self.set(old.line, Edit::Replace(rtcp_line(new)));
            }
            (None, Some(new)) => added.push(rtcp_line(new)),
            (Some(_), Some(_)) | (None, None) => {}
        }
        if !rtcp_mux {
            for attr in &section.attributes {
                if attr.value == Attr::RtcpMux {
                    self.set(attr.line, Edit::Remove);
                }
            }
        } else if !section.has(Attr::RtcpMux) {
            added.push("a=rtcp-mux".to_owned());
        }

        if !added.is_empty() {
            // After the last attribute that stays, else after the last line
            // of the section that stays (the m= line at worst).
            let last_attribute = section
                .attributes
                .iter()
                .rev()
                .map(|attr| attr.line)
                .find(|&line| !self.is_removed(line));
            let anchor = last_attribute.unwrap_or_else(|| {
                (media.line..=section.last.max(media.line))
                    .rev()
                    .find(|&line| {
                        !self.is_removed(line)
                            && document.lines.get(line).is_some_and(|l| !l.text.is_empty())
                    })
                    .unwrap_or(media.line)
            });
            for line in added {
                self.insert_after(anchor, line);
            }
        }
    }

    fn render(self, document: &Document<'_>) -> Vec<u8> {
        let mut out: Vec<(Cow<'_, str>, &'static str)> = Vec::with_capacity(document.lines.len());
        for ((line, edit), inserts) in document.lines.iter().zip(self.edits).zip(self.inserts) {
            match edit {
                Edit::Keep => out.push((Cow::Borrowed(line.text), line.eol)),
                Edit::Replace(text) => out.push((Cow::Owned(text), line.eol)),
                Edit::Remove => {}
            }
            out.extend(
                inserts
                    .into_iter()
                    .map(|text| (Cow::Owned(text), document.eol)),
            );
        }
        // Only the input's last line can lack a terminator. If the input
        // ended so, the output does too, whichever line is now last.
        let unterminated = document
            .lines
            .last()
            .is_some_and(|line| line.eol.is_empty());
        if unterminated {
            let count = out.len();
            for (at, (_, eol)) in out.iter_mut().enumerate() {
                if at + 1 == count {
                    *eol = "";
                } else if eol.is_empty() {
                    *eol = document.eol;
                }
            }
        }
        let mut bytes = Vec::with_capacity(out.iter().map(|(t, e)| t.len() + e.len()).sum());
        for (text, eol) in out {
            bytes.extend_from_slice(text.as_bytes());
            bytes.extend_from_slice(eol.as_bytes());
        }
        bytes
    }
}

fn addrtype(address: IpAddr) -> &'static str {
    match address {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

/// RFC 8866 §5.7. Unicast, so no TTL suffix.
fn connection_line(address: IpAddr) -> String {
    format!("c=IN {} {address}", addrtype(address))
}

/// RFC 3605 §2.1.
fn rtcp_line(rtcp: RtcpAttr) -> String {
    match rtcp.address {
        None => format!("a=rtcp:{}", rtcp.port),
        Some(address) => format!("a=rtcp:{} IN {} {address}", rtcp.port, addrtype(address)),
    }
}
