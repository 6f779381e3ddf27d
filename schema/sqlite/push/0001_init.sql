-- Herald push store, version 1: devices, per-conversation mutes, the queue of pushes.
-- A file of its own (store.path/push.db), so that its commits never wait for the
-- message store's writer, nor it for them.

CREATE TABLE IF NOT EXISTS push_devices (
    id         TEXT    PRIMARY KEY,
    user       TEXT    NOT NULL,
    provider   TEXT    NOT NULL,
    platform   TEXT    NOT NULL,
    token      TEXT    NOT NULL,
    -- JSON object of string values
    meta       TEXT    NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
-- A token belongs to one device: registering it again moves it.
CREATE UNIQUE INDEX IF NOT EXISTS push_devices_by_token ON push_devices (provider, token);
CREATE INDEX IF NOT EXISTS push_devices_by_user ON push_devices (user, id);

CREATE TABLE IF NOT EXISTS push_device_topics (
    topic     TEXT NOT NULL,
    device_id TEXT NOT NULL,
    PRIMARY KEY (topic, device_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS push_device_topics_by_device ON push_device_topics (device_id);

-- Conversations a user does not want pushes from; until_ms NULL = until unmuted.
CREATE TABLE IF NOT EXISTS push_mutes (
    user     TEXT NOT NULL,
    channel  TEXT NOT NULL,
    until_ms INTEGER,
    PRIMARY KEY (user, channel)
) WITHOUT ROWID;

-- The durable queue: a row per (notification, device) until it is delivered or given
-- up on. AUTOINCREMENT: an id is never reused, so the dispatcher's in-flight set
-- cannot confuse a new job with a finished one.
CREATE TABLE IF NOT EXISTS push_queue (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    provider   TEXT    NOT NULL,
    device_id  TEXT    NOT NULL,
    token      TEXT    NOT NULL,
    -- the Notification as JSON
    body       TEXT    NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    due_ms     INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS push_queue_due ON push_queue (provider, due_ms, id);
CREATE INDEX IF NOT EXISTS push_queue_by_token ON push_queue (provider, token);
