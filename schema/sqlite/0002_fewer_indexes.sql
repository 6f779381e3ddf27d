-- Version 2: appends write less. Every index on messages is one more B-tree page written
-- per channel per commit; the two secondary indexes served only rare operations.
-- Age retention now walks each channel from its oldest offset (time grows with the
-- offset), and user_data_remove scans (an infrequent administrative operation).
DROP INDEX IF EXISTS messages_by_user;
DROP INDEX IF EXISTS messages_by_time;
