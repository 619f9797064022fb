#!/usr/bin/env bash
# Refreshes core/prices/model_prices.json from LiteLLM's price table, reproducibly.
#
#   scripts/refresh-prices.sh [LITELLM_VERSION]     (default: the version the bundled file came from)
#
# Downloads the `litellm` wheel of exactly that version from PyPI (no dependencies, nothing is
# installed), takes its model_prices_and_context_window_backup.json, keeps the chat, completion,
# responses and embedding models of OpenAI, Azure OpenAI, Anthropic and Gemini / Vertex AI that have
# a per-token input price, and keeps only the fields Tollgate reads, so the wasm stays small (token
# prices and their long-context tiers, the 1-hour cache-write price, the web-search price per query,
# the token limits). The
# format stays LiteLLM's; number text is copied byte for byte (never through a float).
# core/prices/SOURCE records the version and the source file's SHA-256. Then core/src/pricing/bundled.rs,
# the compiled form the filter uses (a Rust table and its hash index: a VM start parses no JSON), is written from the
# new file by core's own reader, and the unit test that keeps the two equal runs. Rebuild the filter afterwards.
set -euo pipefail

version="${1:-1.109.1}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$repo/core/prices/model_prices.json"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m pip download --quiet --no-deps --dest "$work" "litellm==$version"
wheel="$(ls "$work"/litellm-"$version"-*.whl)"
python3 - "$wheel" "$out" "$version" <<'PY'
import hashlib, json, re, sys, zipfile

wheel, out, version = sys.argv[1], sys.argv[2], sys.argv[3]
with zipfile.ZipFile(wheel) as z:
    raw = z.read("litellm/model_prices_and_context_window_backup.json")

class Num(str):
    """A JSON number kept as its source text."""

table = json.loads(raw, parse_float=Num, parse_int=Num)

PROVIDERS = {
    "openai", "text-completion-openai", "azure", "anthropic", "gemini",
    "vertex_ai-language-models", "vertex_ai-anthropic_models", "vertex_ai-embedding-models",
}
MODES = {"chat", "completion", "responses", "embedding"}
KINDS = ["input_cost_per_token", "output_cost_per_token",
         "cache_read_input_token_cost", "cache_creation_input_token_cost"]
# The 1-hour cache-write price (Anthropic) and the per-query price of hosted web search.
EXTRA = ["cache_creation_input_token_cost_above_1hr", "search_context_cost_per_query"]
KEEP = ["litellm_provider", "mode", "max_input_tokens", "max_output_tokens"] + KINDS + EXTRA
# The long-context tier: the same prices with an `_above_<N>k_tokens` suffix.
TIER = re.compile("^(" + "|".join(KINDS + EXTRA[:1]) + r")_above_\d+k_tokens$")

def emit(value):
    if isinstance(value, Num):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {emit(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)

lines = []
for key in sorted(table):
    entry = table[key]
    if not isinstance(entry, dict) or key == "sample_spec":
        continue
    if entry.get("litellm_provider") not in PROVIDERS or entry.get("mode") not in MODES:
        continue
    if not isinstance(entry.get("input_cost_per_token"), Num):
        continue
    keep = KEEP + sorted(f for f in entry if TIER.match(f))
    fields = ", ".join(f"{json.dumps(f)}: {emit(entry[f])}" for f in keep if entry.get(f) is not None)
    lines.append(f"  {json.dumps(key)}: {{{fields}}}")

with open(out, "w") as f:
    f.write("{\n" + ",\n".join(lines) + "\n}\n")
with open(out.rsplit("/", 1)[0] + "/SOURCE", "w") as f:
    f.write(f"litellm=={version} litellm/model_prices_and_context_window_backup.json "
            f"sha256={hashlib.sha256(raw).hexdigest()} models_kept={len(lines)}\n")
print(f"wrote {out}: {len(lines)} models from litellm {version}", file=sys.stderr)
PY

# The compiled table, from the file just written, by the same reader the tests check it with.
cd "$repo"
TOLLGATE_WRITE_PRICES=1 cargo test --release -p tollgate-core --lib pricing::tests::the_compiled_table_is_exactly_the_bundled_file >/dev/null 2>&1 || true
cargo test --release -p tollgate-core --lib pricing::
