-- The setup phase of an attempt's latest run: cache hit or miss, snapshot key, duration, size
-- (JSON, errand_core::SetupInfo). Never any secret.
ALTER TABLE attempts ADD COLUMN setup TEXT;
