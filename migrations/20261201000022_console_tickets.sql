-- A ticket is for a jail's output or for a console in it, never both.
ALTER TABLE log_tickets ADD COLUMN kind text NOT NULL DEFAULT 'output'
    CHECK (kind IN ('output', 'console'));
