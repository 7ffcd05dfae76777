-- Which event log the model was built from: the fingerprint of the log's first event (a data key with a
-- random wrapped key, so two logs never share it). A node refuses to feed a model built from another log.
ALTER TABLE checkpoints ADD COLUMN log_genesis text;
