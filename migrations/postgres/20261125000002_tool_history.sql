-- Tool history: a message's structured parts (text, tool calls, tool results) in
-- the internal message model, as JSON. NULL for plain text messages. Role 'tool'
-- holds the results of the preceding assistant message's tool calls.
ALTER TABLE messages ADD COLUMN parts JSONB;
