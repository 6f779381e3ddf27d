//! Every code a client can see, in one place (listed for users in docs/PROTOCOL.md).
//!
//! Ranges, as the client protocol reserves them:
//! - errors in replies: 100..=399 protocol-defined, 400..=1999 reserved for applications
//!   (Herald's own RPC errors use 1000+);
//! - unsubscribe codes: 0..=2499 final, 2500..=2999 the SDK resubscribes;
//! - disconnect (WebSocket close) codes: 3000..=3499 the SDK reconnects,
//!   3500..=3999 it does not; 4000..=4499 and 4500..=4999 are the same split for
//!   application codes.

use super::messages::Error;

/// An error reply code with its fixed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub code: u32,
    pub message: &'static str,
    /// A temporary error may succeed if the client retries the same command.
    pub temporary: bool,
}

impl ErrorCode {
    pub fn to_error(self) -> Error {
        Error {
            code: self.code,
            message: self.message.to_string(),
            temporary: self.temporary,
        }
    }
}

macro_rules! error_codes {
    ($($name:ident = $code:expr, $msg:expr, $temp:expr;)*) => {
        $(pub const $name: ErrorCode = ErrorCode { code: $code, message: $msg, temporary: $temp };)*
        /// All error codes, for documentation tests.
        pub const ALL_ERRORS: &[ErrorCode] = &[$($name),*];
    };
}

error_codes! {
    ERROR_INTERNAL = 100, "internal server error", true;
    ERROR_UNAUTHORIZED = 101, "unauthorized", false;
    ERROR_UNKNOWN_CHANNEL = 102, "unknown channel", false;
    ERROR_PERMISSION_DENIED = 103, "permission denied", false;
    ERROR_METHOD_NOT_FOUND = 104, "method not found", false;
    ERROR_ALREADY_SUBSCRIBED = 105, "already subscribed", false;
    ERROR_LIMIT_EXCEEDED = 106, "limit exceeded", false;
    ERROR_BAD_REQUEST = 107, "bad request", false;
    ERROR_NOT_AVAILABLE = 108, "not available", false;
    ERROR_TOKEN_EXPIRED = 109, "token expired", false;
    ERROR_EXPIRED = 110, "expired", false;
    ERROR_TOO_MANY_REQUESTS = 111, "too many requests", true;
    ERROR_UNRECOVERABLE_POSITION = 112, "unrecoverable position", false;
}

/// A disconnect, sent as the WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisconnectCode {
    pub code: u16,
    pub reason: &'static str,
}

impl DisconnectCode {
    /// Whether the official SDKs reconnect after this code.
    pub fn reconnect(self) -> bool {
        matches!(self.code, 3000..=3499 | 4000..=4499)
    }
}

macro_rules! disconnect_codes {
    ($($name:ident = $code:expr, $reason:expr;)*) => {
        $(pub const $name: DisconnectCode = DisconnectCode { code: $code, reason: $reason };)*
        /// All disconnect codes, for documentation tests.
        pub const ALL_DISCONNECTS: &[DisconnectCode] = &[$($name),*];
    };
}

disconnect_codes! {
    DISCONNECT_CONNECTION_CLOSED = 3000, "connection closed";
    DISCONNECT_SHUTDOWN = 3001, "shutdown";
    DISCONNECT_SERVER_ERROR = 3004, "internal server error";
    DISCONNECT_EXPIRED = 3005, "connection expired";
    DISCONNECT_SUB_EXPIRED = 3006, "subscription expired";
    DISCONNECT_SLOW = 3008, "slow";
    DISCONNECT_WRITE_ERROR = 3009, "write error";
    DISCONNECT_INSUFFICIENT_STATE = 3010, "insufficient state";
    DISCONNECT_FORCE_RECONNECT = 3011, "force reconnect";
    DISCONNECT_NO_PONG = 3012, "no pong";
    DISCONNECT_TOO_MANY_REQUESTS = 3013, "too many requests";
    DISCONNECT_INVALID_TOKEN = 3500, "invalid token";
    DISCONNECT_BAD_REQUEST = 3501, "bad request";
    DISCONNECT_STALE = 3502, "stale";
    DISCONNECT_FORCE_NO_RECONNECT = 3503, "force disconnect";
    DISCONNECT_CONNECTION_LIMIT = 3504, "connection limit";
    DISCONNECT_CHANNEL_LIMIT = 3505, "channel limit";
    DISCONNECT_INAPPROPRIATE_PROTOCOL = 3506, "inappropriate protocol";
    DISCONNECT_PERMISSION_DENIED = 3507, "permission denied";
    DISCONNECT_NOT_AVAILABLE = 3508, "not available";
    DISCONNECT_TOO_MANY_ERRORS = 3509, "too many errors";
    DISCONNECT_MESSAGE_SIZE_LIMIT = 1009, "message size limit exceeded";
}

/// Unsubscribe push codes: below 2500 the SDK drops the subscription, from 2500 it
/// resubscribes.
pub const UNSUBSCRIBE_SERVER: u32 = 2000;
pub const UNSUBSCRIBE_INSUFFICIENT: u32 = 2500;
pub const UNSUBSCRIBE_EXPIRED: u32 = 2501;

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/PROTOCOL.md is the user's list of codes; it must not drift from this file.
    #[test]
    fn every_code_is_documented() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md"))
            .unwrap();
        for e in ALL_ERRORS {
            assert!(
                doc.contains(&format!("| {} | {} |", e.code, e.message)),
                "error {} missing",
                e.code
            );
        }
        for d in ALL_DISCONNECTS {
            assert!(
                doc.contains(&format!("| {} | {} |", d.code, d.reason)),
                "disconnect {} missing",
                d.code
            );
        }
        for code in [
            UNSUBSCRIBE_SERVER,
            UNSUBSCRIBE_INSUFFICIENT,
            UNSUBSCRIBE_EXPIRED,
        ] {
            assert!(
                doc.contains(&format!("| {code} |")),
                "unsubscribe {code} missing"
            );
        }
    }

    #[test]
    fn reconnect_ranges() {
        assert!(DISCONNECT_SHUTDOWN.reconnect());
        assert!(!DISCONNECT_INVALID_TOKEN.reconnect());
        assert!(!DISCONNECT_MESSAGE_SIZE_LIMIT.reconnect());
    }
}
