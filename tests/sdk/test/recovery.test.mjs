// Recovery of missed publications after a forced reconnect.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS, connToken, newClient, newSub, connect, subscribe, closeClient, uid, api, apiPublish,
} from '../lib/harness.mjs';

for (const t of TRANSPORTS) {
  describe(`recovery [${t.name}]`, () => {
    test('recoverable subscription recovers publications missed while reconnecting', async () => {
      const channel = `chat:${uid('room')}`;
      const user = uid('alice');
      // A reconnect delay long enough to publish while the client is away.
      const c = newClient(t, {
        token: connToken(user),
        minReconnectDelay: 1500,
        maxReconnectDelay: 2500,
      });
      const first = await connect(c);
      const sub = newSub(c, channel, { recoverable: true });
      const s1 = await subscribe(sub);
      assert.equal(s1.recoverable, true, `first subscribed: ${JSON.stringify(s1)}`);
      assert.equal(s1.positioned, true);
      assert.equal(s1.wasRecovering, false);
      assert.ok(s1.streamPosition && s1.streamPosition.epoch, 'stream position with an epoch');

      // Two publications delivered live.
      await apiPublish(channel, { n: 1 });
      await apiPublish(channel, { n: 2 });
      await sub.rec.waitCount('publication', 2);

      // Force a reconnect and publish while the client is away.
      const connecting = c.rec.wait('connecting', (ctx) => ctx.code === 3011);
      await api('disconnect', { user, disconnect: { code: 3011, reason: 'force reconnect' } });
      const cctx = await connecting;
      assert.equal(cctx.reason, 'force reconnect');
      assert.equal(c.state, 'connecting', 'publishing while the client is away');
      for (const n of [3, 4, 5]) await apiPublish(channel, { n });

      const second = await c.rec.wait('connected', (ctx) => ctx.client !== first.client);
      assert.notEqual(second.client, first.client);
      const s2 = await sub.rec.wait('subscribed', (ctx) => ctx !== s1);
      assert.equal(s2.wasRecovering, true, `second subscribed: ${JSON.stringify(s2)}`);
      assert.equal(s2.recovered, true, `second subscribed: ${JSON.stringify(s2)}`);
      assert.equal(s2.hasRecoveredPublications, true);
      assert.equal(s2.streamPosition.epoch, s1.streamPosition.epoch);

      // Publications after the recovery arrive live, right after the recovered ones.
      await apiPublish(channel, { n: 6 });
      await sub.rec.waitCount('publication', 6);
      // One more live publication: any duplicate of 1..6 would be delivered before it.
      await apiPublish(channel, { n: 7 });
      await sub.rec.waitCount('publication', 7);
      const got = sub.rec.all('publication');
      assert.deepEqual(got.map((p) => t.decode(p.data).n), [1, 2, 3, 4, 5, 6, 7], 'in order, exactly once');
      const offsets = got.map((p) => p.offset);
      for (let i = 1; i < offsets.length; i++) assert.equal(offsets[i], offsets[i - 1] + 1, `offsets ${offsets}`);
      closeClient(c);
    });

    test('a positioned subscription is told recovered=false when it did not ask to recover', async () => {
      const channel = `chat:${uid('room')}`;
      const c = newClient(t, { token: connToken(uid('alice')) });
      await connect(c);
      const sub = newSub(c, channel, { positioned: true });
      const s = await subscribe(sub);
      assert.equal(s.positioned, true, `subscribed: ${JSON.stringify(s)}`);
      assert.equal(s.recoverable, false);
      assert.equal(s.wasRecovering, false);
      assert.equal(s.recovered, false);
      assert.ok(s.streamPosition && s.streamPosition.epoch);
      closeClient(c);
    });
  });
}
