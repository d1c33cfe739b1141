-- A tenant's uploads waiting to be written are bounded; the check sums them per tenant.
CREATE INDEX jail_uploads_tenant_pending_idx ON jail_uploads (tenant_id) WHERE state = 'pending';
