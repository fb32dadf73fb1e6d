-- The runs list (API and dashboard) filtered by a status reads this index in the list's
-- order: a status few runs have no longer scans every run of the created window (2 s
-- with 1,000,000 runs stored and none matching).
CREATE INDEX runs_list_by_status ON runs (environment_id, status, created_at DESC, id DESC);
