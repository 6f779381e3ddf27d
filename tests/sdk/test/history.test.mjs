// Channel history through sub.history().
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS, connToken, newClient, newSub, connect, subscribe, closeClient, uid, apiPublish,
  rejection,
} from '../lib/harness.mjs';

for (const t of TRANSPORTS) {
  describe(`history [${t.name}]`, () => {
    test('sub.history returns publications in order, with limit, reverse and since', async () => {
      const channel = `chat:${uid('room')}`;
      const payloads = [1, 2, 3, 4, 5].map((n) => ({ n, text: `message ${n}` }));
      const positions = [];
      for (const p of payloads) positions.push(await apiPublish(channel, p));
      const epoch = positions[0].epoch;
      assert.ok(epoch, `API publish must return an epoch: ${JSON.stringify(positions[0])}`);
      for (const [i, pos] of positions.entries()) {
        assert.equal(pos.epoch, epoch);
        if (i > 0) assert.equal(pos.offset, positions[i - 1].offset + 1, 'offsets are consecutive');
      }

      const c = newClient(t, { token: connToken(uid('alice')) });
      await connect(c);
      const sub = newSub(c, channel);
      await subscribe(sub);

      const all = await sub.history({ limit: 10 });
      assert.deepEqual(all.publications.map((p) => t.decode(p.data)), payloads);
      assert.deepEqual(all.publications.map((p) => p.offset), positions.map((p) => p.offset));
      assert.equal(all.offset, positions[4].offset, 'history top offset');
      assert.equal(all.epoch, epoch, 'history epoch');

      const first2 = await sub.history({ limit: 2 });
      assert.deepEqual(first2.publications.map((p) => t.decode(p.data)), payloads.slice(0, 2));
      assert.equal(first2.offset, positions[4].offset);

      const last2 = await sub.history({ limit: 2, reverse: true });
      assert.deepEqual(last2.publications.map((p) => t.decode(p.data)), [payloads[4], payloads[3]]);

      const since = await sub.history({ limit: 10, since: { offset: positions[1].offset, epoch } });
      assert.deepEqual(since.publications.map((p) => t.decode(p.data)), payloads.slice(2));

      const none = await sub.history({ limit: 0 });
      assert.deepEqual(none.publications, []);
      assert.equal(none.offset, positions[4].offset, 'limit 0 still returns the stream position');
      assert.equal(none.epoch, epoch);
      closeClient(c);
    });

    test('history of a channel the client is not subscribed to is denied (103)', async () => {
      const channel = `chat:${uid('room')}`;
      await apiPublish(channel, { n: 1 });
      const c = newClient(t, { token: connToken(uid('alice')) });
      await connect(c);
      const err = await rejection(c.history(channel, { limit: 10 }), 'history');
      assert.equal(err.code, 103, `history error: ${JSON.stringify(err)}`);
      closeClient(c);
    });
  });
}
