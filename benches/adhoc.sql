-- The bench's ad-hoc analyst query: per tenant, the agent traffic over the raw events — requests,
-- distinct agents, tokens and cost per currency. `tokenmeter bench` runs this same text on
-- DataFusion (the lake's catalog) and on DuckDB (views of the same Parquet files).
SELECT
    tenant_id,
    currency,
    count(*) AS requests,
    count(DISTINCT agent_id) AS agents,
    sum(input_tokens + output_tokens) AS tokens,
    sum(cost) AS cost
FROM usage_events
WHERE agent_id IS NOT NULL
GROUP BY tenant_id, currency
ORDER BY tokens DESC, tenant_id, currency
