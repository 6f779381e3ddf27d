//! Title and body templates over a publication, and cutting a notification to fit the
//! providers' 4 KB payload limit.
//!
//! Placeholders: `{user}` (the sender), `{channel}`, `{data}` (the whole data),
//! `{data.a.b}` (a dotted path into the publication's JSON data; a number indexes an
//! array) and `{info.a}` (the sender's connection info). A missing value renders as
//! nothing; anything else in braces is kept as written.

use serde_json::Value;

use super::Notification;

/// APNs (alert notifications) and FCM both refuse payloads above 4096 bytes.
pub const PAYLOAD_LIMIT: usize = 4096;
const ELLIPSIS: &str = "…";

/// What a template can refer to.
pub struct Context<'a> {
    pub user: &'a str,
    pub channel: &'a str,
    pub data: Option<&'a Value>,
    pub info: Option<&'a Value>,
}

/// Renders `template` with `ctx`.
pub fn render(template: &str, ctx: &Context<'_>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let name = &after[..close];
        match resolve(name, ctx) {
            Some(v) => out.push_str(&v),
            None if is_placeholder(name) => {}
            None => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

fn is_placeholder(name: &str) -> bool {
    let root = name.split('.').next().unwrap_or_default();
    matches!(root, "user" | "channel" | "data" | "info")
}

fn resolve(name: &str, ctx: &Context<'_>) -> Option<String> {
    let (root, path) = match name.split_once('.') {
        Some((r, p)) => (r, Some(p)),
        None => (name, None),
    };
    match (root, path) {
        ("user", None) => Some(ctx.user.to_string()),
        ("channel", None) => Some(ctx.channel.to_string()),
        ("data", p) => lookup(ctx.data?, p),
        ("info", p) => lookup(ctx.info?, p),
        _ => None,
    }
}

fn lookup(mut v: &Value, path: Option<&str>) -> Option<String> {
    if let Some(path) = path {
        for seg in path.split('.') {
            v = match v {
                Value::Object(m) => m.get(seg)?,
                Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
    }
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Cuts the body, then the title, until `size(n)` (the encoded payload's length) is at
/// most `limit`. Returns the size still too large when even empty texts do not fit
/// (custom data too big).
pub fn fit(
    n: &mut Notification,
    limit: usize,
    size: impl Fn(&Notification) -> usize,
) -> Result<(), usize> {
    for _ in 0..8 {
        let s = size(n);
        if s <= limit {
            return Ok(());
        }
        // Each byte cut from the text removes at least one encoded byte (JSON escapes
        // only grow); the ellipsis adds its own.
        let over = s - limit + ELLIPSIS.len();
        if !n.body.is_empty() {
            shorten(&mut n.body, over);
        } else if !n.title.is_empty() {
            shorten(&mut n.title, over);
        } else {
            return Err(s);
        }
    }
    let s = size(n);
    if s <= limit {
        Ok(())
    } else {
        Err(s)
    }
}

/// Removes at least `by` bytes from the end of `s` (on a character boundary) and marks
/// the cut with an ellipsis; empties `s` when it is not longer than that.
fn shorten(s: &mut String, by: usize) {
    if s.len() <= by {
        s.clear();
        return;
    }
    let mut end = s.len() - by;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(ELLIPSIS);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_placeholders() {
        let data = json!({"text": "hello", "n": 3, "a": [{"b": "x"}]});
        let info = json!({"name": "Alice"});
        let ctx = Context {
            user: "alice",
            channel: "chat:room",
            data: Some(&data),
            info: Some(&info),
        };
        assert_eq!(render("{user}: {data.text}", &ctx), "alice: hello");
        assert_eq!(
            render("{info.name} in {channel}", &ctx),
            "Alice in chat:room"
        );
        assert_eq!(render("{data.n}/{data.a.0.b}", &ctx), "3/x");
        assert_eq!(render("{data.missing}!", &ctx), "!");
        assert_eq!(render("{other} {unclosed", &ctx), "{other} {unclosed");
        assert_eq!(render("{data}", &ctx), data.to_string());
    }

    #[test]
    fn fit_cuts_body_then_title_on_char_boundaries() {
        let mut n = Notification {
            title: "t".repeat(10),
            body: "é".repeat(3000),
            ..Default::default()
        };
        let size = |n: &Notification| serde_json::to_vec(n).map(|v| v.len()).unwrap_or(0);
        fit(&mut n, 1000, size).unwrap();
        assert!(size(&n) <= 1000);
        assert!(n.body.ends_with(ELLIPSIS));
        assert_eq!(n.title.len(), 10);

        let mut big = Notification {
            title: "x".into(),
            data: [("k".to_string(), "v".repeat(2000))].into(),
            ..Default::default()
        };
        assert!(fit(&mut big, 1000, size).is_err());
    }
}
