//! Channel names and the namespace rules that apply to them.
//!
//! `ns:rest` takes the options of namespace `ns`; a name without `:` takes the
//! `[channel]` options. A `#` makes a channel user-limited: `dm#alice,bob` is open to
//! alice and bob only.

use std::collections::HashMap;

use crate::config::{ChannelOptions, Config};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// Empty, too long, or names a namespace that does not exist.
    Unknown,
    /// Not valid for this operation (e.g. a malformed name).
    BadRequest,
}

pub struct ChannelRules {
    default: ChannelOptions,
    namespaces: HashMap<String, ChannelOptions>,
    max_len: usize,
}

impl ChannelRules {
    pub fn new(cfg: &Config) -> Self {
        ChannelRules {
            default: cfg.channel.clone(),
            namespaces: cfg
                .namespaces
                .iter()
                .map(|n| (n.name.clone(), n.options.clone()))
                .collect(),
            max_len: cfg.client.max_channel_length,
        }
    }

    /// The options of `channel`, or why it is not a valid channel.
    pub fn options(&self, channel: &str) -> Result<&ChannelOptions, ChannelError> {
        if channel.is_empty() || channel.len() > self.max_len {
            return Err(ChannelError::Unknown);
        }
        if channel.bytes().any(|b| b.is_ascii_control()) {
            return Err(ChannelError::BadRequest);
        }
        match channel.split_once(':') {
            Some((ns, _)) => self.namespaces.get(ns).ok_or(ChannelError::Unknown),
            None => Ok(&self.default),
        }
    }
}

/// For a user-limited channel, whether `user` is one of its users; `None` if the
/// channel is not user-limited.
pub fn user_limited_allows(channel: &str, user: &str) -> Option<bool> {
    let (_, users) = channel.rsplit_once('#')?;
    Some(!user.is_empty() && users.split(',').any(|u| u == user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_limited_channels() {
        assert_eq!(user_limited_allows("dm#alice,bob", "alice"), Some(true));
        assert_eq!(user_limited_allows("chat:dm#alice,bob", "bob"), Some(true));
        assert_eq!(user_limited_allows("dm#alice,bob", "carol"), Some(false));
        assert_eq!(user_limited_allows("dm#alice,bob", ""), Some(false));
        assert_eq!(user_limited_allows("news", "alice"), None);
    }

    #[test]
    fn namespaces_resolve() {
        let cfg = Config::load_from(
            Some("[[namespaces]]\nname = \"chat\"\npresence = false\n"),
            "t",
            vec![],
        )
        .unwrap();
        let r = ChannelRules::new(&cfg);
        assert!(!r.options("chat:room").unwrap().presence);
        assert!(r.options("room").unwrap().presence);
        assert_eq!(r.options("nope:room"), Err(ChannelError::Unknown));
        assert_eq!(r.options(""), Err(ChannelError::Unknown));
        assert_eq!(r.options(&"x".repeat(256)), Err(ChannelError::Unknown));
        assert_eq!(r.options("bad\nname"), Err(ChannelError::BadRequest));
    }
}
