-- The node that claimed a webhook event (its uid), so that a vanished
-- node's claims can be released and only the claimer settles an event;
-- indexes for what is looked up by node.
ALTER TABLE webhook_events ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
CREATE INDEX webhook_events_claimed_by ON webhook_events (claimed_by);
CREATE INDEX webhook_holders_node ON webhook_holders (node);
