-- Invoice usage: a tenant's (or every tenant's) raw events of a range, summed per UTC hour,
-- provider, model and the list price entry the lake applied (currency, price_effective_from):
-- the segments tokenmeter's rating core prices by the tenant's contract. Raw events, not rollups:
-- a list price can change inside an hour, and the entry is only on the raw event.
--
-- Parameters:
-- $from_ts    first instant of the range (Timestamp(µs, UTC)): the month's first local midnight.
-- $to_ts      end of the range, exclusive.
-- $from_date  UTC date of $from_ts, and
-- $last_date  UTC date of the last instant before $to_ts: partition bounds.
-- $tenant     a tenant id, or NULL for every tenant.
--
-- Cost columns are NULL for usage no list price covered (currency NULL).
SELECT
    tenant_id,
    date_trunc('hour', event_time) AS hour,
    provider,
    model,
    currency,
    price_effective_from,
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
FROM usage_events
WHERE event_time >= $from_ts
  AND event_time < $to_ts
  AND date >= $from_date
  AND date <= $last_date
  AND ($tenant IS NULL OR tenant_id = $tenant)
GROUP BY tenant_id, date_trunc('hour', event_time), provider, model, currency, price_effective_from
ORDER BY tenant_id, hour, provider, model, price_effective_from
