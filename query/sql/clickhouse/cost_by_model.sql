-- Dashboard (ClickHouse): a tenant's tokens and cost per provider, model and currency over a
-- range. Same numbers as the lake's cost report summed over its token types.
--
-- {{parts}}  the rollup rows of complete INSERTs, database.table_complete (validated identifiers)
-- Parameters, in order: tenant_id, first instant and end instant (UTC seconds, end exclusive).
SELECT
    provider,
    model,
    currency,
    toInt64(sum(tokens_uncached_input + tokens_cache_read + tokens_cache_write + tokens_output + tokens_reasoning)) AS tokens,
    sum(cost) AS cost
FROM {{parts}}
WHERE tenant_id = ?
  AND hour >= toDateTime(?)
  AND hour < toDateTime(?)
GROUP BY provider, model, currency
ORDER BY provider, model, currency
