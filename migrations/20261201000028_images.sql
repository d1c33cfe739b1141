-- The image catalogue staff keep. An image with a `reference` is pulled
-- from its registry by every node's agent (with the account given, its
-- password sealed to the nodes' key as certificate keys are); one without
-- is provided on the nodes by hand (the built-in busybox, `stockade image
-- import`). Customers pick only offered images; the provider's API and
-- staff may place any image a node has.
CREATE TABLE images (
    name                     text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    reference                text CHECK (reference IS NULL OR length(reference) BETWEEN 1 AND 512),
    registry_username        text CHECK (registry_username IS NULL OR length(registry_username) BETWEEN 1 AND 256),
    registry_password_sealed bytea,
    offered                  boolean NOT NULL DEFAULT false,
    created_at               timestamptz NOT NULL DEFAULT now(),
    CHECK ((registry_username IS NULL) = (registry_password_sealed IS NULL)),
    CHECK (reference IS NOT NULL OR registry_username IS NULL)
);
INSERT INTO images (name, offered) VALUES ('busybox', true);

-- Each node's pull of each catalogue image: ready (with the digest it
-- got) or failed (with why), for the staff's images page.
CREATE TABLE node_images (
    node_id    uuid NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    image      text NOT NULL,
    state      text NOT NULL CHECK (state IN ('ready', 'failed')),
    digest     text,
    error      text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, image)
);
