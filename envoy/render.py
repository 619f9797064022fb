#!/usr/bin/env python3
"""Renders an Envoy bootstrap template (envoy/*.yaml.tmpl) to stdout.

    python3 envoy/render.py envoy/tollgate.yaml.tmpl LISTEN_PORT=10000 ADMIN_PORT=9901 \
        UPSTREAM_PORT=9100 WASM_PATH=target/.../tollgate.wasm PLUGIN_CONFIG=@envoy/demo-config.json \
        ACCESS_LOG_PATH=/dev/stdout

Template syntax (kept tiny on purpose, stdlib only):
  ${NAME}          the value as is
  ${NAME|json}     the value as a JSON string literal (also a valid YAML double-quoted scalar),
                   used for the filter's JSON configuration
  lines between "# {{if NAME}}" and "# {{end}}" are kept only when NAME is non-empty
A value written @path is read from that file. A placeholder without a value is an error that
names it, so a half-rendered config never reaches Envoy.
"""
import json
import re
import sys

PLACEHOLDER = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(\|json)?\}")


def render(template: str, values: dict) -> str:
    out = []
    keep = [True]
    for line in template.splitlines(keepends=True):
        stripped = line.strip()
        m = re.fullmatch(r"# \{\{if ([A-Z_][A-Z0-9_]*)\}\}", stripped)
        if m:
            keep.append(keep[-1] and bool(values.get(m.group(1))))
            continue
        if stripped == "# {{end}}":
            if len(keep) == 1:
                raise ValueError("'# {{end}}' without '# {{if NAME}}'")
            keep.pop()
            continue
        if keep[-1]:
            out.append(line)
    if len(keep) != 1:
        raise ValueError("'# {{if NAME}}' without '# {{end}}'")

    def sub(m):
        name, as_json = m.group(1), m.group(2)
        if name not in values:
            raise KeyError(f"template placeholder ${{{name}}} has no value: pass {name}=...")
        v = str(values[name])
        return json.dumps(v) if as_json else v

    return PLACEHOLDER.sub(sub, "".join(out))


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    values = {}
    for arg in argv[2:]:
        name, sep, value = arg.partition("=")
        if not sep:
            print(f"render.py: expected NAME=VALUE, got {arg!r}", file=sys.stderr)
            return 2
        if value.startswith("@"):
            with open(value[1:], encoding="utf-8") as f:
                value = f.read()
        values[name] = value
    with open(argv[1], encoding="utf-8") as f:
        template = f.read()
    try:
        sys.stdout.write(render(template, values))
    except (KeyError, ValueError) as e:
        print(f"render.py: {argv[1]}: {e.args[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
