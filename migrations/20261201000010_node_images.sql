-- The images each node offers, reported with its heartbeat, so a jail is
-- placed only where its image exists and an unknown image is refused when
-- the jail is asked for. NULL: the node has not reported yet (any image).
ALTER TABLE nodes ADD COLUMN images text[];
