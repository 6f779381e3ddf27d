"""The PyPI `cent` client (Centrifugo's official Python API client) against a live Herald.

Run by run.sh with HERALD_API (e.g. http://127.0.0.1:PORT/api) and HERALD_API_KEY set.
Every call goes through cent's own request models and response parsing, so a shape
Herald gets wrong fails here the way it would fail for a user.
"""

import os
import unittest

from cent import (
    BatchRequest,
    BroadcastRequest,
    ChannelsRequest,
    Client,
    CentApiResponseError,
    CentUnauthorizedError,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    StreamPosition,
    SubscribeRequest,
    UnsubscribeRequest,
)

API = os.environ["HERALD_API"]
KEY = os.environ["HERALD_API_KEY"]


class CentCompat(unittest.TestCase):
    def setUp(self):
        self.client = Client(API, KEY)

    def test_publish_and_history(self):
        first = self.client.publish(PublishRequest(channel="cent-hist", data={"n": 1}))
        second = self.client.publish(PublishRequest(channel="cent-hist", data={"n": 2}))
        self.assertEqual(second.offset, first.offset + 1)
        self.assertEqual(first.epoch, second.epoch)
        hist = self.client.history(HistoryRequest(channel="cent-hist", limit=10))
        self.assertEqual([p.data for p in hist.publications][-2:], [{"n": 1}, {"n": 2}])
        self.assertEqual(hist.offset, second.offset)
        since = self.client.history(
            HistoryRequest(channel="cent-hist", limit=10, since=StreamPosition(offset=first.offset, epoch=first.epoch))
        )
        self.assertEqual([p.data for p in since.publications], [{"n": 2}])
        self.client.history_remove(HistoryRemoveRequest(channel="cent-hist"))
        empty = self.client.history(HistoryRequest(channel="cent-hist", limit=10))
        self.assertEqual(empty.publications, [])

    def test_broadcast(self):
        res = self.client.broadcast(BroadcastRequest(channels=["cent-b1", "cent-b2"], data={"x": 1}))
        self.assertEqual(len(res.responses), 2)
        for r in res.responses:
            self.assertIsNone(r.error)
            self.assertGreaterEqual(r.result.offset, 1)

    def test_presence_and_stats_on_empty_channel(self):
        self.assertEqual(self.client.presence(PresenceRequest(channel="cent-p")).presence, {})
        stats = self.client.presence_stats(PresenceStatsRequest(channel="cent-p"))
        self.assertEqual((stats.num_clients, stats.num_users), (0, 0))

    def test_user_methods_accept(self):
        self.client.subscribe(SubscribeRequest(user="nobody", channel="cent-s"))
        self.client.unsubscribe(UnsubscribeRequest(user="nobody", channel="cent-s"))
        self.client.disconnect(DisconnectRequest(user="nobody"))
        self.client.refresh(RefreshRequest(user="nobody", expired=False))

    def test_channels_and_info(self):
        self.assertIsInstance(self.client.channels(ChannelsRequest()).channels, dict)
        nodes = self.client.info(InfoRequest()).nodes
        self.assertEqual(len(nodes), 1)
        self.assertTrue(nodes[0].uid and nodes[0].name)

    def test_batch(self):
        res = self.client.batch(
            BatchRequest(
                requests=[
                    PublishRequest(channel="cent-batch", data={"i": 1}),
                    PublishRequest(channel="cent-batch", data={"i": 2}),
                ]
            )
        )
        self.assertEqual(len(res.replies), 2)
        self.assertEqual(res.replies[1].offset, res.replies[0].offset + 1)

    def test_method_error_is_raised_with_code(self):
        with self.assertRaises(CentApiResponseError) as ctx:
            self.client.publish(PublishRequest(channel="nonexistent-ns:room", data={}))
        self.assertEqual(ctx.exception.code, 102)

    def test_wrong_key_is_unauthorized(self):
        with self.assertRaises(CentUnauthorizedError):
            Client(API, "wrong-key").info(InfoRequest())


if __name__ == "__main__":
    unittest.main()
