-- usage_hourly: one row per rollup key, summing the partial rows of every committed rollup file.
-- The aggregator writes one rollup file per batch, so a key (hour, tenant_id, provider, model,
-- is_agent, agent_id, currency) can have rows in several files of usage_hourly_parts; this view is
-- what analysts should query. Same columns as the rollup schema, plus the `date` partition column
-- (UTC date of `hour`). Cost columns stay null for unpriced usage (currency null): SUM of nulls.
SELECT
    hour,
    tenant_id,
    provider,
    model,
    is_agent,
    agent_id,
    SUM(requests) AS requests,
    SUM(errors) AS errors,
    SUM(input_tokens) AS input_tokens,
    SUM(output_tokens) AS output_tokens,
    SUM(cache_read_input_tokens) AS cache_read_input_tokens,
    SUM(cache_creation_input_tokens) AS cache_creation_input_tokens,
    SUM(reasoning_output_tokens) AS reasoning_output_tokens,
    SUM(tokens_uncached_input) AS tokens_uncached_input,
    SUM(tokens_cache_read) AS tokens_cache_read,
    SUM(tokens_cache_write) AS tokens_cache_write,
    SUM(tokens_output) AS tokens_output,
    SUM(tokens_reasoning) AS tokens_reasoning,
    SUM(cost_uncached_input) AS cost_uncached_input,
    SUM(cost_cache_read) AS cost_cache_read,
    SUM(cost_cache_write) AS cost_cache_write,
    SUM(cost_output) AS cost_output,
    SUM(cost_reasoning) AS cost_reasoning,
    SUM(cost) AS cost,
    currency,
    date
FROM usage_hourly_parts
GROUP BY hour, tenant_id, provider, model, is_agent, agent_id, currency, date
