-- Dashboard (ClickHouse): a tenant's cost per local day of a range, per currency.
-- Same numbers as the lake's agent-share report at day granularity (its total_cost).
--
-- {{parts}}  the rollup rows of complete INSERTs, database.table_complete (validated identifiers)
-- Parameters, in order (bound to the placeholders by the clickhouse crate):
--   1. time zone name (e.g. 'Asia/Shanghai'; whole-hour offsets: rows are UTC hours)
--   2. tenant_id
--   3. first instant, UTC seconds (local midnight of the first day)
--   4. end instant, UTC seconds, exclusive
SELECT
    toString(toDate(hour, ?)) AS day,
    currency,
    toInt64(sum(requests)) AS requests,
    toInt64(sum(input_tokens + output_tokens)) AS tokens,
    sum(cost) AS cost
FROM {{parts}}
WHERE tenant_id = ?
  AND hour >= toDateTime(?)
  AND hour < toDateTime(?)
GROUP BY day, currency
ORDER BY day, currency
