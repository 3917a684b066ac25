-- Agent-share report: how much of each tenant's usage and spend came from agent workloads, per
-- local day, ISO week (Monday) or month.
--
-- Template markers (replaced by tokenmeter-query before parsing):
-- source       the report source, sql/source_raw.sql or sql/source_rollups.sql (same columns).
-- tz           an IANA time-zone name. tokenmeter-query substitutes only names it validated with
--              chrono-tz (letters, digits, `/`, `_`, `+`, `-`), never user text as is.
-- granularity  day, week or month (a fixed word chosen by tokenmeter-query).
-- Parameters: $from_ts, $to_ts, $from_date, $last_date, $tenant: as in cost_report.sql.
--
-- period_start is the local date on which the period starts (a week starts on Monday); a period
-- cut by the range counts only the usage inside the range. Tokens are input + output as reported
-- (the billable buckets sum to the same). currency NULL is unpriced usage: its costs are NULL.
-- Shares are exact fractions rounded half-up to 12 decimal places: the division runs in
-- Decimal256 at 16 places (truncated) and is cast to Decimal128(38, 12); NULL when the total is 0.
WITH sums AS (
    SELECT
        tenant_id,
        CAST(date_trunc('{{granularity}}',
            to_local_time(arrow_cast(ts, 'Timestamp(Microsecond, Some("{{tz}}"))'))) AS DATE)
            AS period_start,
        currency,
        SUM(CASE WHEN is_agent THEN input_tokens + output_tokens ELSE 0 END) AS agent_tokens,
        SUM(input_tokens + output_tokens) AS total_tokens,
        SUM(CASE WHEN is_agent THEN cost END) AS agent_cost_or_null,
        SUM(cost) AS total_cost
    FROM ({{source}}) AS u
    WHERE u.ts >= $from_ts
      AND u.ts < $to_ts
      AND u.date >= $from_date
      AND u.date <= $last_date
      AND ($tenant IS NULL OR u.tenant_id = $tenant)
    GROUP BY 1, 2, 3
),
costs AS (
    SELECT
        tenant_id,
        period_start,
        currency,
        agent_tokens,
        total_tokens,
        CASE WHEN currency IS NULL THEN NULL
             ELSE COALESCE(agent_cost_or_null, CAST(0 AS DECIMAL(38, 12))) END AS agent_cost,
        total_cost
    FROM sums
)
SELECT
    tenant_id,
    period_start,
    currency,
    agent_tokens,
    total_tokens,
    CAST(CAST(agent_tokens AS DECIMAL(76, 12)) / CAST(NULLIF(total_tokens, 0) AS DECIMAL(76, 12))
        AS DECIMAL(38, 12)) AS agent_token_share,
    agent_cost,
    total_cost,
    CAST(CAST(agent_cost AS DECIMAL(76, 12)) / CAST(NULLIF(total_cost, 0) AS DECIMAL(76, 12))
        AS DECIMAL(38, 12)) AS agent_cost_share
FROM costs
ORDER BY tenant_id, period_start, currency NULLS LAST
