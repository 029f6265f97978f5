-- API keys with tenants: each request remembers the tenant whose key submitted it, and a tenant
-- sees only its own requests. NULL: the admin's, or made while the API was open; only the admin
-- sees those once keys are set.
ALTER TABLE requests ADD COLUMN tenant TEXT;

-- A tenant's page of requests, newest first, without reading everyone else's.
CREATE INDEX requests_by_tenant ON requests (tenant, created_at DESC, id DESC) WHERE tenant IS NOT NULL;
