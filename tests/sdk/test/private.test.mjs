// Subscription tokens for a namespace that requires them.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS, connToken, subToken, newClient, newSub, connect, subscribe, closeClient, uid,
  apiPublish,
} from '../lib/harness.mjs';

for (const t of TRANSPORTS) {
  describe(`private channel [${t.name}]`, () => {
    test('subscribe with a token from the subscription getToken', async () => {
      const user = uid('alice');
      const channel = `private:${uid('room')}`;
      const asked = [];
      const c = newClient(t, { token: connToken(user) });
      await connect(c);
      const sub = newSub(c, channel, {
        getToken: async (ctx) => {
          asked.push(ctx.channel);
          return subToken(user, channel, { info: { role: 'member' } });
        },
      });
      await subscribe(sub);
      assert.deepEqual(asked, [channel]);
      await apiPublish(channel, { secret: 'plans' });
      const [pub] = await sub.rec.waitCount('publication', 1);
      assert.deepEqual(t.decode(pub.data), { secret: 'plans' });

      // The token's info shows up as chanInfo of this client's publications.
      await sub.publish(t.encode({ mine: true }));
      const [, mine] = await sub.rec.waitCount('publication', 2);
      assert.deepEqual(t.decode(mine.data), { mine: true });
      assert.deepEqual(t.decode(mine.info.chanInfo), { role: 'member' });
      closeClient(c);
    });

    test('subscribe with a token passed in options', async () => {
      const user = uid('alice');
      const channel = `private:${uid('room')}`;
      const c = newClient(t, { token: connToken(user) });
      await connect(c);
      const sub = newSub(c, channel, { token: subToken(user, channel) });
      const ctx = await subscribe(sub);
      assert.equal(ctx.channel, channel);
      closeClient(c);
    });

    test('without a token the subscription is refused with 103 and ends unsubscribed', async () => {
      const channel = `private:${uid('room')}`;
      const c = newClient(t, { token: connToken(uid('alice')) });
      await connect(c);
      const sub = newSub(c, channel);
      sub.subscribe();
      const un = await sub.rec.wait('unsubscribed');
      assert.equal(un.code, 103, `unsubscribed: ${JSON.stringify(un)}`);
      assert.equal(sub.state, 'unsubscribed');
      assert.equal(c.state, 'connected');
      closeClient(c);
    });

    test("a token issued to another user is refused (103)", async () => {
      const channel = `private:${uid('room')}`;
      const c = newClient(t, { token: connToken(uid('alice')) });
      await connect(c);
      const sub = newSub(c, channel, { token: subToken(uid('bob'), channel) });
      sub.subscribe();
      const un = await sub.rec.wait('unsubscribed');
      assert.equal(un.code, 103, `unsubscribed: ${JSON.stringify(un)}`);
      closeClient(c);
    });
  });
}
