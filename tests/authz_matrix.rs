//! The authorization matrix: every client command and every server API method against
//! every kind of caller that must not get through (no connect, anonymous, wrong user,
//! non-member of a conversation, expired, revoked or forged token, missing or wrong API
//! key). Each cell asserts the exact documented error or disconnect code; after denied
//! writes, the history is unchanged and a legitimate subscriber received nothing.
//!
//! The cells are counted and printed (`cargo test --test authz_matrix -- --nocapture`);
//! docs/SECURITY.md quotes the figure.

mod common;
mod fakes;

use common::client::cmd;
use common::{tokens, Client, Server, Wire, API_KEY, SECRET};
use herald::protocol::messages::{Command, Reply};
use serde_json::{json, Value};

/// The cells one test checked, printed when it ends.
#[derive(Default)]
struct Matrix(Vec<String>);

impl Matrix {
    fn cell(&mut self, who: &str, what: &str, expected: &str) {
        self.0.push(format!("{who:<40} {what:<40} -> {expected}"));
    }

    fn report(&self, test: &str) {
        for line in &self.0 {
            println!("{line}");
        }
        println!("authorization matrix [{test}]: {} cells", self.0.len());
    }
}

const TOML: &str = r#"
[store]
sync = "normal"

[[namespaces]]
name = "chat"
persist = true
members = true
allow_subscribe_for_client = false
force_recovery = true

[[namespaces]]
name = "personal"
allow_subscribe_for_client = false
allow_publish_for_subscriber = false
history_size = 0

# Subscribing needs a subscription token.
[[namespaces]]
name = "secret"
allow_subscribe_for_client = false
"#;

struct Env {
    srv: Server,
    _apns: fakes::apns::FakeApns,
    _dir: fakes::Dir,
}

async fn start(extra: &[(&str, &str)]) -> Env {
    let dir = fakes::Dir::new();
    let apns = fakes::apns::FakeApns::start(&dir.path().join(".")).await;
    let mut env: Vec<(String, String)> = vec![("HERALD_STORE__PATH".into(), dir.str().into())];
    env.extend(apns.env());
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let srv = Server::start_config(TOML, &pairs);
    Env {
        srv,
        _apns: apns,
        _dir: dir,
    }
}

const TEAM: &str = "chat:team";

/// Every client command a connected client can send, aimed at `channel` (or its RPC
/// target), with a label.
fn commands(channel: &str, device_id: &str) -> Vec<(&'static str, Command)> {
    let data = json!({"text": "intruder"});
    vec![
        ("subscribe", cmd::subscribe(channel)),
        ("publish", cmd::publish(channel, &data)),
        ("history", cmd::history(channel, 10, None, false)),
        ("presence", cmd::presence(channel)),
        ("presence_stats", cmd::presence_stats(channel)),
        (
            "rpc chat.read",
            cmd::rpc("chat.read", &json!({"channel": channel, "offset": 1})),
        ),
        (
            "rpc chat.typing",
            cmd::rpc("chat.typing", &json!({"channel": channel})),
        ),
        (
            "sub_refresh",
            cmd::sub_refresh(channel, &tokens::subscribe("alice", channel, 600)),
        ),
        (
            "rpc push.register (alice's id)",
            cmd::rpc(
                "push.register",
                &json!({"id": device_id, "platform": "ios", "token": apns_token("evil")}),
            ),
        ),
    ]
}

fn apns_token(name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{hex:0<64}")
}

fn rpc_json(r: &Reply) -> Value {
    serde_json::from_slice(&r.rpc.as_ref().expect("rpc result").data).expect("rpc json")
}

/// What the legitimate side looks like; compared after each round of attacks.
#[derive(Debug, PartialEq)]
struct State {
    offset: u64,
    members: Value,
    devices: Value,
}

async fn state(env: &Env) -> State {
    let api = env.srv.api();
    let h = api
        .ok("history", json!({"channel": TEAM, "limit": 0}))
        .await;
    State {
        offset: h["offset"].as_u64().expect("offset"),
        members: api
            .ok("conversation_members", json!({"channel": TEAM}))
            .await,
        devices: api
            .ok("device_list", json!({"filter": {"users": ["alice"]}}))
            .await,
    }
}

/// Alice, a member subscribed to the conversation, and the state before the attacks.
struct Witness {
    alice: Client,
    before: State,
}

async fn witness(env: &Env) -> (Witness, String) {
    let api = env.srv.api();
    api.ok(
        "conversation_create",
        json!({"channel": TEAM, "users": ["alice"]}),
    )
    .await;
    let device = api
        .ok(
            "device_register",
            json!({"user": "alice", "platform": "ios", "token": apns_token("alice")}),
        )
        .await["id"]
        .as_str()
        .expect("device id")
        .to_string();
    api.publish(TEAM, json!({"text": "hello"})).await;
    let (mut alice, _) = Client::connect(env.srv.addr, Wire::Json, &tokens::connect("alice")).await;
    alice.ok(cmd::subscribe(TEAM)).await;
    let before = state(env).await;
    (Witness { alice, before }, device)
}

/// Nothing was stored, changed or delivered: the history top, the members and alice's
/// devices are as before, and the next thing alice receives on the channel is a
/// sentinel published now.
async fn assert_untouched(env: &Env, mut w: Witness) -> Witness {
    assert_eq!(
        state(env).await,
        w.before,
        "a denied call changed something"
    );
    env.srv.api().publish(TEAM, json!({"sentinel": true})).await;
    let p = common::within("sentinel", w.alice.next_pub(TEAM)).await;
    assert_eq!(
        common::client::data_json(&p),
        json!({"sentinel": true}),
        "alice received something before the sentinel"
    );
    w.before = state(env).await;
    w
}

/// The error a denied command gets: chat RPCs on a channel that is not a conversation
/// are 102 (unknown channel) before anything else is looked at; all else is 103.
fn denied_code(what: &str, channel: &str) -> u32 {
    if what.starts_with("rpc chat.") && !channel.starts_with("chat:") {
        102
    } else {
        103
    }
}

#[tokio::test]
async fn client_commands_matrix() {
    let mut m = Matrix::default();
    let env = start(&[]).await;
    let addr = env.srv.addr;
    let (mut w, device) = witness(&env).await;

    // 1. No connect yet: any command but connect ends the connection with 3501.
    let mut all = commands(TEAM, &device);
    all.push(("refresh", cmd::refresh(&tokens::connect("alice"))));
    all.push(("unsubscribe", cmd::unsubscribe(TEAM)));
    all.push(("rpc chat.unread", cmd::rpc("chat.unread", &json!({}))));
    all.push(("send", cmd::send(&json!({"x": 1}))));
    for wire in [Wire::Json, Wire::Protobuf] {
        for (what, c) in &all {
            let mut s = Client::open(addr, wire).await;
            let mut c = c.clone();
            if c.send.is_none() {
                c.id = 1;
            }
            s.send(&c).await;
            assert_eq!(s.expect_close().await.code, 3501, "{what} before connect");
            m.cell(&format!("not connected ({wire:?})"), what, "close 3501");
        }
    }

    // 2. Connect with a bad credential.
    let bad: Vec<(&str, String, Result<u32, u16>)> = vec![
        ("no token (anonymous off)", String::new(), Ok(101)),
        ("expired token", tokens::expired("alice"), Ok(109)),
        (
            "not yet valid (nbf)",
            tokens::not_yet_valid("alice"),
            Ok(109),
        ),
        ("wrong secret", tokens::wrong_secret("alice"), Err(3500)),
        ("alg none", tokens::alg_none("alice"), Err(3500)),
        (
            "subscription token",
            tokens::subscribe("alice", TEAM, 600),
            Err(3500),
        ),
        (
            "iat in the future",
            tokens::sign(
                &json!({"sub": "alice", "iat": common::now() + 3600}),
                SECRET,
            ),
            Err(3500),
        ),
        (
            "no sub (anonymous off)",
            tokens::sign(&json!({"exp": common::now() + 60}), SECRET),
            Err(3507),
        ),
        ("garbage", "not.a.jwt".to_string(), Err(3500)),
    ];
    for (what, token, expected) in bad {
        let mut s = Client::open(addr, Wire::Json).await;
        match expected {
            Ok(code) => {
                let r = s.call(cmd::connect(&token)).await;
                assert_eq!(r.error.map(|e| e.code), Some(code), "connect with {what}");
                // The connection stays unauthenticated: a command now ends it.
                s.send(&Command {
                    id: 99,
                    ..cmd::history(TEAM, 10, None, false)
                })
                .await;
                assert_eq!(s.expect_close().await.code, 3501, "{what}: then history");
                m.cell(what, "connect", &format!("error {code}"));
                m.cell(what, "history after failed connect", "close 3501");
            }
            Err(code) => {
                s.send(&Command {
                    id: 1,
                    ..cmd::connect(&token)
                })
                .await;
                assert_eq!(s.expect_close().await.code, code, "connect with {what}");
                m.cell(what, "connect", &format!("close {code}"));
            }
        }
    }
    w = assert_untouched(&env, w).await;

    // 3. Non-member (bob) of the conversation, and wrong user on alice's resources.
    let (mut bob, _) = Client::connect(addr, Wire::Json, &tokens::connect("bob")).await;
    for (what, c) in commands(TEAM, &device) {
        let e = bob.err(c).await;
        assert_eq!(e.code, 103, "non-member {what}");
        m.cell("non-member (bob)", what, "error 103");
    }
    let r = bob.ok(cmd::rpc("chat.unread", &json!({}))).await;
    assert_eq!(rpc_json(&r)["conversations"], json!([]), "bob sees no team");
    m.cell(
        "non-member (bob)",
        "rpc chat.unread",
        "own conversations only",
    );
    for channel in ["personal:#alice", "chat:dm#alice,carol", "secret:alice"] {
        for (what, c) in commands(channel, &device) {
            let e = bob.err(c).await;
            let code = denied_code(what, channel);
            assert_eq!(e.code, code, "bob {what} on {channel}");
            m.cell(
                &format!("wrong user ({channel})"),
                what,
                &format!("error {code}"),
            );
        }
    }
    // Tokens issued to alice do not work on bob's connection.
    let e = bob
        .err(cmd::subscribe_token(
            "secret:x",
            &tokens::subscribe("alice", "secret:x", 600),
        ))
        .await;
    assert_eq!(e.code, 103);
    m.cell(
        "wrong user",
        "subscribe with alice's sub token",
        "error 103",
    );
    bob.ok(cmd::subscribe_token(
        "secret:bob",
        &tokens::subscribe("bob", "secret:bob", 600),
    ))
    .await;
    let e = bob
        .err(cmd::sub_refresh(
            "secret:bob",
            &tokens::subscribe("alice", "secret:bob", 600),
        ))
        .await;
    assert_eq!(e.code, 103);
    m.cell(
        "wrong user",
        "sub_refresh with alice's sub token",
        "error 103",
    );
    let e = bob
        .err(cmd::subscribe_token(
            "secret:y",
            &tokens::subscribe("bob", "secret:other", 600),
        ))
        .await;
    assert_eq!(e.code, 103);
    m.cell(
        "wrong user",
        "subscribe with another channel's token",
        "error 103",
    );
    let e = bob
        .err(cmd::subscribe_token(
            "secret:z",
            &tokens::sign(
                &json!({"sub": "bob", "channel": "secret:z", "exp": common::now() - 60}),
                SECRET,
            ),
        ))
        .await;
    assert_eq!(e.code, 109);
    m.cell("expired sub token", "subscribe", "error 109");
    let e = bob
        .err(cmd::sub_refresh(
            "secret:bob",
            &tokens::sign(
                &json!({"sub": "bob", "channel": "secret:bob", "exp": common::now() - 60}),
                SECRET,
            ),
        ))
        .await;
    assert_eq!(e.code, 109);
    m.cell("expired sub token", "sub_refresh", "error 109");
    // push.unregister of alice's device by id: nothing of alice's is removed.
    let r = bob
        .ok(cmd::rpc("push.unregister", &json!({"id": device})))
        .await;
    assert_eq!(rpc_json(&r)["removed"], 0);
    let r = bob
        .ok(cmd::rpc(
            "push.unregister",
            &json!({"token": apns_token("alice")}),
        ))
        .await;
    assert_eq!(rpc_json(&r)["removed"], 0);
    m.cell(
        "wrong user",
        "rpc push.unregister (alice's id/token)",
        "removed 0",
    );
    w = assert_untouched(&env, w).await;

    // Refresh with another user's token ends the connection.
    bob.send(&Command {
        id: 500,
        ..cmd::refresh(&tokens::connect("alice"))
    })
    .await;
    assert_eq!(bob.expect_close().await.code, 3500);
    m.cell("wrong user", "refresh with alice's token", "close 3500");

    // 4. Expired credentials on a live connection.
    let (mut carol, _) = Client::connect(addr, Wire::Json, &tokens::connect("carol")).await;
    carol
        .send(&Command {
            id: 7,
            ..cmd::refresh(&tokens::expired("carol"))
        })
        .await;
    assert_eq!(carol.expect_close().await.code, 3005);
    m.cell("expired token", "refresh", "close 3005");
    let (mut carol, _) = Client::connect(addr, Wire::Json, &tokens::connect("carol")).await;
    carol
        .send(&Command {
            id: 7,
            ..cmd::refresh(&tokens::wrong_secret("carol"))
        })
        .await;
    assert_eq!(carol.expect_close().await.code, 3500);
    m.cell("forged token", "refresh", "close 3500");

    // 5. Revoked tokens: by id (jti) and by user (issued before a time).
    let api = env.srv.api();
    let jti_token = |user: &str, jti: &str| {
        tokens::sign(
            &json!({"sub": user, "jti": jti, "iat": common::now(), "exp": common::now() + 600}),
            SECRET,
        )
    };
    let (mut live, _) = Client::connect(addr, Wire::Json, &jti_token("dave", "t-live")).await;
    api.ok("revoke_token", json!({"uid": "t-live"})).await;
    assert_eq!(live.expect_close().await.code, 3500);
    m.cell("revoked token (jti)", "live connection", "close 3500");
    let mut s = Client::open(addr, Wire::Json).await;
    s.send(&Command {
        id: 1,
        ..cmd::connect(&jti_token("dave", "t-live"))
    })
    .await;
    assert_eq!(s.expect_close().await.code, 3500);
    m.cell("revoked token (jti)", "connect", "close 3500");
    let (mut dave, _) = Client::connect(addr, Wire::Json, &jti_token("dave", "t-new")).await;
    dave.send(&Command {
        id: 2,
        ..cmd::refresh(&jti_token("dave", "t-live"))
    })
    .await;
    assert_eq!(dave.expect_close().await.code, 3500);
    m.cell("revoked token (jti)", "refresh", "close 3500");
    let old = tokens::sign(
        &json!({"sub": "erin", "iat": common::now() - 60, "exp": common::now() + 600}),
        SECRET,
    );
    let (mut erin, _) = Client::connect(addr, Wire::Json, &old).await;
    api.ok(
        "invalidate_user_tokens",
        json!({"user": "erin", "issued_before": common::now() - 30}),
    )
    .await;
    assert_eq!(erin.expect_close().await.code, 3500);
    m.cell("invalidated user tokens", "live connection", "close 3500");
    let mut s = Client::open(addr, Wire::Json).await;
    s.send(&Command {
        id: 1,
        ..cmd::connect(&old)
    })
    .await;
    assert_eq!(s.expect_close().await.code, 3500);
    m.cell("invalidated user tokens", "connect", "close 3500");
    let (mut erin, _) = Client::connect(addr, Wire::Json, &tokens::connect("erin")).await;
    erin.send(&Command {
        id: 2,
        ..cmd::refresh(&old)
    })
    .await;
    assert_eq!(erin.expect_close().await.code, 3500);
    m.cell("invalidated user tokens", "refresh", "close 3500");
    let old_sub = tokens::sign(
        &json!({"sub": "frank", "channel": "secret:f", "iat": common::now() - 60,
                "exp": common::now() + 600}),
        SECRET,
    );
    let (mut frank, _) = Client::connect(addr, Wire::Json, &tokens::connect("frank")).await;
    frank.ok(cmd::subscribe_token("secret:f", &old_sub)).await;
    api.ok(
        "invalidate_user_tokens",
        json!({"user": "frank", "channel": "secret:f", "issued_before": common::now() - 30}),
    )
    .await;
    let p = common::within(
        "unsubscribe",
        frank.push_where("unsubscribe", |p| p.unsubscribe.is_some()),
    )
    .await;
    assert_eq!(p.unsubscribe.map(|u| u.code), Some(2000));
    m.cell(
        "invalidated sub tokens",
        "live subscription",
        "unsubscribe 2000",
    );
    let e = frank.err(cmd::subscribe_token("secret:f", &old_sub)).await;
    assert_eq!(e.code, 103);
    m.cell("invalidated sub tokens", "subscribe", "error 103");
    frank
        .ok(cmd::subscribe_token(
            "secret:f",
            &tokens::subscribe("frank", "secret:f", 600),
        ))
        .await;
    let e = frank.err(cmd::sub_refresh("secret:f", &old_sub)).await;
    assert_eq!(e.code, 103);
    m.cell("invalidated sub tokens", "sub_refresh", "error 103");
    w = assert_untouched(&env, w).await;

    // 6. Anonymous (allowed on another server) gets nothing of a conversation's or a
    // user's.
    let anon_env = start(&[("HERALD_AUTH__ALLOW_ANONYMOUS", "true")]).await;
    let (mut anon_w, device) = witness(&anon_env).await;
    let mut anon = Client::open(anon_env.srv.addr, Wire::Protobuf).await;
    anon.connect_with(cmd::connect("")).await;
    for channel in [TEAM, "personal:#alice", "chat:dm#alice,carol", "secret:x"] {
        for (what, c) in commands(channel, &device) {
            let e = anon.err(c).await;
            assert_eq!(e.code, 103, "anonymous {what} on {channel}");
            m.cell(&format!("anonymous ({channel})"), what, "error 103");
        }
    }
    for method in ["chat.unread", "push.unregister", "push.mute", "push.unmute"] {
        let e = anon
            .err(cmd::rpc(method, &json!({"channel": TEAM, "id": device})))
            .await;
        assert_eq!(e.code, 103, "anonymous {method}");
        m.cell("anonymous", &format!("rpc {method}"), "error 103");
    }
    anon_w = assert_untouched(&anon_env, anon_w).await;
    anon.send(&Command {
        id: 900,
        ..cmd::refresh(&tokens::connect("alice"))
    })
    .await;
    assert_eq!(anon.expect_close().await.code, 3500);
    m.cell("anonymous", "refresh with alice's token", "close 3500");
    assert_untouched(&anon_env, anon_w).await;
    assert_untouched(&env, w).await;
    m.report("client");
}

/// Every API method, with every way of presenting a wrong key, on both endpoints.
#[tokio::test]
async fn api_methods_matrix() {
    let mut m = Matrix::default();
    let env = start(&[]).await;
    let (w, device) = witness(&env).await;
    let api = env.srv.api();
    let wrong_same_len: String = API_KEY
        .chars()
        .map(|c| if c == 'x' { 'y' } else { 'x' })
        .collect();
    let prefix = &API_KEY[..API_KEY.len() - 1];
    let with_suffix = format!("{API_KEY}x");
    let bearer = format!("Bearer {API_KEY}");
    let apikey_wrong = format!("apikey {wrong_same_len}");
    let credentials: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("missing key", vec![]),
        ("empty X-API-Key", vec![("X-API-Key", "")]),
        (
            "wrong key (same length)",
            vec![("X-API-Key", &wrong_same_len)],
        ),
        ("key prefix", vec![("X-API-Key", prefix)]),
        ("key plus suffix", vec![("X-API-Key", &with_suffix)]),
        (
            "Authorization: Bearer KEY",
            vec![("Authorization", &bearer)],
        ),
        (
            "Authorization: apikey WRONG",
            vec![("Authorization", &apikey_wrong)],
        ),
        (
            "wrong X-API-Key, right Authorization",
            vec![
                ("X-API-Key", &wrong_same_len),
                ("Authorization", "apikey test-key"),
            ],
        ),
    ];
    // A body that would do damage if it were accepted.
    let body_for = |m: &str| -> Value {
        match m {
            "publish" => json!({"channel": TEAM, "data": {"text": "forged"}}),
            "broadcast" => json!({"channels": [TEAM], "data": {"text": "forged"}}),
            "history_remove" => json!({"channel": TEAM}),
            "conversation_members_remove" => json!({"channel": TEAM, "users": ["alice"]}),
            "conversation_create" | "conversation_members_add" => {
                json!({"channel": TEAM, "users": ["mallory"]})
            }
            "user_data_remove" => json!({"user": "alice"}),
            "device_remove" => json!({"ids": [device]}),
            "device_register" => {
                json!({"user": "alice", "platform": "ios", "token": apns_token("mallory")})
            }
            "device_update" => json!({"ids": [device], "user": "mallory"}),
            "disconnect" | "invalidate_user_tokens" => json!({"user": "alice"}),
            "unsubscribe" => json!({"user": "alice", "channel": TEAM}),
            "revoke_token" => json!({"uid": "anything"}),
            "batch" => json!({"commands": [{"publish": {"channel": TEAM, "data": {"x": 1}}}]}),
            _ => json!({"channel": TEAM, "user": "alice"}),
        }
    };
    assert_eq!(
        herald::api::methods::METHODS.len(),
        26,
        "a method was added: cover it"
    );
    for method in herald::api::methods::METHODS {
        let method: &str = method;
        let body = body_for(method).to_string().into_bytes();
        for (what, headers) in &credentials {
            let a = api.raw(method, body.clone(), headers).await;
            assert_eq!(a.status, 401, "{method} with {what}: {}", a.text);
            assert_eq!(
                a.body,
                json!({"error": {"code": 101, "message": "unauthorized"}})
            );
            m.cell(what, &format!("POST /api/{method}"), "401 code 101");
        }
        let legacy = json!({"method": method, "params": body_for(method)}).to_string();
        for (what, headers) in &credentials {
            let a = api
                .raw_path("/api", legacy.clone().into_bytes(), headers)
                .await;
            assert_eq!(a.status, 401, "legacy {method} with {what}: {}", a.text);
            m.cell(
                what,
                &format!("POST /api {{method: {method}}}"),
                "401 code 101",
            );
        }
    }
    let mut w = assert_untouched(&env, w).await;
    // And the right key does work, so the 401s above are about the key.
    let a = api
        .raw(
            "publish",
            body_for("publish").to_string().into_bytes(),
            &[("Authorization", &format!("apikey {API_KEY}"))],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let p = common::within("publication", w.alice.next_pub(TEAM)).await;
    assert_eq!(common::client::data_json(&p), json!({"text": "forged"}));
    w.before.offset += 1;
    assert_untouched(&env, w).await;
    m.report("api");
}
