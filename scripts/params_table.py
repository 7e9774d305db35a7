"""Regenerate the parameter tables of README.md from salmon_app.config.SCHEMA (run after adding one)."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from salmon_app import config  # noqa: E402


def table():
    rows = []
    for section in config.SECTIONS:
        rows.append("\n**[%s]**\n\n| Parameter | Default | Meaning |\n|---|---|---|" % section)
        for param in (p for p in config.SCHEMA if p.section == section):
            default = config.format_value(param, param.default) if param.default not in (None, "") else "(empty)"
            if param.kind == "list" and len(default) > 40:
                default = default[:37] + "…"
            rows.append("| `%s` | `%s` | %s |" % (param.name, default, param.doc))
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    text = open(path).read()
    text = re.sub(r"(### Parameters\n).*?(\n## )", lambda m: m.group(1) + table() + m.group(2), text, flags=re.S)
    open(path, "w").write(text)
