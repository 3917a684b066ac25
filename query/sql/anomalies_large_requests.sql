-- Anomalies, large requests: every raw event of the range whose request size is above a threshold.
--
-- Parameters:
-- $from_ts     first instant of the range (Timestamp(µs, UTC)): local midnight of `from` in the
--              report's time zone, converted to UTC by the caller.
-- $to_ts       end of the range, exclusive (local midnight of `to`, in UTC).
-- $from_date   UTC date of $from_ts, and
-- $last_date   UTC date of the last instant before $to_ts: bounds on the `date` partition column
--              so only the partitions that can hold the range are read.
-- $tenant      a tenant id, or NULL for every tenant.
-- $max_tokens  the threshold (BIGINT). Strictly greater is an anomaly: a request of exactly
--              $max_tokens tokens is not.
--
-- The request size is input_tokens + output_tokens as the gateway reported them: input includes
-- the cache reads and writes, output includes reasoning. Every event counts, priced or not and
-- whatever its status (a failed request still used its tokens). ts is the event time.
-- The columns are those of a large_request row of the anomalies report; tokenmeter-query merges
-- them with the spend spikes (sql/anomalies_spend_spikes.sql) into one result ordered by time.
SELECT
    'large_request' AS kind,
    tenant_id,
    event_time AS ts,
    provider,
    model,
    agent_id,
    event_id,
    input_tokens + output_tokens AS tokens,
    CAST($max_tokens AS BIGINT) AS max_tokens
FROM usage_events
WHERE event_time >= $from_ts
  AND event_time < $to_ts
  AND date >= $from_date
  AND date <= $last_date
  AND ($tenant IS NULL OR tenant_id = $tenant)
  AND input_tokens + output_tokens > $max_tokens
ORDER BY ts, tenant_id, event_id
