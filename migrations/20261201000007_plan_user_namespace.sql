-- Whether the jails of a plan's tenants run in a user namespace of their
-- own: root in a jail is then an unprivileged host uid of a range no other
-- jail on the node holds. On for every plan; staff may turn it off per plan.
ALTER TABLE plans ADD COLUMN user_namespace boolean NOT NULL DEFAULT true;
