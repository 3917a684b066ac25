-- Cost report: tokens and cost per tenant, provider, model, currency and token type.
--
-- Template marker (replaced by tokenmeter-query before parsing):
-- source      the report source, sql/source_raw.sql or sql/source_rollups.sql (same columns).
-- Parameters:
-- $from_ts    first instant of the range (Timestamp(µs, UTC)): local midnight of `from` in the
--             report's time zone, converted to UTC by the caller.
-- $to_ts      end of the range, exclusive (local midnight of `to`, in UTC).
-- $from_date  UTC date of $from_ts, and
-- $last_date  UTC date of the last instant before $to_ts: bounds on the `date` partition column
--             so only the partitions that can hold the range are read.
-- $tenant     a tenant id, or NULL for every tenant.
--
-- One row per (tenant_id, provider, model, currency, token_type) with tokens ≠ 0, token_type in
-- uncached_input, cache_read, cache_write, output, reasoning (in that order). currency NULL is
-- unpriced usage: its cost is NULL, never 0.
WITH sums AS (
    SELECT
        tenant_id,
        provider,
        model,
        currency,
        SUM(tokens_uncached_input) AS tokens_uncached_input,
        SUM(tokens_cache_read) AS tokens_cache_read,
        SUM(tokens_cache_write) AS tokens_cache_write,
        SUM(tokens_output) AS tokens_output,
        SUM(tokens_reasoning) AS tokens_reasoning,
        SUM(cost_uncached_input) AS cost_uncached_input,
        SUM(cost_cache_read) AS cost_cache_read,
        SUM(cost_cache_write) AS cost_cache_write,
        SUM(cost_output) AS cost_output,
        SUM(cost_reasoning) AS cost_reasoning
    FROM ({{source}}) AS u
    WHERE u.ts >= $from_ts
      AND u.ts < $to_ts
      AND u.date >= $from_date
      AND u.date <= $last_date
      AND ($tenant IS NULL OR u.tenant_id = $tenant)
    GROUP BY tenant_id, provider, model, currency
),
-- One row per token type: a cross join with the five types, so the source is scanned once.
token_types (type_order, token_type) AS (
    VALUES (1, 'uncached_input'), (2, 'cache_read'), (3, 'cache_write'), (4, 'output'), (5, 'reasoning')
),
by_type AS (
    SELECT
        s.tenant_id,
        s.provider,
        s.model,
        s.currency,
        t.type_order,
        t.token_type,
        CASE t.type_order
            WHEN 1 THEN s.tokens_uncached_input
            WHEN 2 THEN s.tokens_cache_read
            WHEN 3 THEN s.tokens_cache_write
            WHEN 4 THEN s.tokens_output
            ELSE s.tokens_reasoning
        END AS tokens,
        CASE t.type_order
            WHEN 1 THEN s.cost_uncached_input
            WHEN 2 THEN s.cost_cache_read
            WHEN 3 THEN s.cost_cache_write
            WHEN 4 THEN s.cost_output
            ELSE s.cost_reasoning
        END AS cost
    FROM sums AS s CROSS JOIN token_types AS t
)
SELECT tenant_id, provider, model, currency, token_type, tokens, cost
FROM by_type
WHERE tokens <> 0
ORDER BY tenant_id, provider, model, currency NULLS LAST, type_order
