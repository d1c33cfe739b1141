-- Why a node moves jails cold (stopped, shipped through the backup target,
-- started) rather than live with their processes and memory (CRIU), as its
-- agent found when it started; shown to staff where they move jails.
ALTER TABLE nodes ADD COLUMN cold_moves text;
