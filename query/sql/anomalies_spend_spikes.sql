-- Anomalies, spend spikes, the SQL half: each tenant's spend per UTC hour and currency, from the
-- hourly rollups, over the report range and the baseline hours before it.
--
-- The verdict (an hour's spend above k × the median of the tenant's spend over the trailing
-- baseline hours) is computed from these rows in Rust by tokenmeter-query (src/anomalies.rs),
-- exactly: DataFusion's MEDIAN of an even count averages the two middle values in the input's
-- decimal type, which drops half a 10⁻¹² unit, and k × median in SQL decimals can run out of
-- precision.
--
-- Parameters:
-- $read_from_ts  first hour to read (Timestamp(µs, UTC)): the first hour of the range minus the
--                baseline hours, so the baseline of the range's first hours is complete.
-- $to_ts         end of the range, exclusive (local midnight of `to`, in UTC).
-- $from_date     UTC date of $read_from_ts, and
-- $last_date     UTC date of the last instant before $to_ts: bounds on the `date` partition column.
-- $tenant        a tenant id, or NULL for every tenant.
--
-- One row per (tenant_id, currency, hour) with priced usage, ordered by them; spend is the exact
-- SUM of the partial rollup rows' cost (Decimal128(38, 12)). Unpriced rows (currency NULL) are
-- left out: they have no spend. An hour without priced usage has no row: it is not a zero.
SELECT
    tenant_id,
    currency,
    hour,
    SUM(cost) AS spend
FROM usage_hourly_parts
WHERE hour >= $read_from_ts
  AND hour < $to_ts
  AND date >= $from_date
  AND date <= $last_date
  AND currency IS NOT NULL
  AND ($tenant IS NULL OR tenant_id = $tenant)
GROUP BY tenant_id, currency, hour
ORDER BY tenant_id, currency, hour
