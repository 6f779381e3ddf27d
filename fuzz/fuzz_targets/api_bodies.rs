//! Server API request bodies (HTTP `POST /api/<method>`, `batch`, Kafka ingest all end in
//! `api::methods::call`): any body for any method answers a result or a documented error
//! with a message, never a panic. The node is a real one on the memory broker and
//! presence, so a body that parses also runs the method.
#![no_main]

use std::sync::OnceLock;

use herald::api::methods::{call, METHODS};
use herald::broker::memory::MemoryBroker;
use herald::config::Config;
use herald::node::Node;
use herald::presence::memory::MemoryPresence;
use herald::protocol::codes;
use libfuzzer_sys::fuzz_target;

struct Fixture {
    rt: tokio::runtime::Runtime,
    node: Node,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let config = std::sync::Arc::new(Config::load_from(None, "fuzz", vec![]).expect("config"));
        let node = rt.block_on(async {
            Node::new(
                config,
                std::sync::Arc::new(MemoryBroker::new()),
                std::sync::Arc::new(MemoryPresence::default()),
                None,
            )
        });
        Fixture { rt, node }
    })
}

fuzz_target!(|data: &[u8]| {
    // First byte picks the method (one past the end: an unknown one), the rest is the body.
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let method = METHODS
        .get(pick as usize % (METHODS.len() + 1))
        .copied()
        .unwrap_or("nope");
    let f = fixture();
    match f.rt.block_on(call(&f.node, method, body)) {
        Ok(v) => assert!(v.is_object(), "{method}: result is an object: {v}"),
        Err(e) => {
            assert!(
                !e.message.is_empty(),
                "{method}: error {} has a message",
                e.code
            );
            assert!(
                codes::ALL_ERRORS.iter().any(|c| c.code == e.code),
                "{method}: undocumented error code {}",
                e.code
            );
        }
    }
});
