-- The business read model, built from the event log by the PostgreSQL projection.
-- Every generation of the model lives in its own schema (custodian_g1, custodian_g2, ...); the connection's
-- search_path names it, so these statements never qualify their tables. custodian_meta.active says which
-- generation queries read (see projections/src/postgres.rs).
--
-- Weights are integers in mg, as in the log. Days are calendar days in China Standard Time (UTC+8).

CREATE FUNCTION ns_to_ts(bigint) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT TIMESTAMPTZ 'epoch' + ($1 / 1000) * INTERVAL '1 microsecond' $$;

CREATE TABLE checkpoints (
    projection  text PRIMARY KEY,
    seq         bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO checkpoints (projection, seq) VALUES ('postgres', 0);

CREATE TABLE enterprises (
    id                   text PRIMARY KEY,
    name                 text NOT NULL,
    province_code        text NOT NULL,
    city_code            text NOT NULL,
    storage_capacity_mg  bigint NOT NULL,
    registered_seq       bigint NOT NULL,
    registered_at        timestamptz NOT NULL
);
CREATE INDEX enterprises_province ON enterprises (province_code, id);

CREATE TABLE terminals (
    id                 text PRIMARY KEY,
    enterprise_id      text NOT NULL,
    kind               text NOT NULL,
    capacity_mg        bigint NOT NULL,
    report_interval_s  integer NOT NULL,
    signs_uploads      boolean NOT NULL,
    key_changes        integer NOT NULL DEFAULT 0,
    key_revoked        boolean NOT NULL DEFAULT false,
    registered_seq     bigint NOT NULL,
    readings           bigint NOT NULL DEFAULT 0,
    suspect_readings   bigint NOT NULL DEFAULT 0,
    conflicts          bigint NOT NULL DEFAULT 0,
    -- The newest reading by measured_at (then by event sequence).
    last_event_seq     bigint,
    last_reading_seq   bigint,
    last_measured_at   timestamptz,
    -- recorded_at - measured_at of that reading, in ms: how far the terminal's clock (plus its queue) lags
    -- the node's. Negative: the terminal's clock runs ahead.
    last_clock_skew_ms bigint
);
CREATE INDEX terminals_enterprise ON terminals (enterprise_id, id);

CREATE TABLE containers (
    id                 text PRIMARY KEY,
    enterprise_id      text NOT NULL,
    waste_code         text,
    -- Stage of the newest weighing that named one (generation, storage_in, storage_out, transfer_out, transfer_in).
    stage              text,
    stage_measured_at  timestamptz,
    stage_event_seq    bigint,
    last_weight_mg     bigint NOT NULL,
    last_measured_at   timestamptz NOT NULL,
    last_event_seq     bigint NOT NULL,
    last_terminal_id   text NOT NULL,
    weighings          bigint NOT NULL DEFAULT 0
);
CREATE INDEX containers_enterprise ON containers (enterprise_id, id);

-- The custody chain: every weighing of a container that names a stage, in measured order.
CREATE TABLE custody (
    container_id   text NOT NULL,
    event_seq      bigint NOT NULL,
    stage          text NOT NULL,
    enterprise_id  text NOT NULL,
    terminal_id    text NOT NULL,
    weight_mg      bigint NOT NULL,
    measured_at    timestamptz NOT NULL,
    manifest_id    text,
    PRIMARY KEY (container_id, event_seq)
);
CREATE INDEX custody_enterprise_time ON custody (enterprise_id, measured_at);

CREATE TABLE manifests (
    id              text PRIMARY KEY,
    generator_id    text NOT NULL,
    receiver_id     text NOT NULL,
    waste_code      text NOT NULL,
    container_ids   text[] NOT NULL,
    declared_mg     bigint NOT NULL,
    notes           text,
    -- opened, dispatched, received
    status          text NOT NULL,
    dispatched_mg   bigint,
    received_mg     bigint,
    opened_seq      bigint NOT NULL,
    opened_at       timestamptz NOT NULL,
    dispatched_at   timestamptz,
    received_at     timestamptz
);
CREATE INDEX manifests_generator ON manifests (generator_id, opened_at);
CREATE INDEX manifests_receiver ON manifests (receiver_id, opened_at);

CREATE TABLE anomalies (
    anomaly_id        text PRIMARY KEY,
    event_seq         bigint NOT NULL,
    kind              text NOT NULL,
    severity          text NOT NULL,
    subject           text NOT NULL,
    enterprise_id     text,
    province_code     text,
    terminal_id       text,
    container_id      text,
    manifest_id       text,
    previous_value    bigint,
    current_value     bigint,
    change_ratio_ppm  bigint,
    limit_value       bigint,
    cause_seq         bigint NOT NULL,
    detected_at       timestamptz NOT NULL,
    description       text NOT NULL
);
CREATE INDEX anomalies_enterprise_time ON anomalies (enterprise_id, detected_at DESC);
CREATE INDEX anomalies_province_time ON anomalies (province_code, detected_at DESC);
CREATE INDEX anomalies_time ON anomalies (detected_at DESC);

CREATE TABLE notes (
    event_seq      bigint PRIMARY KEY,
    enterprise_id  text NOT NULL,
    container_id   text,
    author         text NOT NULL,
    text           text NOT NULL,
    filed_at       timestamptz NOT NULL
);
CREATE INDEX notes_enterprise_time ON notes (enterprise_id, filed_at DESC);

-- Per enterprise and China Standard Time day. Readings count on the day they were measured; anomalies,
-- manifests and notes on the day they were recorded.
CREATE TABLE daily_kpis (
    enterprise_id       text NOT NULL,
    day                 date NOT NULL,
    readings            bigint NOT NULL DEFAULT 0,
    weighings           bigint NOT NULL DEFAULT 0,
    weighed_mg          bigint NOT NULL DEFAULT 0,
    storage_in_mg       bigint NOT NULL DEFAULT 0,
    storage_out_mg      bigint NOT NULL DEFAULT 0,
    transfer_out_mg     bigint NOT NULL DEFAULT 0,
    transfer_in_mg      bigint NOT NULL DEFAULT 0,
    suspect_readings    bigint NOT NULL DEFAULT 0,
    anomalies           bigint NOT NULL DEFAULT 0,
    manifests_opened    bigint NOT NULL DEFAULT 0,
    manifests_received  bigint NOT NULL DEFAULT 0,
    notes               bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (enterprise_id, day)
);
CREATE INDEX daily_kpis_day ON daily_kpis (day);
