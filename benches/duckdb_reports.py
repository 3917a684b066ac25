#!/usr/bin/env python3
"""DuckDB's side of `tokenmeter bench`: the same report queries on the same Parquet files.

Reads a JSON spec on stdin:
  {"lake": DIR, "threads": N, "runs": R,
   "files": {"usage_events": [PATH, ...], "usage_hourly_parts": [PATH, ...]},
   "queries": [{"name": ..., "sql": ..., "params": {"from_ts": RFC3339, "to_ts": ...,
                "from_date": YYYY-MM-DD, "last_date": ..., "tenant": null | id},
                "tokens": COLUMN, "cost": COLUMN}]}
and prints on stdout {"duckdb": VERSION, "threads": N, "results": {name: {"seconds": median of R
hot runs, "rows": n, "tokens": "sum", "cost": "sum"}}}.

The SQL is tokenmeter's own report SQL, as DataFusion runs it. Over the lake DuckDB gets the two
tables the reports read, as views of the Parquet files tokenmeter's catalog shows (`files`: the
committed files, with a compaction's files in place of those it replaced), the `date` column
from the path as DataFusion's catalog gives it. Two DataFusion-only spellings are rewritten to DuckDB's,
and the script fails if a DataFusion-only function is left after the rewrite: the local period
of a timestamp
(`to_local_time(arrow_cast(ts, 'Timestamp(Microsecond, Some("TZ"))'))` becomes
`timezone('TZ', ts)`), and DECIMAL(76, s), wider than DuckDB's 38 digits, becomes DECIMAL(38, s)
(DuckDB divides decimals in double precision: the shares differ in the last places, so the
checks compare rows, token sums and cost sums, never shares).

Each query runs once to warm up, then R times; each run materialises the whole result in DuckDB
(CREATE TEMP TABLE ... AS), as DataFusion's side collects its record batches. Not a test.
"""
import datetime
import json
import re
import statistics
import sys
import time

import duckdb

LOCAL_TIME = re.compile(
    r"to_local_time\(\s*arrow_cast\(\s*ts\s*,\s*'Timestamp\(Microsecond, Some\(\"([A-Za-z0-9/_+-]+)\"\)\)'\s*\)\s*\)"
)
WIDE_DECIMAL = re.compile(r"DECIMAL\(76,\s*(\d+)\)")


def duckdb_sql(sql):
    out = LOCAL_TIME.sub(lambda m: f"timezone('{m.group(1)}', ts)", sql)
    if "to_local_time" in out or "arrow_cast" in out:
        sys.exit("duckdb_reports.py: a DataFusion-only function is left in the SQL; extend the rewrite")
    return WIDE_DECIMAL.sub(lambda m: f"DECIMAL(38, {m.group(1)})", out)


def params(p):
    ts = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))
    return {
        "from_ts": ts(p["from_ts"]),
        "to_ts": ts(p["to_ts"]),
        "from_date": datetime.date.fromisoformat(p["from_date"]),
        "last_date": datetime.date.fromisoformat(p["last_date"]),
        "tenant": p["tenant"],
    }


def main():
    spec = json.load(sys.stdin)
    con = duckdb.connect()
    con.execute(f"SET threads = {int(spec['threads'])}")
    for view in ("usage_events", "usage_hourly_parts"):
        files = spec["files"][view]
        if not files:
            sys.exit(f"duckdb_reports.py: no Parquet files of {view} in {spec['lake']}")
        listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        con.execute(
            f"CREATE VIEW {view} AS SELECT * FROM read_parquet([{listing}], "
            "hive_partitioning = true, hive_types = {'date': DATE})"
        )
    results = {}
    for q in spec["queries"]:
        sql = duckdb_sql(q["sql"])
        used = set(re.findall(r"\$([a-z_]+)", sql))
        bound = {k: v for k, v in params(q["params"]).items() if k in used}
        create = "CREATE OR REPLACE TEMP TABLE bench_result AS " + sql
        times = []
        for i in range(int(spec["runs"]) + 1):
            t = time.perf_counter()
            con.execute(create, bound)
            if i > 0:
                times.append(time.perf_counter() - t)
        rows, tokens, cost = con.execute(
            f'SELECT count(*), CAST(sum("{q["tokens"]}") AS VARCHAR), CAST(sum("{q["cost"]}") AS VARCHAR) FROM bench_result'
        ).fetchone()
        results[q["name"]] = {
            "seconds": statistics.median(times),
            "rows": rows,
            "tokens": tokens or "0",
            "cost": cost,
        }
    json.dump({"duckdb": duckdb.__version__, "threads": int(spec["threads"]), "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
