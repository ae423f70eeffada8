//! Callback kinds: the engine's built-in life-cycle and traffic callbacks, plus kinds
//! registered by name at run time.

/// Identifies what kind of callback is being timed.
///
/// The eight built-in kinds are constants; more are created with
/// [`crate::Profiler::register_kind`]. A kind is a small index, so it is `Copy` and free to
/// pass around. A user kind belongs to the profiler that registered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallbackKind(pub(crate) u8);

impl CallbackKind {
    /// The WebSocket handshake completed; the connection is open.
    pub const ESTABLISHED: CallbackKind = CallbackKind(0);
    /// A complete data message (text or binary) was delivered to the user.
    pub const RECEIVE: CallbackKind = CallbackKind(1);
    /// The socket became writable and the user was asked for data to send.
    pub const WRITABLE: CallbackKind = CallbackKind(2);
    /// The connection is gone (after a close handshake or a failure); last callback.
    pub const CLOSED: CallbackKind = CallbackKind(3);
    /// Connecting, the handshake or the connection failed (DNS, TCP, TLS, HTTP upgrade, protocol).
    pub const CONNECTION_ERROR: CallbackKind = CallbackKind(4);
    /// A ping control frame arrived (the engine answers it with a pong).
    pub const PING: CallbackKind = CallbackKind(5);
    /// A pong control frame arrived.
    pub const PONG: CallbackKind = CallbackKind(6);
    /// A close control frame arrived from the peer (code and reason available).
    pub const CLOSE_FRAME: CallbackKind = CallbackKind(7);

    /// All built-in kinds in index order.
    pub const BUILTIN: [CallbackKind; 8] = [
        CallbackKind::ESTABLISHED,
        CallbackKind::RECEIVE,
        CallbackKind::WRITABLE,
        CallbackKind::CLOSED,
        CallbackKind::CONNECTION_ERROR,
        CallbackKind::PING,
        CallbackKind::PONG,
        CallbackKind::CLOSE_FRAME,
    ];

    /// Names of the built-in kinds, as they appear in reports.
    pub const BUILTIN_NAMES: [&'static str; 8] = [
        "established",
        "receive",
        "writable",
        "closed",
        "connection_error",
        "ping",
        "pong",
        "close_frame",
    ];

    /// The kind's index (0..8 built-in, then user kinds in registration order).
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// Whether this is one of the eight built-in kinds.
    pub fn is_builtin(self) -> bool {
        (self.0 as usize) < Self::BUILTIN.len()
    }

    /// The name of a built-in kind; `None` for user kinds (ask the profiler).
    pub fn builtin_name(self) -> Option<&'static str> {
        Self::BUILTIN_NAMES.get(self.0 as usize).copied()
    }
}

/// Number of built-in kinds.
pub(crate) const BUILTIN_COUNT: usize = CallbackKind::BUILTIN.len();

/// Hard upper bound of kinds per profiler (the enable mask is one `u64`).
pub const MAX_KINDS: usize = 64;

/// A user kind name is 1..=64 characters of `[A-Za-z0-9_]`, not starting with a digit
/// (so it is usable verbatim as a Prometheus label value and a JSON key).
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_kinds_are_indexed_in_order() {
        for (i, k) in CallbackKind::BUILTIN.iter().enumerate() {
            assert_eq!(k.index(), i);
            assert!(k.is_builtin());
            assert_eq!(k.builtin_name(), Some(CallbackKind::BUILTIN_NAMES[i]));
        }
        assert_eq!(CallbackKind(8).builtin_name(), None);
    }

    #[test]
    fn names_are_validated() {
        assert!(valid_name("on_subscribe"));
        assert!(valid_name("X1"));
        assert!(!valid_name(""));
        assert!(!valid_name("1abc"));
        assert!(!valid_name("a b"));
        assert!(!valid_name("a\"b"));
        assert!(!valid_name(&"a".repeat(65)));
    }
}
