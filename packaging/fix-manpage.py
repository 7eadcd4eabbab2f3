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
        if not line.endswith(" ,") and out and out[-1].endswith(" ,"):
            out[-1] = out[-1][:-2]   # help was the last entry: the one before it ends the list now
        continue
    elif line == ".Os":
        line = ".Os appctl"
    elif line.startswith(".Nd \"") and line.endswith("\""):
        line = ".Nd " + line[5:-1]
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
# The format and the configuration are pages of their own (section 5): the command's page points to them.
if out and any(l.startswith(".Dt APPCTL ") for l in out):
    if ".Sh SEE ALSO" in out:
        i = out.index(".Sh SEE ALSO") + 1
        while i < len(out) and out[i].startswith(".Xr") and out[i].endswith(" ,"):
            i += 1
        if i < len(out) and out[i].startswith(".Xr"):
            out[i] += " ,"
            out[i + 1:i + 1] = [".Xr appctl.conf 5 ,", ".Xr appctl-policy-format 5"]
print("\n".join(out))
