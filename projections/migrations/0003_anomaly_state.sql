-- Anomalies are open until a regulator or administrator acknowledges or resolves them (AnomalyHandled).
ALTER TABLE anomalies
    ADD COLUMN state text NOT NULL DEFAULT 'open',
    ADD COLUMN state_note text,
    ADD COLUMN state_by text,
    ADD COLUMN state_at timestamptz;
CREATE INDEX anomalies_state ON anomalies (state, detected_at DESC);
