//! Bad input, one case per row: each gets its documented error or close code, and a
//! healthy client on the same server still works afterwards.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use common::client::{cmd, data_json, Incoming};
use common::{tokens, Client, Server, Wire};
use herald::protocol::messages::Command;

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// An error reply with this code; the connection stays open.
    Error(u32),
    /// A close frame with this code.
    Close(u16),
    /// Anything else (a success reply, the socket dropping without a close frame).
    Other(String),
}

type Action = fn(SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>>;

const AUD: &str = "herald-app";
const ISS: &str = "herald-auth";
const AUD_ISS: &[(&str, &str)] = &[("HERALD_AUTH__AUDIENCE", AUD), ("HERALD_AUTH__ISSUER", ISS)];

/// Reads until the reply to `id` or the end of the connection.
async fn answer_to(c: &mut Client, id: u32) -> Outcome {
    loop {
        match c.recv().await {
            Incoming::Replies(replies) => {
                if let Some(r) = replies.into_iter().find(|r| r.id == id) {
                    return match r.error {
                        Some(e) => Outcome::Error(e.code),
                        None => Outcome::Other(format!("success: {r:?}")),
                    };
                }
            }
            Incoming::Close(Some(close)) => return Outcome::Close(close.code),
            other => return Outcome::Other(format!("{other:?}")),
        }
    }
}

/// Reads until the server closes; replies in between are ignored.
async fn close_code(c: &mut Client) -> Outcome {
    loop {
        match c.recv().await {
            Incoming::Replies(_) => continue,
            Incoming::Close(Some(close)) => return Outcome::Close(close.code),
            other => return Outcome::Other(format!("{other:?}")),
        }
    }
}

/// Sends `command` (with id 1 unless set) on a fresh socket as the first command.
async fn first_command(addr: SocketAddr, wire: Wire, mut command: Command) -> Outcome {
    let mut c = Client::open(addr, wire).await;
    if command.id == 0 {
        command.id = 1;
    }
    c.send(&command).await;
    answer_to(&mut c, command.id).await
}

async fn connect_token(addr: SocketAddr, token: String) -> Outcome {
    first_command(addr, Wire::Json, cmd::connect(&token)).await
}

/// Connects as `user`, then sends `command` and returns the answer to it.
async fn after_connect(addr: SocketAddr, wire: Wire, user: &str, mut command: Command) -> Outcome {
    let (mut c, _) = Client::connect(addr, wire, &tokens::connect(user)).await;
    command.id = 100;
    c.send(&command).await;
    answer_to(&mut c, 100).await
}

/// Connects, then sends a raw WebSocket message and returns the close code.
async fn raw_after_connect(addr: SocketAddr, wire: Wire, msg: Message) -> Outcome {
    let (mut c, _) = Client::connect(addr, wire, &tokens::connect("mallory")).await;
    c.send_message(msg).await;
    close_code(&mut c).await
}

// ---- the cases ----

fn expired_token(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(connect_token(addr, tokens::expired("mallory")))
}

fn nbf_in_future(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(connect_token(addr, tokens::not_yet_valid("mallory")))
}

fn wrong_signature(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(connect_token(addr, tokens::wrong_secret("mallory")))
}

fn alg_none(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(connect_token(addr, tokens::alg_none("mallory")))
}

fn wrong_audience(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(connect_token(
        addr,
        tokens::with_aud_iss("mallory", "other-app", ISS),
    ))
}

fn wrong_issuer(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(connect_token(
        addr,
        tokens::with_aud_iss("mallory", AUD, "other-issuer"),
    ))
}

fn missing_audience(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(connect_token(addr, tokens::connect("mallory")))
}

fn iat_in_future(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    let token = tokens::sign(
        &json!({"sub": "mallory", "iat": common::now() + 3600, "exp": common::now() + 7200}),
        common::SECRET,
    );
    Box::pin(connect_token(addr, token))
}

fn garbage_token(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(connect_token(addr, "not.a.jwt".to_string()))
}

fn subscription_token_for_other_channel(
    addr: SocketAddr,
) -> Pin<Box<dyn Future<Output = Outcome>>> {
    let token = tokens::subscribe("mallory", "secret:other", 3600);
    Box::pin(after_connect(
        addr,
        Wire::Json,
        "mallory",
        cmd::subscribe_token("secret:room", &token),
    ))
}

fn unknown_namespace(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(after_connect(
        addr,
        Wire::Json,
        "mallory",
        cmd::subscribe("nope:room"),
    ))
}

fn oversize_frame(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    // The server below accepts frames up to 4096 bytes.
    let big = "x".repeat(8000);
    let mut publish = cmd::publish("open:big", &json!({ "big": big }));
    publish.id = 5;
    let text = serde_json::to_string(&publish).unwrap();
    Box::pin(raw_after_connect(addr, Wire::Json, Message::text(text)))
}

fn oversize_fragmented_message(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    // Three fragments of 3000 bytes: each fits the 4096-byte limit, the message does not.
    Box::pin(async move {
        let (mut c, _) = Client::connect(addr, Wire::Json, &tokens::connect("mallory")).await;
        let big = "x".repeat(9000);
        let mut publish = cmd::publish("open:big", &json!({ "big": big }));
        publish.id = 5;
        let text = serde_json::to_vec(&publish).unwrap();
        let parts: Vec<&[u8]> = text.chunks(3000).collect();
        for (i, part) in parts.iter().enumerate() {
            let opcode = if i == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            };
            let frame = Frame::message(part.to_vec(), opcode, i + 1 == parts.len());
            c.send_message(Message::Frame(frame)).await;
        }
        close_code(&mut c).await
    })
}

fn invalid_json(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(raw_after_connect(
        addr,
        Wire::Json,
        Message::text("{\"id\": 2, \"subscribe\": "),
    ))
}

fn unknown_command(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(after_connect(
        addr,
        Wire::Json,
        "mallory",
        Command::default(),
    ))
}

fn unknown_command_protobuf(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(after_connect(
        addr,
        Wire::Protobuf,
        "mallory",
        Command::default(),
    ))
}

fn no_token(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(connect_token(addr, String::new()))
}

fn token_without_sub(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    let token = tokens::sign(&json!({"exp": common::now() + 3600}), common::SECRET);
    Box::pin(connect_token(addr, token))
}

fn publish_without_data(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(async move {
        let (mut c, _) = Client::connect(addr, Wire::Json, &tokens::connect("mallory")).await;
        c.send_message(Message::text(
            r#"{"id":100,"publish":{"channel":"open:x"}}"#,
        ))
        .await;
        answer_to(&mut c, 100).await
    })
}

fn publish_without_data_protobuf(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    let mut publish = cmd::publish("open:x", &json!(null));
    publish.publish.as_mut().unwrap().data = Default::default();
    Box::pin(after_connect(addr, Wire::Protobuf, "mallory", publish))
}

fn overlong_channel(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    let name = "c".repeat(300);
    Box::pin(async move { after_connect(addr, Wire::Json, "mallory", cmd::subscribe(&name)).await })
}

fn user_limited_channel_of_others(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(async move {
        // Its own user-limited channel is fine...
        let (mut c, _) = Client::connect(addr, Wire::Json, &tokens::connect("mallory")).await;
        c.ok(cmd::subscribe("dm#alice,mallory")).await;
        // ...others' are not.
        let mut command = cmd::subscribe("dm#alice,bob");
        command.id = 100;
        c.send(&command).await;
        answer_to(&mut c, 100).await
    })
}

fn command_without_id(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(raw_after_connect(
        addr,
        Wire::Json,
        Message::text(r#"{"subscribe":{"channel":"chat:x"}}"#),
    ))
}

fn send_before_connect(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(async move {
        let mut c = Client::open(addr, Wire::Json).await;
        c.send(&cmd::send(&json!({"sneaky": true}))).await;
        close_code(&mut c).await
    })
}

fn first_command_not_connect(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(first_command(addr, Wire::Json, cmd::subscribe("chat:x")))
}

fn second_connect(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(after_connect(
        addr,
        Wire::Json,
        "mallory",
        cmd::connect(&tokens::connect("mallory")),
    ))
}

fn too_many_subscriptions(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    // The server below allows 2 subscriptions per connection.
    Box::pin(async move {
        let (mut c, _) = Client::connect(addr, Wire::Json, &tokens::connect("mallory")).await;
        c.ok(cmd::subscribe("chat:1")).await;
        c.ok(cmd::subscribe("chat:2")).await;
        let e = c.err(cmd::subscribe("chat:3")).await;
        // After unsubscribing one, there is room again.
        c.ok(cmd::unsubscribe("chat:1")).await;
        c.ok(cmd::subscribe("chat:3")).await;
        Outcome::Error(e.code)
    })
}

fn invalid_utf8_text_frame(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    Box::pin(raw_after_connect(addr, Wire::Json, Message::Frame(frame)))
}

fn binary_frame_on_json(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(raw_after_connect(
        addr,
        Wire::Json,
        Message::binary(b"{}".to_vec()),
    ))
}

fn text_frame_on_protobuf(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    Box::pin(raw_after_connect(
        addr,
        Wire::Protobuf,
        Message::text("{\"id\":2,\"ping\":{}}"),
    ))
}

fn truncated_protobuf(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    // Announces 5 bytes, carries 1.
    Box::pin(raw_after_connect(
        addr,
        Wire::Protobuf,
        Message::binary(vec![0x05, 0x08]),
    ))
}

fn no_connect_within_timeout(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    // The server below waits 1 s for connect.
    Box::pin(async move {
        let mut c = Client::open(addr, Wire::Json).await;
        close_code(&mut c).await
    })
}

fn connection_limit_per_user(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    // The server below allows one connection per user.
    Box::pin(async move {
        let (mut first, _) = Client::connect(addr, Wire::Json, &tokens::connect("mallory")).await;
        let outcome = connect_token(addr, tokens::connect("mallory")).await;
        // The first connection is unaffected.
        first.roundtrip().await;
        outcome
    })
}

fn rate_limit(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Outcome>>> {
    // The server below allows 1 command per second with bursts of 2.
    Box::pin(async move {
        let (mut c, _) = Client::connect(addr, Wire::Json, &tokens::connect("mallory")).await;
        let batch: Vec<Command> = (1..=6).map(|id| Command { id, ..cmd::ping() }).collect();
        c.send_batch(&batch).await;
        let mut codes = Vec::new();
        for id in 1..=6 {
            let r = c.wait_reply(id).await;
            codes.push(r.error.map(|e| (e.code, e.temporary)));
        }
        assert_eq!(codes[0], None, "the first command is within the burst");
        match codes.iter().flatten().next() {
            Some((111, true)) => Outcome::Error(111),
            Some((code, temporary)) => Outcome::Other(format!("{code} temporary={temporary}")),
            None => Outcome::Other("no command was limited".into()),
        }
    })
}

// ---- the runner ----

/// After the case: a new client connects, subscribes, and gets a publication.
async fn healthy_client_still_works(srv: &Server) {
    let token = tokens::with_aud_iss("healthy", AUD, ISS);
    let (mut c, _) = Client::connect(srv.addr, Wire::Json, &token).await;
    c.ok(cmd::subscribe("chat:health")).await;
    srv.api()
        .publish("chat:health", json!({"still": "alive"}))
        .await;
    assert_eq!(
        data_json(&c.next_pub("chat:health").await),
        json!({"still": "alive"})
    );
}

async fn run_case(name: &str, env: &[(&str, &str)], action: Action, expected: Outcome) {
    let srv = Server::start_with(env);
    let got = common::within(name, action(srv.addr)).await;
    assert_eq!(got, expected, "case {name}");
    healthy_client_still_works(&srv).await;
}

macro_rules! cases {
    ($($name:ident: env $env:expr, expect $expected:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                run_case(stringify!($name), $env, super::$name, $expected).await;
            }
        )*
    };
}

mod case {
    use super::*;
    use Outcome::*;

    cases! {
        expired_token: env &[], expect Error(109);
        nbf_in_future: env &[], expect Error(109);
        wrong_signature: env &[], expect Close(3500);
        alg_none: env &[], expect Close(3500);
        garbage_token: env &[], expect Close(3500);
        iat_in_future: env &[], expect Close(3500);
        wrong_audience: env AUD_ISS, expect Close(3500);
        wrong_issuer: env AUD_ISS, expect Close(3500);
        missing_audience: env AUD_ISS, expect Close(3500);
        subscription_token_for_other_channel: env &[], expect Error(103);
        unknown_namespace: env &[], expect Error(102);
        oversize_fragmented_message: env &[("HERALD_CLIENT__MAX_FRAME_BYTES", "4096")], expect Close(1009);
        no_token: env &[], expect Error(101);
        token_without_sub: env &[], expect Close(3507);
        publish_without_data: env &[], expect Error(107);
        publish_without_data_protobuf: env &[], expect Error(107);
        overlong_channel: env &[], expect Error(102);
        user_limited_channel_of_others: env &[], expect Error(103);
        command_without_id: env &[], expect Close(3501);
        send_before_connect: env &[("HERALD_CLIENT__CONNECT_TIMEOUT", "3s")], expect Close(3501);
        oversize_frame: env &[("HERALD_CLIENT__MAX_FRAME_BYTES", "4096")], expect Close(1009);
        invalid_json: env &[], expect Close(3501);
        unknown_command: env &[], expect Error(104);
        unknown_command_protobuf: env &[], expect Error(104);
        first_command_not_connect: env &[], expect Close(3501);
        second_connect: env &[], expect Close(3501);
        too_many_subscriptions: env &[("HERALD_CLIENT__MAX_SUBSCRIPTIONS", "2")], expect Error(106);
        invalid_utf8_text_frame: env &[], expect Close(3501);
        binary_frame_on_json: env &[], expect Close(3501);
        text_frame_on_protobuf: env &[], expect Close(3501);
        truncated_protobuf: env &[], expect Close(3501);
        no_connect_within_timeout: env &[("HERALD_CLIENT__CONNECT_TIMEOUT", "1s")], expect Close(3502);
        connection_limit_per_user: env &[("HERALD_CLIENT__MAX_CONNECTIONS_PER_USER", "1")], expect Close(3504);
        rate_limit: env &[("HERALD_CLIENT__COMMAND_RATE", "1"), ("HERALD_CLIENT__COMMAND_BURST", "2")], expect Error(111);
    }
}

/// A bad command in the middle of a frame: replies to the commands before it still
/// arrive, then the connection closes.
#[tokio::test]
async fn replies_before_a_bad_command_are_delivered() {
    let srv = Server::start();
    let (mut c, _) = Client::connect(srv.addr, Wire::Json, &tokens::connect("mallory")).await;
    let ping = Command {
        id: 7,
        ..cmd::ping()
    };
    let bad = cmd::subscribe("chat:no-id");
    c.send_batch(&[ping, bad]).await;
    assert!(c.wait_reply(7).await.ping.is_some());
    assert_eq!(c.expect_close().await.code, 3501);
    healthy_client_still_works(&srv).await;
}

/// The per-user limit counts live connections: once one goes, a new one fits.
#[tokio::test]
async fn connection_limit_frees_the_slot_on_disconnect() {
    let srv = Server::start_with(&[("HERALD_CLIENT__MAX_CONNECTIONS_PER_USER", "1")]);
    let (first, _) = Client::connect(srv.addr, Wire::Json, &tokens::connect("mallory")).await;
    drop(first);
    // The server notices the closed socket asynchronously; retry (bounded) until then.
    common::within("the slot to free", async {
        loop {
            match connect_token(srv.addr, tokens::connect("mallory")).await {
                Outcome::Close(3504) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Outcome::Other(s) if s.starts_with("success") => return,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    healthy_client_still_works(&srv).await;
}
