//! SIP request methods (RFC 3261 §7.1, §27.4 and the extension RFCs).

use std::fmt;

/// A request method.
///
/// `Other` is a unit variant so that `Method` stays `Copy` (it travels in
/// transaction keys and `(u32, Method)` CSeq pairs). The extension
/// method's actual token is kept by the [`Message`](super::Message) it came
/// from — see [`Message::method_name`](super::Message::method_name) — and
/// is what the message writes back. Method names are case-sensitive
/// (§7.1): `invite` is an extension method, not INVITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    /// RFC 3311.
    Update,
    /// RFC 3262.
    Prack,
    /// RFC 6086.
    Info,
    /// RFC 3515.
    Refer,
    /// RFC 6665.
    Subscribe,
    /// RFC 6665.
    Notify,
    /// RFC 3428.
    Message,
    /// RFC 3903.
    Publish,
    /// Any extension method (its token is in the message).
    Other,
}

impl Method {
    const NAMED: [(Method, &'static str); 14] = [
        (Self::Invite, "INVITE"),
        (Self::Ack, "ACK"),
        (Self::Bye, "BYE"),
        (Self::Cancel, "CANCEL"),
        (Self::Options, "OPTIONS"),
        (Self::Register, "REGISTER"),
        (Self::Update, "UPDATE"),
        (Self::Prack, "PRACK"),
        (Self::Info, "INFO"),
        (Self::Refer, "REFER"),
        (Self::Subscribe, "SUBSCRIBE"),
        (Self::Notify, "NOTIFY"),
        (Self::Message, "MESSAGE"),
        (Self::Publish, "PUBLISH"),
    ];

    /// The method token. For [`Method::Other`] this is the placeholder
    /// `"OTHER"` (fine for logs): write
    /// [`Message::method_name`](super::Message::method_name) on the wire.
    pub fn as_str(&self) -> &'static str {
        Self::NAMED
            .iter()
            .find(|(method, _)| method == self)
            .map_or("OTHER", |(_, name)| name)
    }

    /// The method a token names, case-sensitively (§7.1); any other token
    /// is [`Method::Other`].
    pub fn from_token(token: &str) -> Self {
        Self::NAMED
            .iter()
            .find(|(_, name)| *name == token)
            .map_or(Self::Other, |(method, _)| *method)
    }

    /// rsip's equivalent, for code that works with rsip types (None for
    /// extension methods, which rsip 0.4 cannot represent).
    pub fn to_rsip(&self) -> Option<rsip::Method> {
        Some(match self {
            Self::Invite => rsip::Method::Invite,
            Self::Ack => rsip::Method::Ack,
            Self::Bye => rsip::Method::Bye,
            Self::Cancel => rsip::Method::Cancel,
            Self::Options => rsip::Method::Options,
            Self::Register => rsip::Method::Register,
            Self::Update => rsip::Method::Update,
            Self::Prack => rsip::Method::PRack,
            Self::Info => rsip::Method::Info,
            Self::Refer => rsip::Method::Refer,
            Self::Subscribe => rsip::Method::Subscribe,
            Self::Notify => rsip::Method::Notify,
            Self::Message => rsip::Method::Message,
            Self::Publish => rsip::Method::Publish,
            Self::Other => return None,
        })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
