-- Moving a jail between nodes, through the backup target: staff (or a
-- provider's token) ask; the source node stops the jail and ships its
-- volume as a backup (`purpose = 'move'`); once that is stored the jail is
-- placed on `move_to_node` (its ports and address re-pointed) and restored
-- there from the backup. `moved_from_node` keeps the source's copy until
-- the jail converges on its new node; a restore that fails there puts the
-- jail back on its source, as it was.
ALTER TABLE backups
    ADD COLUMN purpose text NOT NULL DEFAULT 'backup' CHECK (purpose IN ('backup', 'move'));

ALTER TABLE jails
    ADD COLUMN move_to_node uuid REFERENCES nodes (id) ON DELETE SET NULL,
    ADD COLUMN move_backup_id uuid REFERENCES backups (id) ON DELETE SET NULL,
    ADD COLUMN moved_from_node uuid REFERENCES nodes (id) ON DELETE SET NULL;
CREATE INDEX jails_moved_from_idx ON jails (moved_from_node) WHERE moved_from_node IS NOT NULL;

-- A node staff drain takes no new jails; its jails are moved away (or
-- stopped where no node has room). Kept apart from the node's own row,
-- which only its agent writes.
CREATE TABLE node_drains (
    node_id       uuid PRIMARY KEY REFERENCES nodes (id) ON DELETE CASCADE,
    requested_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    requested_at  timestamptz NOT NULL DEFAULT now()
);
