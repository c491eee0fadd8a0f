-- Tool history: see migrations/postgres/20261125000002_tool_history.sql.
ALTER TABLE messages ADD COLUMN parts TEXT;
