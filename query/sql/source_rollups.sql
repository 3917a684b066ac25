-- Report source over the hourly rollups: partial rollup rows (reports sum anyway, so the parts
-- serve as well as the usage_hourly view and skip one aggregation), in the shape both report
-- sources share. `ts` is the start of the UTC hour: only exact when every report boundary is on a
-- UTC hour, which tokenmeter-query checks before using this source.
SELECT
    hour AS ts,
    date,
    tenant_id,
    provider,
    model,
    currency,
    is_agent,
    input_tokens,
    output_tokens,
    tokens_uncached_input,
    tokens_cache_read,
    tokens_cache_write,
    tokens_output,
    tokens_reasoning,
    cost_uncached_input,
    cost_cache_read,
    cost_cache_write,
    cost_output,
    cost_reasoning,
    cost
FROM usage_hourly_parts
