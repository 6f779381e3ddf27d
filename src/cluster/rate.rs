//! Token buckets kept in Redis, so that a limit holds across every node of a cluster
//! (`client.user_command_rate` with `broker.kind = "redis"`). One script call per
//! check: the bucket is read, refilled from Redis's clock and taken from atomically.

use std::sync::Arc;

use super::redis::{int, Redis, RedisFailure};

const TOKEN_BUCKET_LUA: &str = include_str!("lua/token_bucket.lua");

pub struct RedisBuckets {
    redis: Arc<Redis>,
    script: redis::Script,
    /// Key kind: `<prefix>:<what>:<name>`.
    what: &'static str,
    rate: u32,
    burst: u32,
}

impl RedisBuckets {
    pub fn new(redis: Arc<Redis>, what: &'static str, rate: u32, burst: u32) -> Self {
        RedisBuckets {
            redis,
            script: redis::Script::new(TOKEN_BUCKET_LUA),
            what,
            rate,
            burst,
        }
    }

    /// Takes a token from `name`'s bucket; false if it was empty.
    pub async fn allow(&self, name: &str) -> Result<bool, RedisFailure> {
        let mut inv = self.script.prepare_invoke();
        inv.key(self.redis.key(self.what, name))
            .arg(self.rate)
            .arg(self.burst);
        let mut conn = self.redis.shard_for(name).conn.clone();
        let v: redis::Value = self
            .redis
            .run("rate_limit", inv.invoke_async(&mut conn))
            .await?;
        Ok(int(&v)? == 1)
    }
}
