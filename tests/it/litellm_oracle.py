"""Independent oracle for `tokenmeter prices import-litellm` (tests/it/litellm.rs).

Reads LiteLLM's model_prices_and_context_window.json with Python's own json and decimal modules
and prints, as JSON, which entries a price book can hold and their five rates in micro-units per
million tokens (input, cache_read, cache_write, output, reasoning; v1 defaults applied), and
which entries cannot be converted. Shares no code with the Rust importer; it applies the rules
documented there: modes chat, completion, responses and embedding; input and output prices per
token required; every price non-negative with at most 6 decimal places per million once written
as Decimal(repr(x)) * 10**6.

Does not: categorise reasons, filter providers, or write TOML.
"""

import decimal
import json
import math
import sys

TEXT_MODES = {"chat", "completion", "responses", "embedding"}
# LiteLLM key per book bucket, in the book's order.
KEYS = [
    "input_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "output_cost_per_token",
    "output_cost_per_reasoning_token",
]
I64_MAX = 2**63 - 1


def micro(x):
    """Micro-units per million tokens of a per-token price, or None if a book cannot hold it."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    if isinstance(x, float) and not math.isfinite(x):
        return None
    with decimal.localcontext() as ctx:
        ctx.prec = 1000
        ctx.traps[decimal.Inexact] = True
        per_million = decimal.Decimal(repr(x)) * 10**6
        units = per_million * 10**6
    if units < 0 or units != units.to_integral_value() or units > I64_MAX:
        return None
    return int(units)


def rates(entry):
    """The five rates, or None when the entry is not imported."""
    provider = entry.get("litellm_provider")
    if not isinstance(provider, str) or not provider:
        return None
    mode = entry.get("mode")
    if not isinstance(mode, str) or mode not in TEXT_MODES:
        return None
    got = []
    for key in KEYS:
        x = entry.get(key)
        if x is None:
            got.append(None)
            continue
        m = micro(x)
        if m is None:
            return None
        got.append(m)
    inp, cache_read, cache_write, out, reasoning = got
    if inp is None or out is None:
        return None
    return [
        inp,
        inp if cache_read is None else cache_read,
        inp if cache_write is None else cache_write,
        out,
        out if reasoning is None else reasoning,
    ]


def main(path):
    with open(path, encoding="utf-8") as f:
        catalog = json.load(f)
    book, skipped = [], []
    for model, entry in catalog.items():
        r = rates(entry) if isinstance(entry, dict) and model != "sample_spec" else None
        if r is None:
            skipped.append(model)
        else:
            book.append({"provider": entry["litellm_provider"], "model": model, "rates": r})
    json.dump({"total": len(catalog), "book": book, "skipped": skipped}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
