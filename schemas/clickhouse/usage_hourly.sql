-- ClickHouse tables of tokenmeter's hourly rollups. Runs on ClickHouse 18.16 (Debian's package,
-- the oldest tested) and current releases: no LowCardinality, DateTime64,
-- SimpleAggregateFunction or Bool; Decimal(38, 12) is the lake's money type.
--
-- Template markers, replaced by `tokenmeter clickhouse init` with validated identifiers:
-- {{database}}  the database (default tokenmeter)
-- {{table}}     the rollup table name (default usage_hourly)
--
-- Statements are separated by lines holding only `;`. Every one is idempotent.

CREATE DATABASE IF NOT EXISTS {{database}}
;
-- {{table}}_parts: what the aggregator inserts. One row per rollup key (hour, tenant_id,
-- provider, model, is_agent, agent_id, currency) per lake batch; the batch identity (src_topic,
-- src_partition, batch_first, batch_last) is the sink's exactly-once ledger. A batch's rows go in
-- one INSERT into a table without PARTITION BY, and every row names its INSERT (insert_id, its
-- query_id) and how many rows that INSERT sent (insert_rows). Read it through
-- {{table}}_complete: a client killed mid-INSERT leaves the rows received so far in the table on
-- ClickHouse 18.16 (ClickHouse/ClickHouse#9666), and only the view leaves them out.
CREATE TABLE IF NOT EXISTS {{database}}.{{table}}_parts (
    hour DateTime('UTC'),
    tenant_id String,
    provider String,
    model String,
    is_agent UInt8,
    agent_id Nullable(String),
    requests Int64,
    errors Int64,
    input_tokens Int64,
    output_tokens Int64,
    cache_read_input_tokens Int64,
    cache_creation_input_tokens Int64,
    reasoning_output_tokens Int64,
    tokens_uncached_input Int64,
    tokens_cache_read Int64,
    tokens_cache_write Int64,
    tokens_output Int64,
    tokens_reasoning Int64,
    cost_uncached_input Nullable(Decimal(38, 12)),
    cost_cache_read Nullable(Decimal(38, 12)),
    cost_cache_write Nullable(Decimal(38, 12)),
    cost_output Nullable(Decimal(38, 12)),
    cost_reasoning Nullable(Decimal(38, 12)),
    cost Nullable(Decimal(38, 12)),
    currency Nullable(String),
    src_topic String,
    src_partition Int32,
    batch_first Int64,
    batch_last Int64,
    insert_id String,
    insert_rows UInt64
) ENGINE = MergeTree()
ORDER BY (tenant_id, hour, provider, model, src_topic, src_partition, batch_first)
;
-- {{table}}_complete: the rows of complete INSERTs (as many rows under an insert_id as it
-- declares). Sums over it are exact at every moment; no merge, FINAL or dedup is needed. The
-- sink's position, reconcile and the dashboards read it.
CREATE VIEW IF NOT EXISTS {{database}}.{{table}}_complete AS
SELECT *
FROM {{database}}.{{table}}_parts
WHERE insert_id IN (
    SELECT insert_id
    FROM {{database}}.{{table}}_parts
    GROUP BY insert_id
    HAVING count() = any(insert_rows)
)
;
-- {{table}}: one row per rollup key, the same columns as the lake's usage_hourly view.
CREATE VIEW IF NOT EXISTS {{database}}.{{table}} AS
SELECT
    hour,
    tenant_id,
    provider,
    model,
    is_agent,
    agent_id,
    sum(requests) AS requests,
    sum(errors) AS errors,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_read_input_tokens) AS cache_read_input_tokens,
    sum(cache_creation_input_tokens) AS cache_creation_input_tokens,
    sum(reasoning_output_tokens) AS reasoning_output_tokens,
    sum(tokens_uncached_input) AS tokens_uncached_input,
    sum(tokens_cache_read) AS tokens_cache_read,
    sum(tokens_cache_write) AS tokens_cache_write,
    sum(tokens_output) AS tokens_output,
    sum(tokens_reasoning) AS tokens_reasoning,
    sum(cost_uncached_input) AS cost_uncached_input,
    sum(cost_cache_read) AS cost_cache_read,
    sum(cost_cache_write) AS cost_cache_write,
    sum(cost_output) AS cost_output,
    sum(cost_reasoning) AS cost_reasoning,
    sum(cost) AS cost,
    currency
FROM {{database}}.{{table}}_complete
GROUP BY hour, tenant_id, provider, model, is_agent, agent_id, currency
