#!/usr/bin/env python3
"""Adapts a page swift-argument-parser's generate-manual wrote (mdoc) to Debian's conventions: the page of
`appctl policy sign` is appctl-policy-sign(8) (as git-commit(1)), its NAME line says so for whatis/apropos, and the
synopsis keeps the command as typed. Text lines from --help discussions that mdoc would read as requests (a leading
quote or period) are escaped, and blank lines become paragraph breaks. Reads the page on stdin, writes it on stdout."""
import re
import sys

lines = sys.stdin.read().split("\n")
out, section, command = [], None, None
for line in lines:
    if line.startswith(".Sh "):
        section = line[4:].strip()
    if line.startswith(".Dt "):
        line = ".Dt " + line[4:].replace(".", "-")
    elif line.startswith(".Xr appctl.help "):
        if out and out[-1].endswith(" ,"):
            out[-1] = out[-1][:-2]
        continue
    elif line.startswith(".Xr appctl."):
        name, rest = line[4:].split(" ", 1)
        line = ".Xr " + name.replace(".", "-") + " " + rest
    elif line.startswith(".Nm ") and section == "NAME":
        command = line[4:].strip().strip('"')
        line = ".Nm " + command.replace(" ", "-")
    elif line == ".Nm" and section == "SYNOPSIS" and command and " " in command:
        line = '.Nm "' + command + '"'
    elif line == "":
        line = ".Pp"
    elif line[0] in "'." and not re.match(r"^\.[A-Z][a-z]?[a-z]?( |$)|^\.\\\"", line):
        line = "\\&" + line
    out.append(line)
while out and out[-1] == ".Pp":
    out.pop()
print("\n".join(out))
