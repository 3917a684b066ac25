#!/usr/bin/env bash
# What `tokenmeter bench` needs besides the binary: DuckDB's Python package (PyPI), pinned, for
# the reports compared on the same Parquet files. Safe to run again; skips what is installed.
set -euo pipefail
DUCKDB_VERSION="2.0.0"
if ! python3 -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$DUCKDB_VERSION')" 2>/dev/null; then
  echo "== installing duckdb==$DUCKDB_VERSION (PyPI) for tokenmeter bench" >&2
  python3 -m pip install --quiet "duckdb==$DUCKDB_VERSION"
fi
