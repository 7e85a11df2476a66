//! The edits a proxy makes to a message it forwards (RFC 3261 §16.6,
//! §16.7, §16.12) and to responses (§18.2.1; RFC 3581).
//!
//! Values are `&str` from the proxy's own logic. None of these panics; a
//! control byte in a value (CR, LF, NUL, …) becomes a space, which is what
//! unfolding would have made of a CRLF + space anyway and keeps an edit
//! from ever adding a header line.

use std::net::IpAddr;

use super::{
    CONTENT_LENGTH, CONTENT_TYPE, Field, MAX_FORWARDS, Message, MessageError, RECORD_ROUTE, ROUTE,
    StartLine, TO, VIA, ViaValue, names,
    syntax::{is_token, parse_name_addr, parse_sip_uri, split_list, trim_ws},
};

impl Message {
    /// Inserts `value` as the new top Via (§16.6 step 8). A comma-joined
    /// value adds several, in order.
    pub fn push_via(&mut self, value: &str) {
        let at = self.position(VIA).unwrap_or(0);
        self.insert_values(at, VIA, value);
    }

    /// Removes the top Via (the first one, even if it arrived comma-joined
    /// with others) and returns it (§16.7 step 3).
    pub fn pop_via(&mut self) -> Option<String> {
        self.remove_first(VIA)
    }

    /// RFC 3581 §4 / RFC 3261 §18.2.1: add `received=` (and fill `rport=`
    /// when the request asked for it) to the top Via. `received` is added
    /// when the sent-by host is not the source address, or whenever the
    /// client sent `;rport`, which then gets the source port. An IPv4-mapped
    /// IPv6 source is written as IPv4. A top Via that does not parse (only
    /// possible after `push_via` of a bad value) is left alone.
    pub fn set_top_via_received(&mut self, addr: IpAddr, port: u16) {
        let Some(at) = self.position(VIA) else {
            return;
        };
        let Ok(mut via) = ViaValue::parse(&self.fields[at].value) else {
            return;
        };
        if via.set_received(addr, port) {
            self.fields[at].value = via.to_string();
        }
    }

    /// Inserts `value` as the new first Record-Route (§16.6 step 4); with
    /// none yet, right after the Vias.
    pub fn prepend_record_route(&mut self, value: &str) {
        let at = self
            .position(RECORD_ROUTE)
            .or_else(|| self.last_position(VIA).map(|at| at + 1))
            .unwrap_or(0);
        self.insert_values(at, RECORD_ROUTE, value);
    }

    /// Removes the first Route entry and returns it (§16.4).
    pub fn pop_route(&mut self) -> Option<String> {
        self.remove_first(ROUTE)
    }

    /// Replaces the Request-URI (§16.6 step 2, §16.12). It must be a SIP
    /// or SIPS URI; its text is written as given (trimmed).
    pub fn set_request_uri(&mut self, uri: &str) -> Result<(), MessageError> {
        let text = uri.trim();
        let parsed = parse_sip_uri(text)?;
        match &mut self.start {
            StartLine::Request {
                uri: current,
                uri_text,
                ..
            } => {
                *current = parsed;
                text.clone_into(uri_text);
                Ok(())
            }
            StartLine::Response { .. } => Err(MessageError::NotARequest),
        }
    }

    /// Sets Max-Forwards (§16.6 step 3).
    pub fn set_max_forwards(&mut self, n: u32) {
        self.set_header(MAX_FORWARDS, &n.to_string());
    }

    /// Replaces all fields of that name with `value` at the first one's
    /// place, or adds it at the end (before a final Content-Length). Compact
    /// names are understood. Content-Length cannot be set: it follows the
    /// body (see [`Message::set_body`]). A name that is not a token is
    /// ignored.
    pub fn set_header(&mut self, name: &str, value: &str) {
        let name = names::canonical(name.trim()).into_owned();
        if !is_token(&name) {
            tracing::warn!(header = %name.escape_debug(), "not setting a header whose name is not a token");
            return;
        }
        if name == CONTENT_LENGTH {
            return;
        }
        let at = self.position(&name);
        self.fields
            .retain(|field| !field.name.eq_ignore_ascii_case(&name));
        let at = at.unwrap_or_else(|| self.append_position());
        self.insert_values(at, &name, value);
    }

    /// Removes every field of that name (compact names understood), except
    /// Content-Length, which follows the body.
    pub fn remove_header(&mut self, name: &str) {
        let name = names::canonical(name.trim()).into_owned();
        if name == CONTENT_LENGTH {
            return;
        }
        self.fields
            .retain(|field| !field.name.eq_ignore_ascii_case(&name));
    }

    /// Replace the body; sets Content-Length, and Content-Type when given
    /// (removes Content-Type when the body is empty and None given).
    pub fn set_body(&mut self, body: Vec<u8>, content_type: Option<&str>) {
        self.body = body;
        match content_type {
            Some(content_type) => self.set_header(CONTENT_TYPE, content_type),
            None if self.body.is_empty() => self.remove_header(CONTENT_TYPE),
            None => {}
        }
        self.sync_content_length();
    }

    /// Sets the To tag (§8.2.6.2, §19.3): replaces an existing one, or adds
    /// `;tag=`. Other parameters are kept in order. Ignored if `tag` is not
    /// a token or the To header does not parse.
    pub fn set_to_tag(&mut self, tag: &str) {
        if !is_token(tag) {
            tracing::warn!(tag = %tag.escape_debug(), "not setting a To tag that is not a token");
            return;
        }
        let Some(at) = self.position(TO) else {
            return;
        };
        let value = trim_ws(&self.fields[at].value);
        let Ok(name_addr) = parse_name_addr(value) else {
            return;
        };
        let mut new = trim_ws(&value[..value.len() - name_addr.params_text.len()]).to_owned();
        let mut tagged = false;
        for param in &name_addr.params {
            new.push(';');
            new.push_str(param.name);
            if param.name.eq_ignore_ascii_case("tag") && !tagged {
                new.push('=');
                new.push_str(tag);
                tagged = true;
            } else if let Some(value) = param.value {
                new.push('=');
                new.push_str(value);
            }
        }
        if !tagged {
            new.push_str(";tag=");
            new.push_str(tag);
        }
        self.fields[at].value = new;
    }

    /// Inserts the values of `value` (several for a comma-joined list
    /// header) at `at`, sanitized. An empty value adds nothing to a list
    /// header (the grammar has no empty element).
    fn insert_values(&mut self, at: usize, name: &str, value: &str) {
        let value = sanitize(value);
        let values = if names::is_list(name) {
            match split_list(&value) {
                Ok(values) => values.into_iter().map(str::to_owned).collect(),
                Err(_) if value.is_empty() => Vec::new(),
                Err(_) => vec![value.clone()],
            }
        } else {
            vec![value.clone()]
        };
        let at = at.min(self.fields.len());
        self.fields.splice(
            at..at,
            values.into_iter().map(|value| Field::new(name, value)),
        );
    }

    fn remove_first(&mut self, name: &str) -> Option<String> {
        let at = self.position(name)?;
        Some(self.fields.remove(at).value)
    }

    fn position(&self, name: &str) -> Option<usize> {
        let name = names::canonical(name);
        self.fields
            .iter()
            .position(|field| field.name.eq_ignore_ascii_case(&name))
    }

    fn last_position(&self, name: &str) -> Option<usize> {
        let name = names::canonical(name);
        self.fields
            .iter()
            .rposition(|field| field.name.eq_ignore_ascii_case(&name))
    }

    /// Where a new header goes: at the end, but before a Content-Length
    /// that ends the headers (as most user agents write it).
    fn append_position(&self) -> usize {
        match self.fields.last() {
            Some(last) if last.name == CONTENT_LENGTH => self.fields.len() - 1,
            _ => self.fields.len(),
        }
    }
}

/// A header value that cannot break the message: control bytes become
/// spaces, surrounding white space goes.
pub(super) fn sanitize(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_control() && c != '\t' {
                ' '
            } else {
                c
            }
        })
        .collect();
    trim_ws(&cleaned).to_owned()
}
