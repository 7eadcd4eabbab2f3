#!/usr/bin/env python3
"""Turns Policies/appctl.conf.example into the Markdown that lowdown makes appctl.conf(5) of: the example file's
comments are its documentation, so the manual page and the file an admin edits cannot say different things.
Each block of the file (comment lines, then its settings) becomes a paragraph and its keys; a commented-out setting
(`# key = value`) is shown as a key that is not set by default."""
import re
import sys

SETTING = re.compile(r"^#?\s?([a-z][a-z-]*) = (.*?)(\s+\(repeatable\))?$")


def escape(text):
    """Markdown's special characters, so that vm.memfd_noexec and <name>.policy read as written."""
    return re.sub(r"([\\`*_<>\[\]#|])", r"\\\1", text)


lines = open(sys.argv[1]).read().splitlines()
out = ["# NAME", "", "appctl.conf - settings of the appctl daemon and of appctl sync", "",
       "# SYNOPSIS", "", "*/etc/appctl/appctl.conf*", "", "# DESCRIPTION", ""]
header = []
while lines and lines[0].startswith("#"):
    header.append(lines.pop(0).lstrip("#").strip())
out += [escape(" ".join(h for h in header if h)), "", "# SETTINGS", ""]
comments, settings = [], []


def flush():
    if comments:
        out.extend([escape(" ".join(comments)), ""])
    for key, value, unset in settings:
        out.append("**" + escape(key) + "** = " + escape(value) + (" (not set by default)" if unset else "") + "  ")
    if settings:
        out.append("")
    comments.clear()
    settings.clear()


for line in lines + [""]:
    stripped = line.strip()
    match = SETTING.match(stripped)
    if match and (not stripped.startswith("#") or " = " in stripped):
        settings.append((match.group(1), match.group(2).split("  ")[0].strip(), stripped.startswith("#")))
    elif stripped.startswith("#"):
        if settings:
            flush()
        comments.append(stripped.lstrip("#").strip())
    elif not stripped:
        flush()
out += ["# FILES", "", "*/etc/appctl/appctl.conf*, */var/lib/appctl*, */var/log/appctl/events.jsonl*", "",
        "# SEE ALSO", "", "**appctl**(8), **appctl-daemon**(8), **appctl-sync**(8), **appctl-policy-format**(5)", ""]
print("\n".join(out))
