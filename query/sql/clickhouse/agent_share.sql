-- Dashboard (ClickHouse): a tenant's agent share over a range, per currency: agent and total
-- tokens (input + output as reported) and cost. Same numbers as the lake's agent-share report
-- at month granularity when the range is one month; shares are agent / total.
--
-- {{parts}}  the rollup rows of complete INSERTs, database.table_complete (validated identifiers)
-- Parameters, in order: tenant_id, first instant and end instant (UTC seconds, end exclusive).
SELECT
    currency,
    toInt64(sumIf(input_tokens + output_tokens, is_agent = 1)) AS agent_tokens,
    toInt64(sum(input_tokens + output_tokens)) AS total_tokens,
    sumIf(cost, is_agent = 1) AS agent_cost,
    sum(cost) AS total_cost
FROM {{parts}}
WHERE tenant_id = ?
  AND hour >= toDateTime(?)
  AND hour < toDateTime(?)
GROUP BY currency
ORDER BY currency
