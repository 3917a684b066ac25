-- Report source over the raw events: one row per event, in the shape both report sources share.
-- `ts` is the event time (UTC). Spliced into the reports as their `source` by tokenmeter-query.
SELECT
    event_time AS ts,
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
FROM usage_events
