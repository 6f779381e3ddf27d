-- Herald embedded store, version 1.
-- Offsets and epochs per channel; messages keyed by (channel, offset) so a history page
-- is one range scan of the primary key.
CREATE TABLE IF NOT EXISTS channels (
    channel TEXT PRIMARY KEY,
    epoch   TEXT    NOT NULL,
    top     INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS messages (
    channel TEXT    NOT NULL,
    offset  INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    user    TEXT    NOT NULL,
    -- the Publication (data, info, tags) encoded as Protobuf
    body    BLOB    NOT NULL,
    PRIMARY KEY (channel, offset)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_user ON messages (user);
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (time_ms);

-- De-duplication of retried publishes: (channel, key) -> offset, pruned after a window.
CREATE TABLE IF NOT EXISTS idempotency (
    channel    TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    offset     INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (channel, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_by_time ON idempotency (created_ms);

-- Conversation membership.
CREATE TABLE IF NOT EXISTS members (
    channel   TEXT    NOT NULL,
    user      TEXT    NOT NULL,
    joined_ms INTEGER NOT NULL,
    PRIMARY KEY (channel, user)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_by_user ON members (user, channel);

-- Read markers: the highest offset a user has read in a channel.
CREATE TABLE IF NOT EXISTS read_markers (
    user       TEXT    NOT NULL,
    channel    TEXT    NOT NULL,
    offset     INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (user, channel)
) WITHOUT ROWID;
