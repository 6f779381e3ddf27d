// Connection and subscription token refresh through getToken.
//
// herald-sdk.toml sets [auth] expired_close_delay = "1s": a connection (or
// subscription) whose token expired is closed about 1 s after `exp` unless refreshed.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS, connToken, subToken, nowSec, newClient, newSub, connect, subscribe, closeClient,
  uid, apiPublish, sleep,
} from '../lib/harness.mjs';

const SHORT_TTL = 3;
// The server closes an unrefreshed connection at exp + 1 s (within a second of
// rounding); wait this long past exp before declaring the refresh a success.
const PAST_EXP_MS = 3500;

/**
 * The SDK schedules the refresh `ttl` whole seconds after the connect reply, and the
 * server rounds `ttl` down from `exp`: started late in a second, the refresh could
 * land just after exp + the 1 s grace. Start right after a second boundary instead.
 */
async function alignToSecond() {
  const ms = Date.now() % 1000;
  if (ms > 100) await sleep(1000 - ms + 20);
}

for (const t of TRANSPORTS) {
  // The tests wait for tokens to expire: run them side by side.
  describe(`token refresh [${t.name}]`, { concurrency: true }, () => {
    test('connection token: getToken is called before exp and the connection survives past it', async () => {
      const user = uid('alice');
      const channel = `chat:${uid('room')}`;
      let calls = 0;
      await alignToSecond();
      const exp = nowSec() + SHORT_TTL;
      const c = newClient(t, {
        token: connToken(user, { exp }),
        getToken: async () => {
          calls += 1;
          return connToken(user, { ttl: 600 });
        },
      });
      const first = await connect(c);
      const sub = newSub(c, channel);
      await subscribe(sub);

      await sleep(Math.max(0, exp * 1000 + PAST_EXP_MS - Date.now()));
      assert.ok(calls >= 1, 'getToken was called');
      assert.equal(c.rec.count('disconnected'), 0, `events: ${c.rec.summary()}`);
      assert.equal(c.rec.count('connecting'), 1, `no reconnect; events: ${c.rec.summary()}`);
      assert.equal(c.rec.count('connected'), 1);
      assert.equal(c.state, 'connected');
      assert.equal(c._client, first.client, 'same connection');

      // Still a working connection.
      await apiPublish(channel, { after: 'refresh' });
      const [pub] = await sub.rec.waitCount('publication', 1);
      assert.deepEqual(t.decode(pub.data), { after: 'refresh' });
      closeClient(c);
    });

    test('connection token: without a refresh the server closes the connection after exp (control)', async () => {
      const user = uid('alice');
      await alignToSecond();
      const exp = nowSec() + 2;
      let calls = 0;
      const c = newClient(t, {
        token: connToken(user, { exp }),
        // Refresh fails: the SDK keeps the old token, so the server must expire it.
        getToken: async () => {
          calls += 1;
          throw new Error('token service down');
        },
        minReconnectDelay: 5000,
        maxReconnectDelay: 5000,
      });
      await connect(c);
      // Expected about exp + 1 s (expired_close_delay) + up to 1 s of rounding.
      const ctx = await c.rec.wait('connecting', (x) => x.code === 3005, { timeout: 7000 });
      assert.equal(typeof ctx.reason, 'string');
      assert.ok(calls >= 1, 'getToken was tried');
      closeClient(c);
    });

    test('an already-expired connection token makes the SDK call getToken and connect', async () => {
      const user = uid('alice');
      let calls = 0;
      const c = newClient(t, {
        token: connToken(user, { exp: nowSec() - 10 }),
        getToken: async () => {
          calls += 1;
          return connToken(user, { ttl: 600 });
        },
        minReconnectDelay: 100,
        maxReconnectDelay: 300,
      });
      const ctx = await connect(c);
      assert.ok(ctx.client);
      assert.equal(calls, 1, 'getToken called once, after the 109 token expired error');
      closeClient(c);
    });

    test('subscription token: getToken refreshes it and the subscription survives past exp', async () => {
      const user = uid('alice');
      const channel = `private:${uid('room')}`;
      let calls = 0;
      let exp = 0;
      const c = newClient(t, { token: connToken(user) });
      await connect(c);
      await alignToSecond();
      const sub = newSub(c, channel, {
        getToken: async (ctx) => {
          calls += 1;
          assert.equal(ctx.channel, channel);
          if (calls === 1) {
            exp = nowSec() + SHORT_TTL;
            return subToken(user, channel, { exp });
          }
          return subToken(user, channel, { ttl: 600 });
        },
      });
      await subscribe(sub);
      await sleep(Math.max(0, exp * 1000 + PAST_EXP_MS - Date.now()));
      assert.ok(calls >= 2, `getToken called for subscribe and refresh (calls=${calls})`);
      assert.equal(sub.state, 'subscribed');
      assert.equal(sub.rec.count('subscribed'), 1, `sub events: ${sub.rec.summary()}`);
      assert.equal(sub.rec.count('unsubscribed'), 0);
      assert.equal(c.rec.count('disconnected'), 0, `client events: ${c.rec.summary()}`);
      assert.equal(c.rec.count('connecting'), 1, `client events: ${c.rec.summary()}`);
      await apiPublish(channel, { after: 'sub refresh' });
      const [pub] = await sub.rec.waitCount('publication', 1);
      assert.deepEqual(t.decode(pub.data), { after: 'sub refresh' });
      closeClient(c);
    });

    test('subscription token: without a refresh the server ends the subscription after exp (control)', async () => {
      const user = uid('alice');
      const channel = `private:${uid('room')}`;
      let calls = 0;
      const c = newClient(t, { token: connToken(user), minReconnectDelay: 5000, maxReconnectDelay: 5000 });
      await connect(c);
      await alignToSecond();
      const sub = newSub(c, channel, {
        getToken: async () => {
          calls += 1;
          if (calls === 1) return subToken(user, channel, { exp: nowSec() + 2 });
          throw new Error('token service down');
        },
        minResubscribeDelay: 5000,
        maxResubscribeDelay: 5000,
      });
      await subscribe(sub);
      // Centrifugo's answers to an expired subscription: close the connection with
      // 3006 (subscription expired), or unsubscribe the channel with 2501 (expired,
      // the SDK resubscribes). Either one is fine; silence is not.
      const deadline = Date.now() + 7000;
      let expired = null;
      while (!expired && Date.now() < deadline) {
        const d = c.rec.all('connecting').find((x) => x.code === 3006);
        const u = sub.rec.all('subscribing').find((x) => x.code === 2501)
          ?? sub.rec.all('unsubscribed').find((x) => x.code === 2501);
        expired = d ? ['disconnect', d] : u ? ['unsubscribe', u] : null;
        await sleep(50);
      }
      assert.ok(
        expired,
        `no disconnect 3006 nor unsubscribe 2501 within 7 s (token exp + 5 s); client events: ${c.rec.summary()}; sub events: ${sub.rec.summary()}`,
      );
      assert.ok(calls >= 2, `getToken was tried for the refresh (calls=${calls})`);
      closeClient(c);
    });
  });
}
