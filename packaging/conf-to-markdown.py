#!/usr/bin/env python3
"""Turns Policies/appctl.conf.example into the Markdown that lowdown makes appctl.conf(5) of: the example file's
comments are its documentation, so the manual page and the file an admin edits cannot say different things."""
import sys

lines = open(sys.argv[1]).read().splitlines()
out = ["# NAME", "", "appctl.conf - settings of the appctl daemon and of appctl sync", "",
       "# SYNOPSIS", "", "*/etc/appctl/appctl.conf*", "", "# DESCRIPTION", ""]
header = []
while lines and lines[0].startswith("#"):
    header.append(lines.pop(0).lstrip("#").strip())
out += [" ".join(h for h in header if h), "", "# SETTINGS", ""]
block = []
for line in lines + [""]:
    if line.startswith("#"):
        block.append(line[1:].strip())
    elif line.strip():
        block.append("`" + line.strip() + "`")
    else:
        if block:
            comments = [b for b in block if not b.startswith("`")]
            keys = [b for b in block if b.startswith("`")]
            out += [" ".join(comments), ""]
            out += [k + "  " for k in keys] + ([""] if keys else [])
        block = []
out += ["# FILES", "", "*/etc/appctl/appctl.conf*, */var/lib/appctl*, */var/log/appctl/events.jsonl*", "",
        "# SEE ALSO", "", "**appctl**(8), **appctl-daemon**(8), **appctl-policy**(5)", ""]
print("\n".join(out))
